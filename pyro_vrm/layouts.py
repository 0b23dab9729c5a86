r"""The four layouts of a preference data set, and how one row of each becomes a pair.

:func:`pyro_vrm.data.load_preferences` reads the source, names or detects the layout and hands
each row to the layout's parser in :data:`PARSERS`, which checks the row and returns its pair, a
dict with ``prompt``, ``chosen``, ``rejected`` and, where the layout has them,
``scores_chosen``/``scores_rejected``; or None for a valid row that gives no pair.

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
    trl-lib/ultrafeedback_binarized, and TRL's conversational preference format: ``chosen`` and
    ``rejected`` are each a plain string, the response, or a message list, whose final (assistant)
    message is the response. The prompt is the conversation before that message, rendered by
    :func:`pyro_vrm.conversation.render_prompt` (every turn, roles kept, as an HH transcript);
    where the responses carry no earlier turns, it is the ``prompt`` column, a string or a message
    list (rendered the same way), so plain-string responses need the column. ``score_chosen`` and ``score_rejected``,
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
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .conversation import render_prompt

__all__ = ["DROP_REASONS", "GIVEN_SCORES", "HH_ASSISTANT", "HH_HUMAN", "LAYOUTS", "OVERALL_COLUMNS", "PARSERS",
           "REQUIRED", "SCORE_COLUMNS", "ULTRAFEEDBACK_ASPECTS", "ULTRAFEEDBACK_OVERALL", "DataError", "Parser",
           "RowContext"]

LAYOUTS = ("pairs", "hh", "ufc", "ultrafeedback")
ULTRAFEEDBACK_ASPECTS = ("instruction_following", "truthfulness", "honesty", "helpfulness")
ULTRAFEEDBACK_OVERALL = ("overall",)
DROP_REASONS = ("tie", "completion_with_na_rating", "fewer_than_two_rated_completions")
HH_ASSISTANT = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"
_RATING_RANGE = (1.0, 5.0)
_OVERALL_RANGE = (1.0, 10.0)
REQUIRED = {"pairs": ("prompt", "chosen", "rejected"), "hh": ("chosen", "rejected"),
            "ufc": ("chosen", "rejected"), "ultrafeedback": ("instruction", "completions")}
"""The columns each layout requires."""
SCORE_COLUMNS = ("scores_chosen", "scores_rejected")
"""The K aspect scores of a pair's two responses, as a pair and the ``pairs`` layout name them."""
OVERALL_COLUMNS = ("score_chosen", "score_rejected")
"""The overall scores of the ``ufc`` layout."""
GIVEN_SCORES = {"pairs": SCORE_COLUMNS, "ufc": OVERALL_COLUMNS}
"""The optional score columns of a layout, given both or neither."""


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
class RowContext:
    """What the row parsers of one read share: the source, the column renaming, ``strict`` and
    the drop counts; its methods check a field of a row and make the :class:`DataError` naming it.

    ``columns`` maps this package's column names to the source's, so that an error names a field
    as the source does; ``drops`` counts the drops by reason from :data:`DROP_REASONS`.

    Examples:
        >>> ctx = RowContext("prefs.jsonl", {"prompt": "q"})
        >>> str(ctx.error("is empty or whitespace-only", 3, "prompt"))
        "prefs.jsonl, row 3, field 'q': is empty or whitespace-only"
    """

    source: str
    columns: Mapping[str, str]
    strict: bool = False
    drops: Counter[str] = field(default_factory=Counter)

    def error(self, message: str, row: int | None = None, field: str | None = None) -> DataError:
        """A :class:`DataError` at ``row`` and ``field`` (our name, with any path inside it)."""
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
        """``value``, checked to be a string and, unless ``allow_empty``, not blank."""
        if not isinstance(value, str):
            raise self.error(f"must be a string, got {type(value).__name__} {value!r:.60}", row, field)
        if not allow_empty and not value.strip():
            raise self.error("is empty or whitespace-only", row, field)
        return value

    def scores(self, row: int, field: str, value: Any, score_range: tuple[float, float] | None) -> list[float]:
        """``value`` (a list, or a JSON array in a string) as finite floats within ``score_range``."""
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


def _parse_pairs(ctx: RowContext, i: int, row: dict[str, Any]) -> dict[str, Any]:
    pair = {name: ctx.text(i, name, row[name]) for name in ("prompt", "chosen", "rejected")}
    return pair | {name: row[name] for name in SCORE_COLUMNS if name in row}


def _parse_hh(ctx: RowContext, i: int, row: dict[str, Any]) -> dict[str, Any]:
    chosen, rejected = (ctx.text(i, name, row[name], allow_empty=True) for name in ("chosen", "rejected"))
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(HH_ASSISTANT)
    end = cut + len(HH_ASSISTANT)
    if cut < 0 or HH_HUMAN in shared[end:]:
        raise ctx.error("chosen and rejected do not share the dialogue up to their last 'Assistant:' turn "
                        f"(they diverge at character {len(shared)})", i, "chosen")
    return {"prompt": chosen[:end], "chosen": chosen[end:].strip(), "rejected": rejected[end:].strip()}


def _parse_ufc(ctx: RowContext, i: int, row: dict[str, Any]) -> dict[str, Any] | None:
    scored = OVERALL_COLUMNS[0] in row
    user, chosen = _response(ctx, i, "chosen", row["chosen"], allow_empty=scored)
    rejected_user, rejected = _response(ctx, i, "rejected", row["rejected"], allow_empty=scored)
    if user is None and "prompt" in row:
        user = _prompt(ctx, i, row["prompt"])
    elif user is None or rejected_user is None:
        raise ctx.error("is a plain string or a lone reply, so the prompt must be a column, but there is none",
                        i, "chosen" if user is None else "rejected")
    elif user != rejected_user:
        raise ctx.error("the turns before the reply differ from those in chosen", i, "rejected")
    pair = {"prompt": user, "chosen": chosen, "rejected": rejected}
    if not scored:
        return pair
    scores = [[_overall(ctx, i, name, row[name])] for name in OVERALL_COLUMNS]  # K=1: ULTRAFEEDBACK_OVERALL
    pair["scores_chosen"], pair["scores_rejected"] = scores
    if pair["scores_chosen"] == pair["scores_rejected"]:
        ctx.drop(i, "tie", why=f": {OVERALL_COLUMNS[0]} equals {OVERALL_COLUMNS[1]}")
        return None
    return pair


def _response(ctx: RowContext, i: int, name: str, value: Any, allow_empty: bool) -> tuple[str | None, str]:
    """(the rendered conversation before the response, None for a plain string or a lone reply; the
    response)."""
    if isinstance(value, str):
        return None, ctx.text(i, name, value, allow_empty)
    return _final_reply(ctx, i, name, value, allow_empty)


def _final_reply(ctx: RowContext, i: int, name: str, messages: Any, allow_empty: bool = False
                 ) -> tuple[str | None, str]:
    """(the rendered conversation before the final reply, None where there is none; the reply)."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ctx.error(f"must be a string or a non-empty list of messages, got {messages!r:.60}", i, name)
    if messages[-1].get("role") != "assistant":
        raise ctx.error(f"the last message has role {messages[-1].get('role')!r}, expected 'assistant'",
                        i, f"{name}[-1].role")
    reply = ctx.text(i, f"{name}[-1].content", messages[-1].get("content"), allow_empty)
    return (_prompt(ctx, i, messages[:-1], name) if len(messages) > 1 else None), reply


def _prompt(ctx: RowContext, i: int, value: Any, name: str = "prompt") -> str:
    """A prompt: a non-blank string, or a message list rendered by ``render_prompt``."""
    if isinstance(value, str):
        return ctx.text(i, name, value)
    try:
        return render_prompt(value, name)
    except ValueError as error:
        raise ctx.error(str(error), i, name) from None


def _overall(ctx: RowContext, i: int, name: str, value: Any) -> float:
    """An overall score: a finite number in 1..10."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not _OVERALL_RANGE[0] <= value <= _OVERALL_RANGE[1]:  # False for nan
        raise ctx.error(f"must be an overall score, a number in 1..10, got {value!r:.60}", i, name)
    return float(value)


def _parse_ultrafeedback(ctx: RowContext, i: int, row: dict[str, Any]) -> dict[str, Any] | None:
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


def _ratings(ctx: RowContext, i: int, j: int, completion: dict[str, Any]) -> list[float] | None:
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


Parser = Callable[[RowContext, int, dict[str, Any]], dict[str, Any] | None]
"""A layout's row parser: (context, row index, row) to the row's pair, or None when it gives none."""

PARSERS: dict[str, Parser] = {
    "pairs": _parse_pairs, "hh": _parse_hh, "ufc": _parse_ufc, "ultrafeedback": _parse_ultrafeedback,
}
"""Each layout of :data:`LAYOUTS` mapped to its row parser."""
