"""Property tests of pyro_vrm.data: generated files, each layout, valid and malformed records.

Every file is either read or rejected with DataError (never another exception); a file of valid
records gives exactly the pairs an independent statement of the layout's rule expects, in order,
and counts every record it does not keep under the right drop reason; a file with a malformed
record is rejected, naming the row of the first one.
"""

import json
import tempfile
from collections import Counter
from pathlib import Path

import datasets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vrm.data import ULTRAFEEDBACK_ASPECTS, DataError, load_preferences

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Few letters, so that equal responses (ties) are common; no newline, so that a response never
# forms an HH turn marker.
TEXT = st.text(alphabet="ab é!", min_size=1, max_size=4).filter(str.strip)
MAYBE_EMPTY = st.text(alphabet="ab é!", max_size=4)
NOT_TEXT = st.sampled_from([None, 5, 2.5, True, ["a"], {"a": 1}, "", "  "])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One folder for the generated files and datasets' Arrow cache (not the user's cache)."""
    root = tmp_path_factory.mktemp("properties")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", root / "hf-cache")
        yield root


def load(folder, records, layout):
    """load_preferences on ``records`` written as a fresh .jsonl file: (pairs as dicts, report)."""
    path = Path(tempfile.mkdtemp(dir=folder)) / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    pairs, report = load_preferences(str(path), layout=layout)
    return pairs.to_list(), report


def check(folder, layout, named, records):
    """``records`` are (record, (kind, pair, drop reasons)), kind "pair" (kept), "drop" or "bad";
    the file must be rejected at the first bad record, else read as the outcomes say."""
    rows = [r for r, _ in records]
    bad = [i for i, (_, (kind, _, _)) in enumerate(records) if kind == "bad"]
    if bad:
        with pytest.raises(DataError) as error:
            load(folder, rows, layout if named else None)
        if named:
            assert error.value.row == bad[0], str(error.value)
        return
    pairs, report = load(folder, rows, layout if named else None)
    assert pairs == [pair for _, (kind, pair, _) in records if kind == "pair"]
    assert report.dropped == dict(Counter(reason for _, (_, _, reasons) in records for reason in reasons))
    assert (report.rows_read, report.pairs_kept) == (len(rows), len(pairs))


BAD = ("bad", None, [])


def pair_or_tie(pair, reasons=()):
    """The outcome of a parsed pair: kept, or dropped as a tie when both responses are equal."""
    if pair["chosen"] == pair["rejected"]:
        return "drop", None, [*reasons, "tie"]
    return "pair", pair, list(reasons)


def a_file(record, named):
    """Up to 5 valid records and, half the time, one malformed record at a random place (not the
    first when the layout is detected from the first row)."""
    def insert(drawn):
        valid, bad, position = drawn
        if bad is None:
            return valid
        position = max(min(position, len(valid)), 0 if named else 1)
        return valid[:position] + [bad] + valid[position:]

    return st.tuples(st.lists(record(False), min_size=1, max_size=5), st.none() | record(True),
                     st.integers(0, 5)).map(insert)


# -- pairs ---------------------------------------------------------------------------------
@st.composite
def pairs_record(draw, num_aspects, bad):
    record = {"prompt": draw(TEXT), "chosen": draw(TEXT), "rejected": draw(TEXT)}
    if num_aspects:
        for name in ("scores_chosen", "scores_rejected"):
            record[name] = draw(st.lists(st.integers(-3, 9) | st.floats(-1e6, 1e6),
                                         min_size=num_aspects, max_size=num_aspects))
    if not bad:
        outcome = {k: (list(map(float, v)) if k.startswith("scores") else v) for k, v in record.items()}
        return record, pair_or_tie(outcome)
    field = draw(st.sampled_from(sorted(record)))
    if field.startswith("scores"):
        record[field] = draw(st.sampled_from([[], "x", [1, "x"], [True] * num_aspects]))
    else:
        record[field] = draw(NOT_TEXT)
    return record, BAD


@SETTINGS
@given(data=st.data(), num_aspects=st.sampled_from([0, 0, 1, 3]), named=st.booleans())
def test_pairs_files(folder, data, num_aspects, named):
    records = data.draw(a_file(lambda bad: pairs_record(num_aspects, bad), named))
    check(folder, "pairs", named, records)


# -- hh ------------------------------------------------------------------------------------
@st.composite
def hh_record(draw, bad):
    turns = draw(st.lists(st.tuples(TEXT, TEXT), min_size=0, max_size=2))
    prompt = "".join(f"\n\nHuman: {h}\n\nAssistant: {a}" for h, a in turns)
    prompt += f"\n\nHuman: {draw(TEXT)}\n\nAssistant:"
    chosen, rejected = draw(MAYBE_EMPTY), draw(MAYBE_EMPTY)
    record = {"chosen": f"{prompt} {chosen}", "rejected": f"{prompt} {rejected}"}
    if not bad:
        return record, pair_or_tie({"prompt": prompt, "chosen": chosen.strip(), "rejected": rejected.strip()})
    kind = draw(st.sampled_from(["type", "no assistant turn", "diverge in a human turn"]))
    if kind == "type":
        record[draw(st.sampled_from(["chosen", "rejected"]))] = draw(st.sampled_from([None, 5, ["a"]]))
    elif kind == "no assistant turn":
        record = {"chosen": f"\n\nHuman: {chosen}", "rejected": f"\n\nHuman: {chosen}"}
    else:
        record["rejected"] = f"\n\nHuman: {rejected}?{prompt}"
    return record, BAD


@SETTINGS
@given(data=st.data(), named=st.booleans())
def test_hh_files(folder, data, named):
    records = data.draw(a_file(hh_record, named))
    check(folder, "hh", named, records)


# -- ufc -----------------------------------------------------------------------------------
OVERALL = st.sampled_from([1, 2.5, 7.0, 8.5, 10])  # few values, so that equal scores (ties) are common
BAD_OVERALL = st.sampled_from([0, 0.5, 10.5, 11, -3, None, True])


@st.composite
def ufc_record(draw, with_prompt, strings, scored, bad):
    """A binarized UltraFeedback row: message lists (strings=False) or plain-string responses (only
    with a prompt column), with overall scores or without."""
    questions = draw(st.lists(TEXT, min_size=1, max_size=2))
    turns = []
    for q in questions:
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": draw(TEXT)}]
    turns.pop()
    chosen, rejected = (draw(MAYBE_EMPTY if scored else TEXT) for _ in range(2))  # a rated response may be empty
    record = {"chosen": chosen, "rejected": rejected} if strings else {
        "chosen": turns + [{"role": "assistant", "content": chosen}],
        "rejected": turns + [{"role": "assistant", "content": rejected}]}
    # message lists carry the conversation, rendered as an HH transcript: it is the prompt, column or not
    prompt = "".join(f"\n\n{ {'user': 'Human', 'assistant': 'Assistant'}[t['role']]}: {t['content']}"
                     for t in turns) + "\n\nAssistant:"
    if with_prompt:
        record["prompt"] = draw(TEXT)
        prompt = record["prompt"] if strings else prompt
    if scored:
        record["score_chosen"], record["score_rejected"] = draw(OVERALL), draw(OVERALL)
    if not bad:
        pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if not scored:
            return record, pair_or_tie(pair)
        if record["score_chosen"] == record["score_rejected"]:
            return record, ("drop", None, ["tie"])
        scores = {"scores_chosen": [float(record["score_chosen"])],
                  "scores_rejected": [float(record["score_rejected"])]}
        return record, pair_or_tie(pair | scores)
    side = draw(st.sampled_from(["chosen", "rejected"]))
    kinds = ["not a list", "user content"] if not strings else ["not a list"]
    kinds += ["empty", "last role"] if not strings else []
    kinds += ["final content"] if not scored else []
    if strings:  # the prompt column is the prompt
        kinds += ["prompt"]
    else:  # the turns before the reply are: they must agree, and a plain string needs a prompt column
        kinds += ["other user turns"] + ([] if with_prompt else ["plain string"])
    kinds += ["score"] * 3 if scored else []  # weighted: a score out of 1..10 is the layout's own check
    kind = draw(st.sampled_from(kinds))
    if kind == "not a list":
        record[side] = draw(st.sampled_from([3, None, ["text"]]))
    elif kind == "plain string":
        record[side] = draw(TEXT)
    elif kind == "empty":
        record[side] = []
    elif kind == "last role":
        record[side] = record[side] + [{"role": "user", "content": "more?"}]
    elif kind == "final content":
        blank = draw(st.sampled_from(["", " "]))
        record[side] = blank if strings else record[side][:-1] + [{"role": "assistant", "content": blank}]
    elif kind == "user content":
        record[side] = [{"role": "user", "content": " "}] + record[side]
    elif kind == "prompt":
        record["prompt"] = draw(st.sampled_from(["", "  "]))
    elif kind == "score":
        record[draw(st.sampled_from(["score_chosen", "score_rejected"]))] = draw(BAD_OVERALL)
    else:
        record["rejected"] = [{"role": "user", "content": "another question"}] + record["rejected"]
    return record, BAD


@SETTINGS
@given(data=st.data(), with_prompt=st.booleans(), strings=st.booleans(), scored=st.booleans(),
       named=st.booleans())
def test_ufc_files(folder, data, with_prompt, strings, scored, named):
    with_prompt = with_prompt or strings
    records = data.draw(a_file(lambda bad: ufc_record(with_prompt, strings, scored, bad), named))
    check(folder, "ufc", named, records)


# -- ultrafeedback -------------------------------------------------------------------------
RATING = st.sampled_from(["1", "2", "3", "4", "5", "N/A", "N/A", None])


@st.composite
def completion(draw):
    ratings = {aspect: draw(RATING) for aspect in ULTRAFEEDBACK_ASPECTS}
    annotations = {a: {"Rating": r} for a, r in ratings.items() if r is not None}
    return {"response": draw(TEXT), "annotations": annotations}, ratings


def ultrafeedback_outcome(instruction, completions):
    """The pair rule of the data.py docstring, stated again: best against worst by mean rating."""
    rated = {j: [float(r) for r in ratings.values()] for j, (_, ratings) in enumerate(completions)
             if all(r not in (None, "N/A") for r in ratings.values())}
    unrated = ["completion_with_na_rating"] * (len(completions) - len(rated))
    if len(rated) < 2:
        return "drop", None, [*unrated, "fewer_than_two_rated_completions"]
    mean = {j: sum(r) / len(r) for j, r in rated.items()}
    best = max(rated, key=lambda j: (mean[j], -j))
    worst = max((j for j in rated if j != best), key=lambda j: (-mean[j], -j))
    if mean[best] == mean[worst]:
        return "drop", None, [*unrated, "tie"]
    pair = {"prompt": instruction, "chosen": completions[best][0]["response"],
            "rejected": completions[worst][0]["response"],
            "scores_chosen": rated[best], "scores_rejected": rated[worst]}
    return pair_or_tie(pair, unrated)


@st.composite
def ultrafeedback_record(draw, bad):
    instruction = draw(TEXT)
    completions = draw(st.lists(completion(), max_size=4))
    record = {"instruction": instruction, "completions": [c for c, _ in completions]}
    if not bad:
        return record, ultrafeedback_outcome(instruction, completions)
    kinds = ["instruction", "completions"] + (["rating"] if completions else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "instruction":
        record["instruction"] = draw(NOT_TEXT)
    elif kind == "completions":
        record["completions"] = draw(st.sampled_from(["text", 3, [1, 2]]))
    else:
        j = draw(st.integers(0, len(completions) - 1))  # one rating out of range, whatever the others
        aspect = draw(st.sampled_from(ULTRAFEEDBACK_ASPECTS))
        record["completions"][j]["annotations"][aspect] = {"Rating": draw(st.sampled_from(["0", "6", "five", "-1"]))}
    return record, BAD


@SETTINGS
@given(data=st.data(), named=st.booleans())
def test_ultrafeedback_files(folder, data, named):
    records = data.draw(a_file(ultrafeedback_record, named))
    check(folder, "ultrafeedback", named, records)
