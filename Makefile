# Two commands: `make demo` and `make test`; `make docs` and `make report` for the pages.
# Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# A pinned torch resolves to a CPU build where one lies on disk; an unpinned torch pulls a
# multi-GB CUDA build. Override for a GPU machine, e.g. TORCH_SPEC="torch==2.13.0+cu128".
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: demo test docs report install clean

# constraints.txt pins every package to the version the published figures were computed with.
PIP_INSTALL := $(BIN)/python -m pip install --quiet -c constraints.txt

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) "$(TORCH_SPEC)"
	$(PIP_INSTALL) -e ".[dev]"
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(PIP_INSTALL) -e ".[dev,docs]"
	touch $(DOCS_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pyro-vrm train --data simulated-text

# One worker per core (pytest-xdist); a file's tests share a worker, and with it their fixtures.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# The pages and the API reference into site/, offline; a warning (a broken reference) is an error.
docs: $(DOCS_STAMP)
	$(BIN)/python experiments/report.py --check
	$(BIN)/mkdocs build --strict

# Every results table of the docs, from the results.json files the scripts wrote.
report: $(STAMP)
	$(BIN)/python experiments/report.py

clean:
	rm -rf $(VENV) runs site .pytest_cache
