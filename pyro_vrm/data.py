r"""Preference data sets read into validated (prompt, chosen, rejected) pairs.

:func:`load_preferences` reads a local file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``, the
json and csv ones optionally ``.gz``) or a Hugging Face hub id with the ``datasets`` library,
parses it with one of four layouts and returns a ``datasets.Dataset`` with columns ``prompt``,
``chosen``, ``rejected`` and, where the source has them, ``scores_chosen``/``scores_rejected``
(K aspect scores each) and ``subset``, together with a :class:`LoadReport`.

The layouts, :data:`LAYOUTS`, and how one row of each becomes a pair are described in
:mod:`pyro_vrm.layouts`. A row that breaks the layout raises :class:`DataError`; a valid row that
gives no pair is dropped and counted in the report under one of :data:`DROP_REASONS` (with
``strict=True`` every such drop raises :class:`DataError` instead, naming the row and the reason).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from .layouts import (DROP_REASONS, GIVEN_SCORES, LAYOUTS, OVERALL_COLUMNS, PARSERS, REQUIRED, SCORE_COLUMNS,
                      ULTRAFEEDBACK_ASPECTS, ULTRAFEEDBACK_OVERALL, DataError, RowContext)

__all__ = ["DROP_REASONS", "LAYOUTS", "ULTRAFEEDBACK_ASPECTS", "ULTRAFEEDBACK_OVERALL", "DataError", "LoadReport",
           "load_preferences"]

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_FEATURES = {name: datasets.Value("string") for name in ("prompt", "chosen", "rejected", "subset")} | {
    name: datasets.Sequence(datasets.Value("float64")) for name in SCORE_COLUMNS}
_log = logging.getLogger("pyro_vrm.data")


@dataclass
class LoadReport:
    """What :func:`load_preferences` read, kept and dropped.

    ``dropped`` maps a reason from :data:`DROP_REASONS` to a count, listing only reasons that
    occurred. ``tie`` and ``fewer_than_two_rated_completions`` count rows, so that
    ``rows_read == pairs_kept + dropped["tie"] + dropped["fewer_than_two_rated_completions"]``;
    ``completion_with_na_rating`` counts UltraFeedback completions left out of the pair rule.

    Examples:
        >>> print(LoadReport("prefs.jsonl", rows_read=5, pairs_kept=3, dropped={"tie": 2}))
        prefs.jsonl: 5 rows read, 3 pairs kept, dropped tie=2
    """

    source: str
    rows_read: int
    pairs_kept: int
    dropped: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        drops = ", ".join(f"{reason}={count}" for reason, count in sorted(self.dropped.items()))
        kept = f"{self.rows_read} rows read, {self.pairs_kept} pairs kept"
        return f"{self.source}: {kept}, dropped {drops or 'nothing'}"



def load_preferences(source: str, split: str | None = None, columns: dict[str, str] | None = None,
                     layout: str | None = None, num_aspects: int | None = None,
                     score_range: tuple[float, float] | None = None,
                     strict: bool = False) -> tuple[datasets.Dataset, LoadReport]:
    """Read ``source`` into validated preference pairs and a report of what was dropped.

    Args:
        source: a local ``.jsonl``, ``.json``, ``.parquet`` or ``.csv`` file (``.gz`` too) or,
            only when no such path exists and it has no data-file suffix, a hub id.
        split: the split of a hub data set (default ``"train"``).
        columns: this module's column names mapped to the source's, e.g. ``{"prompt": "q"}``.
        layout: one of :data:`LAYOUTS`; None detects it from the columns.
        num_aspects: the K every score list must have (default: the first row's).
        score_range: an inclusive (low, high) bound on scores (UltraFeedback ratings must lie in
            1..5 and overall scores in 1..10 regardless).
        strict: make every row that would be dropped (a tie, identical responses, an "N/A"
            rating) an error instead.

    Returns:
        The pairs, a ``datasets.Dataset`` with columns ``prompt``, ``chosen``, ``rejected`` and,
        where the source has them, ``scores_chosen``/``scores_rejected`` (K each) and
        ``subset``; and a :class:`LoadReport` of the rows read, kept and dropped.

    Raises:
        DataError: a file that cannot be read, a missing column, or a row that breaks the
            layout, naming the file, row and field.

    Examples:
        >>> import json, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "prefs.jsonl"
        >>> rows = [{"q": "2+2?", "chosen": "4", "rejected": "5"}, {"q": "Hi", "chosen": "Hey", "rejected": "Hey"}]
        >>> _ = path.write_text("".join(json.dumps(row) + "\\n" for row in rows))
        >>> pairs, report = load_preferences(str(path), columns={"prompt": "q"})
        >>> pairs[0]
        {'prompt': '2+2?', 'chosen': '4', 'rejected': '5'}
        >>> report.rows_read, report.pairs_kept, report.dropped
        (2, 1, {'tie': 1})
        >>> import shutil; shutil.rmtree(path.parent)
    """
    raw = _read(source, split)
    ctx = RowContext(source, dict(columns or {}), strict)
    raw = _rename(raw, ctx)
    names = set(raw.column_names)
    layout = layout or _detect_layout(raw, ctx)
    if layout not in PARSERS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    for column in REQUIRED[layout]:
        if column not in names:
            raise ctx.error(f"required by layout {layout!r} but missing; columns present: {raw.column_names}",
                            field=column)
    optional = GIVEN_SCORES.get(layout, ())
    scored = layout == "ultrafeedback" or not names.isdisjoint(optional)
    for given, other in (optional, optional[::-1]) if optional else ():
        if given in names and other not in names:
            raise ctx.error(f"{given} is given without {other}", field=other)
    out = ["prompt", "chosen", "rejected"]
    out += list(SCORE_COLUMNS) if scored else []
    out += ["subset"] if "subset" in names else []
    records: dict[str, list[Any]] = {column: [] for column in out}
    aspects = (num_aspects, "num_aspects")
    for i, row in enumerate(_rows(raw)):
        pair = PARSERS[layout](ctx, i, row)
        if pair is None:
            continue
        if "subset" in out:
            pair["subset"] = ctx.text(i, "subset", row["subset"])
        if scored:
            aspects = _check_aspects(ctx, i, pair, aspects, score_range)
        if pair["chosen"] == pair["rejected"]:
            ctx.drop(i, "tie", why=": chosen and rejected are the same response")
            continue
        for column in out:
            records[column].append(pair[column])
    schema = datasets.Features({column: _FEATURES[column] for column in out}).arrow_schema
    pairs = datasets.Dataset(pa.Table.from_pydict(records, schema=schema))
    report = LoadReport(source, len(raw), len(pairs), dict(+ctx.drops))  # + leaves out zero counts
    _log.info("%s", report)
    return pairs, report


def _read(source: str, split: str | None) -> datasets.Dataset:
    path = Path(source)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes.pop()
    builder = _BUILDERS.get(suffixes[-1]) if suffixes else None
    if not path.is_file():
        if builder is not None:
            raise DataError(source, "no such file")
        return datasets.load_dataset(source, split=split or "train")
    if builder is None:
        raise DataError(source, f"unknown file type; expected one of {sorted(_BUILDERS)}, optionally .gz")
    try:
        with _quiet_datasets():
            return datasets.load_dataset(builder, data_files=str(path), split=split or "train")
    except Exception as exc:
        malformed = _find_malformed_json(source) if builder == "json" else None
        if malformed is None and builder != "parquet" and not _read_text(source).strip():
            malformed = DataError(source, "is empty: no rows to read")
        if malformed is not None:
            raise malformed from exc
        raise


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence the ``datasets`` library's logging, warnings and progress bars while reading a local
    file, restoring them after: on a malformed file our :class:`DataError` says what is wrong, alone.
    Nor does a local file count as a download: ``load_dataset`` otherwise sends the hub a request per
    call (``HF_UPDATE_DOWNLOAD_COUNTS``), which stalls each read by seconds where the hub is out of reach."""
    logger = datasets.utils.logging.get_logger()
    level, bars_disabled = logger.level, datasets.utils.are_progress_bars_disabled()
    counts = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.CRITICAL + 1)
        datasets.utils.disable_progress_bars()
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
        try:
            yield
        finally:
            datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = counts
            logger.setLevel(level)
            if not bars_disabled:
                datasets.utils.enable_progress_bars()


def _rows(raw: datasets.Dataset) -> Iterator[dict[str, Any]]:
    for batch in raw.iter(batch_size=1024):
        yield from (dict(zip(batch, values)) for values in zip(*batch.values()))


def _read_text(source: str) -> str:
    opener: Callable[..., Any] = gzip.open if source.lower().endswith(".gz") else open
    with opener(source, "rt", encoding="utf-8") as f:
        return f.read()


def _find_malformed_json(source: str) -> DataError | None:
    text = _read_text(source)
    json_lines, row = ".jsonl" in Path(source.lower()).suffixes, 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            value = err
        if not isinstance(value, dict):
            if row == 0 and not json_lines:
                break
            problem = (f"{value.msg} (column {value.colno})" if isinstance(value, json.JSONDecodeError)
                       else f"holds a {type(value).__name__}, not an object")
            return DataError(source, f"malformed JSON line: {problem}", row=row, line=lineno)
        row += 1
    else:
        return None
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        return DataError(source, f"malformed JSON: {err.msg} (column {err.colno})", line=err.lineno)
    return None


def _rename(raw: datasets.Dataset, ctx: RowContext) -> datasets.Dataset:
    for ours, theirs in ctx.columns.items():
        if theirs not in raw.column_names:
            raise ctx.error(f"given for {ours!r} but missing; columns present: {raw.column_names}", field=ours)
    shadowed = [c for c in ctx.columns if c in raw.column_names and c not in ctx.columns.values()]
    mapping = {theirs: ours for ours, theirs in ctx.columns.items() if ours != theirs}
    return raw.remove_columns(shadowed).rename_columns(mapping) if mapping else raw


def _detect_layout(raw: datasets.Dataset, ctx: RowContext) -> str:
    names = set(raw.column_names)
    if {"instruction", "completions"} <= names:
        return "ultrafeedback"
    if {"chosen", "rejected"} <= names:
        if not names.isdisjoint(OVERALL_COLUMNS) or (len(raw) and isinstance(raw[0]["chosen"], list)):
            return "ufc"
        return "pairs" if "prompt" in names else "hh"
    raise ctx.error("cannot tell the layout: expected columns (prompt, chosen, rejected), (chosen, rejected) "
                    f"or (instruction, completions); columns present: {raw.column_names}; "
                    "pass columns= or layout=")


def _check_aspects(ctx: RowContext, row: int, pair: dict[str, Any], aspects: tuple[int | None, str],
                   score_range: tuple[float, float] | None) -> tuple[int | None, str]:
    for name in SCORE_COLUMNS:
        scores = pair[name] = ctx.scores(row, name, pair[name], score_range)
        if not scores:
            raise ctx.error("has no aspect scores", row, name)
        if aspects[0] is not None and len(scores) != aspects[0]:
            raise ctx.error(f"has {len(scores)} aspect scores, expected {aspects[0]} (from {aspects[1]})",
                            row, name)
        aspects = aspects if aspects[0] is not None else (len(scores), f"row {row}")
    return aspects
