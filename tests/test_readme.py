"""The README's quickstart runs as written on a fresh clone, with nothing beside it."""

import contextlib
import io
import re
import shlex
import shutil
from pathlib import Path

import pytest

from pyro_vrm.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_is_a_short_guide_that_needs_nothing_beside_the_clone():
    assert len(README.splitlines()) <= 200
    for title in ("Installing without make", "Quickstart", "Limitations", "Citation"):
        assert f"## {title}\n" in README
    assert "../shared" not in README and "make demo" in README and "make test" in README
    for line in section("Input").splitlines():  # the example lines are the file's, cut short
        if line.startswith("    {"):
            prompt = re.search(r'"prompt": "([^"]*)"', line).group(1)
            assert prompt in (ROOT / "examples" / "prefs.jsonl").read_text()


def test_the_quickstart_runs_as_written(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYRO_VRM_CACHE", str(tmp_path / "cache"))
    quickstart = section("Quickstart")
    commands = [shlex.split(line.strip()) for line in quickstart.splitlines() if line.startswith("    pyro-vrm ")]
    assert len(commands) >= 3
    for argv in commands:
        assert argv[0] == "pyro-vrm"
        with contextlib.redirect_stdout(io.StringIO()):
            if "--help" in argv:
                with pytest.raises(SystemExit) as done:
                    main(argv[1:])
                assert done.value.code == 0
            else:
                assert main(argv[1:]) == 0, argv
    assert (tmp_path / "runs" / "quickstart" / "eval.json").exists()
    code = quickstart.split("```python\n", 1)[1].split("```", 1)[0]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(code, "README quickstart", "exec"), {})
    assert 0.5 < float(printed.getvalue().split()[0]) <= 1.0  # a test accuracy
    assert (tmp_path / "runs" / "my-reward-model" / "model.safetensors").exists()
