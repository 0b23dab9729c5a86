r"""Preference data sets read into validated (prompt, chosen, rejected) pairs.

:func:`load_preferences` reads a local file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``, the
json and csv ones optionally ``.gz``) or a Hugging Face hub id with the ``datasets`` library,
parses it with one of four layouts and returns a ``datasets.Dataset`` with columns ``prompt``,
``chosen``, ``rejected`` and, where the source has them, ``scores_chosen``/``scores_rejected``
(K aspect scores each) and ``subset``, together with a :class:`LoadReport`.

Layouts (when none is named: ``ultrafeedback`` given ``instruction`` and ``completions``; else, given
``chosen`` and ``rejected``, ``ufc`` if ``score_chosen`` or ``score_rejected`` is a column or the
first row's ``chosen`` is a list, else ``pairs`` with a ``prompt`` column and ``hh`` without):

``pairs``
    ``prompt``, ``chosen``, ``rejected`` [, ``scores_chosen``, ``scores_rejected``, ``subset``],
    e.g. allenai/reward-bench (other columns are ignored). In a CSV file a score list is written
    as a JSON array, e.g. ``"[4, 5]"``.
``hh``
    Anthropic HH-RLHF: ``chosen`` and ``rejected`` are whole dialogues
    (``"\n\nHuman: ...\n\nAssistant: ..."``). The prompt is their common prefix up to and including
    its last ``"\n\nAssistant:"``; the responses are what follows, stripped. The dialogues must
    not diverge inside a Human turn. An empty response is kept: in HH it is a real answer (the
    assistant said nothing) that the labeller preferred or rejected.
``ufc``
    binarized UltraFeedback, e.g. allenai/ultrafeedback_binarized_cleaned or
    trl-lib/ultrafeedback_binarized: ``chosen`` and ``rejected`` are each a plain string, the
    response, or a message list, whose final (assistant) message is the response. The prompt is
    the ``prompt`` column, or without one the user turns before the final message joined by blank
    lines (so plain-string responses need the column). ``score_chosen`` and ``score_rejected``,
    where given, are the overall GPT-4 scores (1..10) of the two responses, read as the one aspect
    :data:`ULTRAFEEDBACK_OVERALL`: K=1 scores ``[score_chosen]`` and ``[score_rejected]``. A row whose
    two scores are equal is a tie; one whose chosen score is below its rejected score is kept as
    labelled. With scores an empty response is kept, as in ``hh``: it was rated.
``ultrafeedback``
    raw openbmb/UltraFeedback: ``instruction`` and ``completions``, each completion rated 1..5 (or
    "N/A") on the aspects :data:`ULTRAFEEDBACK_ASPECTS`, which give the K=4 scores in that order.
    Pair rule, one pair per instruction, best against worst: a completion with an "N/A" or missing
    rating is left out; chosen is the completion with the highest mean rating, rejected the one
    with the lowest mean rating among the others, ties going to the lower completion index; no pair
    when fewer than two completions are fully rated, or when best and worst have equal means.

A row that breaks the layout raises :class:`DataError`; a valid row that gives no pair is dropped
and counted in the report under one of :data:`DROP_REASONS` (with ``strict=True`` every such drop
raises :class:`DataError` instead, naming the row and the reason).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

__all__ = ["DROP_REASONS", "LAYOUTS", "ULTRAFEEDBACK_ASPECTS", "ULTRAFEEDBACK_OVERALL", "DataError", "LoadReport",
           "load_preferences"]

LAYOUTS = ("pairs", "hh", "ufc", "ultrafeedback")
ULTRAFEEDBACK_ASPECTS = ("instruction_following", "truthfulness", "honesty", "helpfulness")
ULTRAFEEDBACK_OVERALL = ("overall",)
DROP_REASONS = ("tie", "completion_with_na_rating", "fewer_than_two_rated_completions")
HH_ASSISTANT = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"
_RATING_RANGE = (1.0, 5.0)
_OVERALL_RANGE = (1.0, 10.0)
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_REQUIRED = {"pairs": ("prompt", "chosen", "rejected"), "hh": ("chosen", "rejected"),
             "ufc": ("chosen", "rejected"), "ultrafeedback": ("instruction", "completions")}
_SCORES = ("scores_chosen", "scores_rejected")
_OVERALL_COLUMNS = ("score_chosen", "score_rejected")
_GIVEN_SCORES = {"pairs": _SCORES, "ufc": _OVERALL_COLUMNS}  # the optional score columns of a layout
_FEATURES = {name: datasets.Value("string") for name in ("prompt", "chosen", "rejected", "subset")} | {
    name: datasets.Sequence(datasets.Value("float64")) for name in _SCORES}
_log = logging.getLogger("pyro_vrm.data")


class DataError(ValueError):
    """A source that cannot be read as preference pairs; the message names where.

    ``row`` is the 0-based row in the file or data set, ``line`` a 1-based line of a JSON file,
    ``field`` the column as the source names it (with a path inside it where nested).

    Examples:
        >>> str(DataError("prefs.jsonl", "is empty or whitespace-only", row=3, field="chosen"))
        "prefs.jsonl, row 3, field 'chosen': is empty or whitespace-only"
    """

    def __init__(self, source: str, message: str, *, row: int | None = None,
                 field: str | None = None, line: int | None = None) -> None:
        self.source, self.row, self.field, self.line = source, row, field, line
        where = [source] + [f"{k} {v}" for k, v in (("row", row), ("line", line)) if v is not None]
        where += [f"field {field!r}"] if field is not None else []
        super().__init__(f"{', '.join(where)}: {message}")


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


@dataclass
class _Context:
    source: str
    columns: Mapping[str, str]
    strict: bool = False
    drops: Counter[str] = field(default_factory=Counter)

    def error(self, message: str, row: int | None = None, field: str | None = None) -> DataError:
        if field is not None:
            head = field.split("[")[0].split(".")[0]
            field = self.columns.get(head, head) + field[len(head):]
        return DataError(self.source, message, row=row, field=field)

    def drop(self, row: int, reason: str, count: int = 1, why: str = "") -> None:
        """Count ``count`` drops for ``reason`` at ``row``; under ``strict`` raise instead."""
        if self.strict and count:
            raise self.error(f"a {reason!r} drop{why}; strict=True makes every drop an error", row)
        self.drops[reason] += count

    def text(self, row: int, field: str, value: Any, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(f"must be a string, got {type(value).__name__} {value!r:.60}", row, field)
        if not allow_empty and not value.strip():
            raise self.error("is empty or whitespace-only", row, field)
        return value

    def scores(self, row: int, field: str, value: Any, score_range: tuple[float, float] | None) -> list[float]:
        if isinstance(value, str):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise self.error(f"must be a list of numbers, got {value!r:.60}", row, field)
        for k, v in enumerate(value):
            if not math.isfinite(v):
                raise self.error(f"aspect {k} is {v}, not a finite number", row, field)
            if score_range is not None and not score_range[0] <= v <= score_range[1]:
                raise self.error(f"aspect {k} is {v}, outside the range {list(score_range)}", row, field)
        return [float(v) for v in value]


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
    ctx = _Context(source, dict(columns or {}), strict)
    raw = _rename(raw, ctx)
    names = set(raw.column_names)
    layout = layout or _detect_layout(raw, ctx)
    if layout not in _PARSERS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    for column in _REQUIRED[layout]:
        if column not in names:
            raise ctx.error(f"required by layout {layout!r} but missing; columns present: {raw.column_names}",
                            field=column)
    optional = _GIVEN_SCORES.get(layout, ())
    scored = layout == "ultrafeedback" or not names.isdisjoint(optional)
    for given, other in (optional, optional[::-1]) if optional else ():
        if given in names and other not in names:
            raise ctx.error(f"{given} is given without {other}", field=other)
    out = ["prompt", "chosen", "rejected"]
    out += list(_SCORES) if scored else []
    out += ["subset"] if "subset" in names else []
    records: dict[str, list[Any]] = {column: [] for column in out}
    aspects = (num_aspects, "num_aspects")
    for i, row in enumerate(_rows(raw)):
        pair = _PARSERS[layout](ctx, i, row)
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
    file, restoring them after: on a malformed file our :class:`DataError` says what is wrong, alone."""
    logger = datasets.utils.logging.get_logger()
    level, bars_disabled = logger.level, datasets.utils.are_progress_bars_disabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.CRITICAL + 1)
        datasets.utils.disable_progress_bars()
        try:
            yield
        finally:
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


def _rename(raw: datasets.Dataset, ctx: _Context) -> datasets.Dataset:
    for ours, theirs in ctx.columns.items():
        if theirs not in raw.column_names:
            raise ctx.error(f"given for {ours!r} but missing; columns present: {raw.column_names}", field=ours)
    shadowed = [c for c in ctx.columns if c in raw.column_names and c not in ctx.columns.values()]
    mapping = {theirs: ours for ours, theirs in ctx.columns.items() if ours != theirs}
    return raw.remove_columns(shadowed).rename_columns(mapping) if mapping else raw


def _detect_layout(raw: datasets.Dataset, ctx: _Context) -> str:
    names = set(raw.column_names)
    if {"instruction", "completions"} <= names:
        return "ultrafeedback"
    if {"chosen", "rejected"} <= names:
        if not names.isdisjoint(_OVERALL_COLUMNS) or (len(raw) and isinstance(raw[0]["chosen"], list)):
            return "ufc"
        return "pairs" if "prompt" in names else "hh"
    raise ctx.error("cannot tell the layout: expected columns (prompt, chosen, rejected), (chosen, rejected) "
                    f"or (instruction, completions); columns present: {raw.column_names}; "
                    "pass columns= or layout=")


def _check_aspects(ctx: _Context, row: int, pair: dict[str, Any], aspects: tuple[int | None, str],
                   score_range: tuple[float, float] | None) -> tuple[int | None, str]:
    for name in _SCORES:
        scores = pair[name] = ctx.scores(row, name, pair[name], score_range)
        if not scores:
            raise ctx.error("has no aspect scores", row, name)
        if aspects[0] is not None and len(scores) != aspects[0]:
            raise ctx.error(f"has {len(scores)} aspect scores, expected {aspects[0]} (from {aspects[1]})",
                            row, name)
        aspects = aspects if aspects[0] is not None else (len(scores), f"row {row}")
    return aspects


def _parse_pairs(ctx: _Context, i: int, row: dict[str, Any]) -> dict[str, Any]:
    pair = {name: ctx.text(i, name, row[name]) for name in ("prompt", "chosen", "rejected")}
    return pair | {name: row[name] for name in _SCORES if name in row}


def _parse_hh(ctx: _Context, i: int, row: dict[str, Any]) -> dict[str, Any]:
    chosen, rejected = (ctx.text(i, name, row[name], allow_empty=True) for name in ("chosen", "rejected"))
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(HH_ASSISTANT)
    end = cut + len(HH_ASSISTANT)
    if cut < 0 or HH_HUMAN in shared[end:]:
        raise ctx.error("chosen and rejected do not share the dialogue up to their last 'Assistant:' turn "
                        f"(they diverge at character {len(shared)})", i, "chosen")
    return {"prompt": chosen[:end], "chosen": chosen[end:].strip(), "rejected": rejected[end:].strip()}


def _parse_ufc(ctx: _Context, i: int, row: dict[str, Any]) -> dict[str, Any] | None:
    scored = _OVERALL_COLUMNS[0] in row
    user, chosen = _response(ctx, i, "chosen", row["chosen"], allow_empty=scored)
    rejected_user, rejected = _response(ctx, i, "rejected", row["rejected"], allow_empty=scored)
    if "prompt" in row:
        user = ctx.text(i, "prompt", row["prompt"])
    elif user is None or rejected_user is None:
        raise ctx.error("is a plain string, so the prompt must be a column, but there is none",
                        i, "chosen" if user is None else "rejected")
    elif user != rejected_user:
        raise ctx.error("user turns differ from those in chosen", i, "rejected")
    pair = {"prompt": ctx.text(i, "prompt", user), "chosen": chosen, "rejected": rejected}
    if not scored:
        return pair
    scores = [[_overall(ctx, i, name, row[name])] for name in _OVERALL_COLUMNS]  # K=1: ULTRAFEEDBACK_OVERALL
    pair["scores_chosen"], pair["scores_rejected"] = scores
    if pair["scores_chosen"] == pair["scores_rejected"]:
        ctx.drop(i, "tie", why=f": {_OVERALL_COLUMNS[0]} equals {_OVERALL_COLUMNS[1]}")
        return None
    return pair


def _response(ctx: _Context, i: int, name: str, value: Any, allow_empty: bool) -> tuple[str | None, str]:
    """(the user turns before the response, None for a plain string; the response)."""
    if isinstance(value, str):
        return None, ctx.text(i, name, value, allow_empty)
    return _final_reply(ctx, i, name, value, allow_empty)


def _final_reply(ctx: _Context, i: int, name: str, messages: Any, allow_empty: bool = False) -> tuple[str, str]:
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ctx.error(f"must be a string or a non-empty list of messages, got {messages!r:.60}", i, name)
    if messages[-1].get("role") != "assistant":
        raise ctx.error(f"the last message has role {messages[-1].get('role')!r}, expected 'assistant'",
                        i, f"{name}[-1].role")
    user = [ctx.text(i, f"{name}[{j}].content", m.get("content"))
            for j, m in enumerate(messages[:-1]) if m.get("role") == "user"]
    return "\n\n".join(user), ctx.text(i, f"{name}[-1].content", messages[-1].get("content"), allow_empty)


def _overall(ctx: _Context, i: int, name: str, value: Any) -> float:
    """An overall score: a finite number in 1..10."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not _OVERALL_RANGE[0] <= value <= _OVERALL_RANGE[1]:  # False for nan
        raise ctx.error(f"must be an overall score, a number in 1..10, got {value!r:.60}", i, name)
    return float(value)


def _parse_ultrafeedback(ctx: _Context, i: int, row: dict[str, Any]) -> dict[str, Any] | None:
    prompt = ctx.text(i, "instruction", row["instruction"])
    completions = row["completions"]
    if not isinstance(completions, list) or not all(isinstance(c, dict) for c in completions):
        raise ctx.error(f"must be a list of completion objects, got {completions!r:.60}", i, "completions")
    rated = {j: r for j, c in enumerate(completions) if (r := _ratings(ctx, i, j, c)) is not None}
    ctx.drop(i, "completion_with_na_rating", len(completions) - len(rated),
             f": completions {sorted(set(range(len(completions))) - set(rated))} lack a rating")
    if len(rated) < 2:
        ctx.drop(i, "fewer_than_two_rated_completions")
        return None
    mean = {j: sum(r) / len(r) for j, r in rated.items()}
    best = min(rated, key=lambda j: (-mean[j], j))
    worst = min((j for j in rated if j != best), key=lambda j: (mean[j], j))
    if mean[best] == mean[worst]:
        ctx.drop(i, "tie", why=f": best and worst completions have the same mean rating {mean[best]}")
        return None
    chosen, rejected = (ctx.text(i, f"completions[{j}].response", completions[j].get("response"))
                        for j in (best, worst))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
            "scores_chosen": rated[best], "scores_rejected": rated[worst]}


def _ratings(ctx: _Context, i: int, j: int, completion: dict[str, Any]) -> list[float] | None:
    annotations = completion.get("annotations") or {}
    ratings: list[float | None] = []
    for aspect in ULTRAFEEDBACK_ASPECTS:
        annotation = annotations.get(aspect) if isinstance(annotations, dict) else annotations
        rating = annotation.get("Rating") if isinstance(annotation, dict) else annotation
        if rating is None or rating == "N/A":
            ratings.append(None)  # the completion is left out, but its other ratings are still checked
            continue
        try:
            value = float(rating)
        except (TypeError, ValueError):
            value = math.nan
        if not _RATING_RANGE[0] <= value <= _RATING_RANGE[1]:
            raise ctx.error(f"must be a rating 1..5 or 'N/A', got {rating!r:.60}",
                            i, f"completions[{j}].annotations.{aspect}.Rating")
        ratings.append(value)
    return None if None in ratings else ratings


_PARSERS: dict[str, Callable[[_Context, int, dict[str, Any]], dict[str, Any] | None]] = {
    "pairs": _parse_pairs, "hh": _parse_hh, "ufc": _parse_ufc, "ultrafeedback": _parse_ultrafeedback,
}
