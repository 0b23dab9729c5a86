import csv
import doctest
import gzip
import json
import logging
import sys
from pathlib import Path

import datasets
import pytest

import pyro_vrm.data
from pyro_vrm.data import DataError, LoadReport, load_preferences

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_SAMPLE = SHARED_DATA / "hh-rlhf-harmless-base-test-even.jsonl.gz"
UF_SAMPLE = SHARED_DATA / "ultrafeedback-binarized-sample-train1000.jsonl.gz"

PAIRS = [
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Paris"},
    {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."},
]
KEPT = [PAIRS[0], PAIRS[2]]


@pytest.fixture(autouse=True)
def private_hf_cache(tmp_path, monkeypatch):
    """datasets writes its Arrow cache under the test's tmp_path, not the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def write_jsonl(path, rows):
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def write_csv(path, rows):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def write_json(path, rows):
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return str(path)


def write_parquet(path, rows):
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


WRITERS = {"jsonl": write_jsonl, "jsonl.gz": write_jsonl, "json": write_json, "parquet": write_parquet,
           "csv": write_csv, "csv.gz": write_csv}


@pytest.mark.parametrize("ext", list(WRITERS))
def test_every_file_format_loads_the_same_pairs_and_drops_the_tie(tmp_path, ext):
    path = WRITERS[ext](tmp_path / f"prefs.{ext}", PAIRS)
    pairs, report = load_preferences(path)
    assert pairs.column_names == ["prompt", "chosen", "rejected"]
    assert pairs.to_list() == KEPT
    assert (report.source, report.rows_read, report.pairs_kept, report.dropped) == (path, 3, 2, {"tie": 1})


def test_scores_and_subset_come_through_as_floats(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "scores_chosen": [4, 5],
             "scores_rejected": [1.5, 2], "subset": "chat", "chosen_model": "m1"}]
    pairs, _ = load_preferences(write_jsonl(tmp_path / "p.jsonl", rows), num_aspects=2, score_range=(1, 5))
    assert pairs.column_names == ["prompt", "chosen", "rejected", "scores_chosen", "scores_rejected", "subset"]
    assert pairs[0]["scores_chosen"] == [4.0, 5.0] and pairs[0]["scores_rejected"] == [1.5, 2.0]
    assert pairs[0]["subset"] == "chat"


def test_csv_scores_are_json_arrays(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "scores_chosen": "[3, 4]",
             "scores_rejected": "[1, 2]"}]
    pairs, _ = load_preferences(write_csv(tmp_path / "p.csv", rows))
    assert pairs[0]["scores_chosen"] == [3.0, 4.0] and pairs[0]["scores_rejected"] == [1.0, 2.0]


def test_columns_maps_our_names_to_the_files(tmp_path):
    rows = [{"question": "q", "good": "a", "bad": "b", "prompt": "an unrelated column"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    pairs, _ = load_preferences(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert pairs.to_list() == [{"prompt": "q", "chosen": "a", "rejected": "b"}]
    present = r"columns present: \['question', 'good', 'bad', 'prompt'\]"
    with pytest.raises(DataError, match=rf"field 'answer': given for 'chosen' but missing; {present}"):
        load_preferences(path, columns={"prompt": "question", "chosen": "answer", "rejected": "bad"})


def test_errors_name_the_source_column_when_renamed(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": " ", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"row 0, field 'question': is empty"):
        load_preferences(path, columns={"prompt": "question"})


def test_hh_prompt_is_the_shared_dialogue_up_to_the_last_assistant_turn(tmp_path):
    prefix = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant:"
    rows = [
        {"chosen": prefix + " Why did the chicken cross the road? ", "rejected": prefix + " No."},
        {"chosen": "\n\nHuman: Rob a bank?\n\nAssistant:",
         "rejected": "\n\nHuman: Rob a bank?\n\nAssistant: Sure."},
        {"chosen": "\n\nHuman: Q\n\nAssistant: Same", "rejected": "\n\nHuman: Q\n\nAssistant:  Same "},
    ]
    pairs, report = load_preferences(write_jsonl(tmp_path / "hh.jsonl", rows))
    assert pairs.to_list() == [
        {"prompt": prefix, "chosen": "Why did the chicken cross the road?", "rejected": "No."},
        {"prompt": "\n\nHuman: Rob a bank?\n\nAssistant:", "chosen": "", "rejected": "Sure."},
    ]
    assert report.dropped == {"tie": 1}


def test_hh_responses_may_contain_later_turns(tmp_path):
    prefix = "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant:"
    rows = [{"chosen": prefix + " D\n\nHuman: E\n\nAssistant: F", "rejected": prefix + " G"}]
    pairs, _ = load_preferences(write_jsonl(tmp_path / "hh.jsonl", rows), layout="hh")
    assert pairs[0] == {"prompt": prefix, "chosen": "D\n\nHuman: E\n\nAssistant: F", "rejected": "G"}


@pytest.mark.parametrize("chosen, rejected", [
    ("\n\nHuman: A\n\nAssistant: x", "\n\nHuman: B\n\nAssistant: y"),
    ("\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: x",
     "\n\nHuman: A\n\nAssistant: B\n\nHuman: D\n\nAssistant: y"),
])
def test_hh_dialogues_that_do_not_share_the_prompt_are_an_error(tmp_path, chosen, rejected):
    good = {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: A\n\nAssistant: y"}
    path = write_jsonl(tmp_path / "hh.jsonl", [good, {"chosen": chosen, "rejected": rejected}])
    message = r"hh\.jsonl, row 1, field 'chosen': chosen and rejected do not share the dialogue"
    with pytest.raises(DataError, match=message) as info:
        load_preferences(path)
    assert info.value.row == 1


def test_hh_real_sample_loads_every_pair():
    if not HH_SAMPLE.is_file():
        pytest.skip(f"../shared/data is absent: {HH_SAMPLE} not found")
    pairs, report = load_preferences(str(HH_SAMPLE))
    assert (len(pairs), report.rows_read, report.dropped) == (1156, 1156, {})
    assert pairs.column_names == ["prompt", "chosen", "rejected"]
    assert all(prompt.strip() and prompt.endswith("Assistant:") for prompt in pairs["prompt"])
    assert all(prompt.startswith("\n\nHuman:") for prompt in pairs["prompt"])


def messages(user, reply):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


RENDERED = "\n\nHuman: Name a colour\n\nAssistant:"  # the one rendering of [user: "Name a colour"]


def test_ufc_takes_the_final_assistant_message_and_renders_the_turns_before_it(tmp_path):
    rows = [{"prompt": "Name a colour", "chosen": messages("Name a colour", "Blue"),
             "rejected": messages("Name a colour", "Seven")}]
    pairs, _ = load_preferences(write_jsonl(tmp_path / "ufc.jsonl", rows))
    assert pairs.to_list() == [{"prompt": RENDERED, "chosen": "Blue", "rejected": "Seven"}]
    no_prompt = [{key: row[key] for key in ("chosen", "rejected")} for row in rows]
    pairs, _ = load_preferences(write_jsonl(tmp_path / "ufc2.jsonl", no_prompt), layout="ufc")
    assert pairs[0]["prompt"] == RENDERED


def test_a_dialogue_as_messages_and_as_an_hh_transcript_is_one_prompt(tmp_path):
    turns = [("user", "Hi"), ("assistant", "Hello! How can I help?"), ("system", "Be brief."),
             ("user", "Name a colour")]
    conversation = [{"role": role, "content": content} for role, content in turns]
    transcript = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nSystem: Be brief.\n\nHuman: Name a colour" \
                 "\n\nAssistant:"
    hh = [{"chosen": transcript + " Blue", "rejected": transcript + " Seven"}]
    as_messages = [{"chosen": [*conversation, {"role": "assistant", "content": "Blue"}],
                    "rejected": [*conversation, {"role": "assistant", "content": "Seven"}]}]
    trl_conversational = [{"prompt": conversation, "chosen": [{"role": "assistant", "content": "Blue"}],
                           "rejected": [{"role": "assistant", "content": "Seven"}]}]
    loaded = [load_preferences(write_jsonl(tmp_path / f"{i}.jsonl", rows))[0].to_list()
              for i, rows in enumerate((hh, as_messages, trl_conversational))]
    assert loaded[0] == loaded[1] == loaded[2] == [{"prompt": transcript, "chosen": "Blue", "rejected": "Seven"}]


def test_a_message_with_an_unknown_role_is_an_error_naming_it(tmp_path):
    rows = [{"chosen": [{"role": "bot", "content": "Hi"}, {"role": "assistant", "content": "a"}],
             "rejected": messages("Hi", "b")}]
    with pytest.raises(DataError, match=r"row 0, field 'chosen': chosen\[0\]\.role is 'bot'"):
        load_preferences(write_jsonl(tmp_path / "ufc.jsonl", rows))


def overall(prompt, chosen, rejected, score_chosen, score_rejected, form):
    """A row of trl-lib/ultrafeedback_binarized, its responses plain strings or message lists."""
    if form == "messages":
        chosen, rejected = messages(prompt, chosen), messages(prompt, rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "score_chosen": score_chosen,
            "score_rejected": score_rejected, "source_index": 7}


def overall_rows(form):
    return [overall("Name a colour", "Blue", "Seven", 8.5, 3, form),
            overall("2+2?", "4", "four", 7.0, 7.0, form),  # a tie: equal scores
            overall("Capital of Peru?", "Cusco", "Lima", 4.0, 6.5, form),  # chosen below rejected: kept
            overall("Say nothing", "", "Nothing.", 2.0, 1.0, form)]  # an empty response was rated: kept


@pytest.mark.parametrize("form", ["strings", "messages"])
def test_ufc_overall_scores_are_one_aspect_and_equal_scores_a_tie(tmp_path, form):
    pairs, report = load_preferences(write_jsonl(tmp_path / "ufc.jsonl", overall_rows(form)))
    rendered = (lambda p: p) if form == "strings" else (lambda p: f"\n\nHuman: {p}\n\nAssistant:")
    assert pairs.to_list() == [
        {"prompt": rendered("Name a colour"), "chosen": "Blue", "rejected": "Seven", "scores_chosen": [8.5],
         "scores_rejected": [3.0]},
        {"prompt": rendered("Capital of Peru?"), "chosen": "Cusco", "rejected": "Lima", "scores_chosen": [4.0],
         "scores_rejected": [6.5]},
        {"prompt": rendered("Say nothing"), "chosen": "", "rejected": "Nothing.", "scores_chosen": [2.0],
         "scores_rejected": [1.0]},
    ]
    assert all(len(scores) == len(pyro_vrm.data.ULTRAFEEDBACK_OVERALL) == 1 for scores in pairs["scores_chosen"])
    assert (report.rows_read, report.pairs_kept, report.dropped) == (4, 3, {"tie": 1})


@pytest.mark.parametrize("form", ["strings", "messages"])
def test_ufc_strict_makes_a_tie_an_error_naming_the_row(tmp_path, form):
    path = write_jsonl(tmp_path / "ufc.jsonl", overall_rows(form))
    message = r"ufc\.jsonl, row 1: a 'tie' drop: score_chosen equals score_rejected; strict=True"
    with pytest.raises(DataError, match=message) as info:
        load_preferences(path, strict=True)
    assert info.value.row == 1
    same_text = [overall("p", "a", "a", 9.0, 2.0, form)]  # unequal scores, one response: a tie too
    path = write_jsonl(tmp_path / "same.jsonl", overall_rows(form)[:1] + same_text)
    with pytest.raises(DataError, match=r"row 1: a 'tie' drop: chosen and rejected are the same response"):
        load_preferences(path, strict=True)
    assert load_preferences(path)[1].dropped == {"tie": 1}


@pytest.mark.parametrize("form", ["strings", "messages"])
@pytest.mark.parametrize("field", ["score_chosen", "score_rejected"])
@pytest.mark.parametrize("score", [11, 0.5, 10.01, 0, -3, float("nan"), float("inf"), None, True])
def test_ufc_overall_score_outside_1_to_10_is_an_error_naming_the_field(tmp_path, form, field, score):
    bad = overall("p", "a", "b", 9.0, 2.0, form) | {field: score}
    path = write_jsonl(tmp_path / "ufc.jsonl", overall_rows(form)[:1] + [bad])
    with pytest.raises(DataError, match=rf"ufc\.jsonl, row 1, field '{field}': must be an overall score, .* 1\.\.10"):
        load_preferences(path)


def test_ufc_overall_score_given_as_text_is_an_error(tmp_path):
    # alone in its file: datasets would decode a "8" beside numbers in the same column as JSON, to 8
    path = write_jsonl(tmp_path / "ufc.jsonl", [overall("p", "a", "b", "8", 2.0, "strings")])
    with pytest.raises(DataError, match=r"row 0, field 'score_chosen': must be an overall score, .* got '8'"):
        load_preferences(path)


def test_ufc_scores_at_the_ends_of_the_range_are_kept(tmp_path):
    path = write_jsonl(tmp_path / "ufc.jsonl", [overall("p", "a", "b", 10, 1, "strings")])
    assert load_preferences(path)[0]["scores_chosen"] == [[10.0]]


def test_ufc_one_score_without_the_other_is_an_error(tmp_path):
    row = overall("p", "a", "b", 9.0, 2.0, "strings")
    del row["score_rejected"]
    with pytest.raises(DataError, match="'score_rejected': score_chosen is given without score_rejected"):
        load_preferences(write_jsonl(tmp_path / "ufc.jsonl", [row]))


def test_ufc_plain_string_responses_need_the_prompt_column(tmp_path):
    row = overall("p", "a", "b", 9.0, 2.0, "strings")
    del row["prompt"]
    with pytest.raises(DataError, match="row 0, field 'chosen': is a plain string or a lone reply, so the prompt must be"):
        load_preferences(write_jsonl(tmp_path / "ufc.jsonl", [row]))


def test_trl_ultrafeedback_binarized_hub_columns_are_detected(monkeypatch):
    hub = [{key: row[key] for key in ("chosen", "rejected", "score_chosen", "score_rejected")}
           for row in overall_rows("messages")]  # its hub layout: message lists, no prompt column
    monkeypatch.setattr(datasets, "load_dataset", lambda path, split: datasets.Dataset.from_list(hub))
    pairs, report = load_preferences("trl-lib/ultrafeedback_binarized")
    assert pairs[0] == {"prompt": RENDERED, "chosen": "Blue", "rejected": "Seven",
                        "scores_chosen": [8.5], "scores_rejected": [3.0]}
    assert (report.rows_read, report.pairs_kept, report.dropped) == (4, 3, {"tie": 1})


def test_ultrafeedback_binarized_real_sample():
    if not UF_SAMPLE.is_file():
        pytest.skip(f"../shared/data is absent: {UF_SAMPLE} not found")
    with gzip.open(UF_SAMPLE, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    equal_scores = sum(row["score_chosen"] == row["score_rejected"] for row in rows)
    # the loader also drops a pair of one response twice as a tie, whatever its scores (3 such rows)
    same_response = sum(row["chosen"] == row["rejected"] and row["score_chosen"] != row["score_rejected"]
                        for row in rows)
    pairs, report = load_preferences(str(UF_SAMPLE))
    assert (report.rows_read, len(rows)) == (1000, 1000)
    assert report.pairs_kept + report.dropped["tie"] == 1000 and set(report.dropped) == {"tie"}
    assert report.dropped["tie"] == equal_scores + same_response
    assert pairs.column_names == ["prompt", "chosen", "rejected", "scores_chosen", "scores_rejected"]
    assert all(len(c) == len(r) == 1 for c, r in zip(pairs["scores_chosen"], pairs["scores_rejected"]))
    assert all(1 <= c[0] <= 10 and 1 <= r[0] <= 10 for c, r in zip(pairs["scores_chosen"], pairs["scores_rejected"]))


def test_ufc_last_message_must_be_the_assistants(tmp_path):
    rows = [{"prompt": "p", "chosen": messages("p", "a"), "rejected": messages("p", "b")[:1]}]
    with pytest.raises(DataError, match=r"row 0, field 'rejected\[-1\]\.role'"):
        load_preferences(write_jsonl(tmp_path / "ufc.jsonl", rows))


def completion(response, *ratings):
    aspects = pyro_vrm.data.ULTRAFEEDBACK_ASPECTS
    annotations = {aspect: {"Rating": rating, "Rationale": "..."} for aspect, rating in zip(aspects, ratings)}
    return {"response": response, "annotations": annotations}


ULTRAFEEDBACK = [
    {"instruction": "best vs worst", "completions": [
        completion("mid", "3", "3", "3", "3"), completion("top", "5", "4", "5", "5"),
        completion("low", "1", "2", "1", "1"), completion("low too", "2", "1", "1", "1")]},
    {"instruction": "N/A excluded, ties to the lower index", "completions": [
        completion("na", "N/A", "5", "5", "5"), completion("a", "4", "4", "4", "4"),
        completion("b", "4", "4", "4", "4"), completion("c", "2", "2", "2", "2")]},
    {"instruction": "one rated", "completions": [
        completion("x", "5", "5", "5", "5"), completion("y", "N/A", "1", "1", "1"),
        completion("z", "1", "1", "1")]},
    {"instruction": "all equal", "completions": [
        completion("u", "3", "3", "3", "3"), completion("v", "4", "2", "3", "3")]},
]


def test_ultrafeedback_pairs_best_against_worst(tmp_path):
    pairs, report = load_preferences(write_jsonl(tmp_path / "uf.jsonl", ULTRAFEEDBACK), num_aspects=4)
    assert pairs.to_list() == [
        {"prompt": "best vs worst", "chosen": "top", "rejected": "low",
         "scores_chosen": [5.0, 4.0, 5.0, 5.0], "scores_rejected": [1.0, 2.0, 1.0, 1.0]},
        {"prompt": "N/A excluded, ties to the lower index", "chosen": "a", "rejected": "c",
         "scores_chosen": [4.0] * 4, "scores_rejected": [2.0] * 4},
    ]
    assert report.rows_read == 4 and report.pairs_kept == 2
    assert report.dropped == {"completion_with_na_rating": 3, "fewer_than_two_rated_completions": 1, "tie": 1}
    assert "completion_with_na_rating=3" in str(report)


@pytest.mark.parametrize("rating", ["7", "0", "good", "nan", ["4"]])
def test_ultrafeedback_rating_outside_1_to_5_is_an_error(tmp_path, rating):
    rows = ULTRAFEEDBACK[:1] + [{"instruction": "i", "completions": [
        completion("a", "5", "5", "5", "5"), completion("b", "1", "1", rating, "1")]}]
    with pytest.raises(DataError, match=r"row 1, field 'completions\[1\]\.annotations\.honesty\.Rating'"):
        load_preferences(write_jsonl(tmp_path / "uf.jsonl", rows))


def test_ultrafeedback_rating_outside_1_to_5_is_an_error_beside_an_na_rating(tmp_path):
    rows = [{"instruction": "i", "completions": [
        completion("a", "5", "5", "5", "5"), completion("b", "N/A", "1", "9", "1")]}]
    with pytest.raises(DataError, match=r"row 0, field 'completions\[1\]\.annotations\.honesty\.Rating'"):
        load_preferences(write_jsonl(tmp_path / "uf.jsonl", rows))


@pytest.mark.parametrize("rows, what", [
    pytest.param(PAIRS, r"row 1: a 'tie' drop: chosen and rejected are the same response", id="pairs tie"),
    pytest.param(ULTRAFEEDBACK, r"row 1: a 'completion_with_na_rating' drop: completions \[0\] lack a rating",
                 id="N/A rating"),
    pytest.param([{"instruction": "i", "completions": [completion("x", "5", "5", "5", "5")]}],
                 r"row 0: a 'fewer_than_two_rated_completions' drop", id="one completion"),
    pytest.param(ULTRAFEEDBACK[3:], r"row 0: a 'tie' drop: best and worst completions have the same mean rating 3\.0",
                 id="ultrafeedback tie"),
])
def test_strict_makes_every_drop_an_error_naming_the_row_and_reason(tmp_path, rows, what):
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert load_preferences(path)[1].dropped
    with pytest.raises(DataError, match=rf"p\.jsonl, {what}; strict=True makes every drop an error"):
        load_preferences(path, strict=True)


def test_ultrafeedback_has_four_aspects(tmp_path):
    with pytest.raises(DataError, match=r"row 0, field 'scores_chosen': has 4 aspect scores, expected 3"):
        load_preferences(write_jsonl(tmp_path / "uf.jsonl", ULTRAFEEDBACK), num_aspects=3)


def scored(**fields):
    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    return row | {"scores_chosen": [1.0, 2.0], "scores_rejected": [1.0, 1.0]} | fields


BAD_ROWS = [  # (bad row, load_preferences kwargs, field named, what the message says)
    pytest.param(scored(prompt=""), {}, "prompt", "is empty", id="empty prompt"),
    pytest.param(scored(chosen=" \n\t"), {}, "chosen", "is empty", id="whitespace response"),
    pytest.param(scored(rejected=3), {}, "rejected", "must be a string, got int", id="non-string response"),
    pytest.param(scored(scores_chosen=[1.0, float("nan")]), {}, "scores_chosen", "aspect 1 is nan",
                 id="NaN score"),
    pytest.param(scored(scores_rejected=[float("-inf"), 1.0]), {}, "scores_rejected", "aspect 0 is -inf",
                 id="infinite score"),
    pytest.param(scored(scores_chosen=[1.0, 2.0, 3.0]), {}, "scores_chosen",
                 r"has 3 .* expected 2 \(from row 0\)", id="aspects differ between rows"),
    pytest.param(scored(scores_chosen=[1.0, 2.0, 3.0], scores_rejected=[1.0, 1.0, 1.0]), {"num_aspects": 2},
                 "scores_chosen", r"has 3 .* expected 2 \(from num_aspects\)",
                 id="aspects differ from num_aspects"),
    pytest.param(scored(scores_rejected=[1.0]), {}, "scores_rejected", "has 1 aspect",
                 id="chosen and rejected aspects differ"),
    pytest.param(scored(scores_chosen=[1.0, 6.0]), {"score_range": (1, 5)}, "scores_chosen",
                 r"aspect 1 is 6.0, outside the range \[1, 5\]", id="score outside score_range"),
    pytest.param(scored(scores_chosen="high"), {}, "scores_chosen", "must be a list of numbers",
                 id="score not a list"),
]


@pytest.mark.parametrize("bad, kwargs, field, what", BAD_ROWS)
def test_an_invalid_row_is_an_error_naming_file_row_and_field(tmp_path, bad, kwargs, field, what):
    path = write_jsonl(tmp_path / "bad.jsonl", [scored(), scored(), bad])
    with pytest.raises(DataError, match=rf"bad\.jsonl, row 2, field '{field}': {what}") as info:
        load_preferences(path, **kwargs)
    assert (info.value.row, info.value.field) == (2, field)


def test_scores_chosen_without_scores_rejected(tmp_path):
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "scores_chosen": [1.0]}
    path = write_jsonl(tmp_path / "p.jsonl", [row])
    with pytest.raises(DataError, match="'scores_rejected': scores_chosen is given without scores_rejected"):
        load_preferences(path)


def test_a_missing_required_column_is_named_with_the_columns_present(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a"}])
    with pytest.raises(DataError, match=r"'rejected': required by layout 'pairs'.*\['prompt', 'chosen'\]"):
        load_preferences(path, layout="pairs")
    with pytest.raises(DataError, match=r"cannot tell the layout.*\['prompt', 'chosen'\]"):
        load_preferences(path)


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.jsonl.gz"])
def test_a_malformed_json_line_is_named(tmp_path, name):
    path = tmp_path / name
    lines = [json.dumps(PAIRS[0]), json.dumps(PAIRS[1]), "", '{"prompt": "p", "chosen": ', json.dumps(PAIRS[2])]
    text = "\n".join(lines) + "\n"
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    with pytest.raises(DataError, match=rf"{name}, row 2, line 4: malformed JSON line"):
        load_preferences(str(path))


def test_a_malformed_json_document_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "p", "chosen": "a", "rejected": "b"},\n  {"prompt": "p" "chosen": "a"}\n]')
    with pytest.raises(DataError, match=r"bad\.json, line 3: malformed JSON"):
        load_preferences(str(path))


def test_hub_ids_go_to_load_dataset_and_missing_files_do_not(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(path, *args, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list(PAIRS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pairs, report = load_preferences("allenai/reward-bench", split="filtered")
    assert calls == [("allenai/reward-bench", {"split": "filtered"})]
    assert pairs.to_list() == KEPT and report.source == "allenai/reward-bench"
    with pytest.raises(DataError, match="missing.jsonl: no such file"):
        load_preferences(str(tmp_path / "missing.jsonl"))
    (tmp_path / "notes.txt").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match="notes.txt: unknown file type"):
        load_preferences(str(tmp_path / "notes.txt"))
    assert len(calls) == 1


def test_the_report_is_logged(tmp_path, caplog):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    with caplog.at_level(logging.INFO, logger="pyro_vrm.data"):
        load_preferences(path)
    assert f"{path}: 3 rows read, 2 pairs kept, dropped tie=1" in caplog.messages


def test_no_pairs_still_have_the_output_types(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "a", "scores_chosen": [1], "scores_rejected": [2]}]
    pairs, report = load_preferences(write_jsonl(tmp_path / "ties.jsonl", rows))
    assert len(pairs) == 0 and report.dropped == {"tie": 1}
    assert pairs.features == datasets.Features({
        **{name: datasets.Value("string") for name in ("prompt", "chosen", "rejected")},
        **{name: datasets.Sequence(datasets.Value("float64")) for name in ("scores_chosen", "scores_rejected")}})


def test_load_report_str():
    assert str(LoadReport("x", 2, 2)) == "x: 2 rows read, 2 pairs kept, dropped nothing"


def test_docstring_examples_run():
    result = doctest.testmod(pyro_vrm.data)
    assert result.attempted >= 3 and result.failed == 0


@pytest.mark.parametrize("name", ["prefs.jsonl", "prefs.json", "prefs.csv", "prefs.jsonl.gz"])
@pytest.mark.parametrize("text", ["", "\n\n"])
def test_an_empty_file_is_a_data_error_naming_it(tmp_path, name, text):
    path = tmp_path / name
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text)
    with pytest.raises(DataError, match=rf"^{path}: is empty: no rows to read$"):
        load_preferences(str(path))


def test_the_report_lists_only_drop_reasons_that_occurred(tmp_path):
    rated = {a: {"Rating": "4"} for a in pyro_vrm.data.ULTRAFEEDBACK_ASPECTS}
    row = {"instruction": "i", "completions": [{"response": "a", "annotations": rated},
                                               {"response": "b", "annotations": rated | {"honesty": {"Rating": "2"}}}]}
    _, report = load_preferences(write_jsonl(tmp_path / "uf.jsonl", [row]))
    assert report.dropped == {} and str(report).endswith("dropped nothing")


def test_a_malformed_json_line_is_our_one_line_on_stderr(tmp_path, capfd, monkeypatch):
    for handler in logging.getLogger("datasets").handlers:  # made at import, inside pytest's own capture:
        monkeypatch.setattr(handler, "stream", sys.__stderr__)  # write to fd 2, as outside pytest
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + '\n{"prompt": "p", "chosen": \n')  # datasets logs an error on this one
    before = datasets.utils.logging.get_verbosity()
    datasets.utils.logging.set_verbosity_info()  # louder than the default, so that restoring it is tested
    try:
        with pytest.raises(DataError) as info:
            load_preferences(str(path))
        after = datasets.utils.logging.get_verbosity()
    finally:
        datasets.utils.logging.set_verbosity(before)
    err = capfd.readouterr().err
    assert "Failed to load JSON" not in err, err
    assert err == "", err  # nor a progress bar: the DataError is all the user sees
    assert str(info.value).startswith(f"{path}, row 1, line 2: malformed JSON line")
    assert (info.value.source, info.value.row, info.value.line) == (str(path), 1, 2)
    assert after == datasets.logging.INFO


def test_reading_a_local_file_sends_the_hub_nothing(tmp_path, monkeypatch):
    # load_dataset reports each load to the hub unless told not to; where the hub is out of reach
    # that request stalls every read by seconds
    requests = []

    class Session:
        def head(self, url, **kwargs):
            requests.append(url)

    monkeypatch.setattr(datasets.load, "get_session", Session)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    pairs, _ = load_preferences(write_jsonl(tmp_path / "p.jsonl", PAIRS))
    assert len(pairs) > 0 and requests == []
    assert datasets.config.HF_UPDATE_DOWNLOAD_COUNTS is True  # restored for the caller's own loads
    datasets.load.increase_load_count("json")  # the check has power: outside our reads it does request
    assert len(requests) == 1
