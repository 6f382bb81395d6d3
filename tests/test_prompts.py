"""Prompt files: parsing, the labels of digit prompts, train/eval splits, and one-line errors."""
import json

import pytest

from eam.prompts import PromptBatch, PromptError, digit_label, load_prompt_set, prepare, read_prompt_file


@pytest.mark.parametrize("text,label", [("a handwritten 7", 7), ("the digit seven", 7), ("A BOLD Zero", 0),
                                        ("number 3, written by hand", 3)])
def test_digit_labels(text, label):
    assert digit_label(text) == label


@pytest.mark.parametrize("text", ["a cat", "a 3 next to a 5", "seventy", "one and two"])
def test_prompts_naming_no_or_several_digits_are_rejected(text):
    with pytest.raises(PromptError, match="exactly one digit"):
        digit_label(text)


def test_prepare_puts_every_digit_in_both_splits(tmp_path):
    src = tmp_path / "p.txt"
    src.write_text("# comment\n\n" + "".join(f"a handwritten {d}\nthe digit {d}\na bold {d}\n" for d in range(10)))
    train, ev = prepare(src, tmp_path / "out", "digits", eval_per_label=1, seed=3)
    tr, e = load_prompt_set(train), load_prompt_set(ev)
    assert sorted(r["label"] for r in e) == list(range(10))
    assert sorted({r["label"] for r in tr}) == list(range(10)) and len(tr) == 20
    assert not {r["prompt"] for r in tr} & {r["prompt"] for r in e}
    assert len({r["seed"] for r in tr + e}) == 30
    again = prepare(src, tmp_path / "again", "digits", eval_per_label=1, seed=3)
    assert [p.read_text() for p in again] == [train.read_text(), ev.read_text()]  # fixed seeds: reproducible


def test_bad_prompt_file_names_the_line(tmp_path):
    src = tmp_path / "p.txt"
    src.write_text("a handwritten 1\na picture of a dog\n")
    with pytest.raises(PromptError, match=r"p.txt.*dog.*exactly one digit"):
        prepare(src, tmp_path / "out", "digits")


def test_missing_and_corrupted_files(tmp_path):
    with pytest.raises(PromptError, match="not found"):
        read_prompt_file(tmp_path / "none.txt")
    bad = tmp_path / "eval.jsonl"
    bad.write_text(json.dumps({"prompt": "a 1", "seed": 1, "label": 1}) + "\n{\"prompt\": \n")
    with pytest.raises(PromptError, match=r"eval.jsonl:2: corrupted"):
        load_prompt_set(bad)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(PromptError, match="not UTF-8"):
        read_prompt_file(tmp_path / "bin.txt")


def test_csv_and_jsonl_sources(tmp_path):
    (tmp_path / "d.csv").write_text("Prompt,Category\n\"a red car, parked\",Colors\nan owl,Animals\n")
    assert read_prompt_file(tmp_path / "d.csv") == ["a red car, parked", "an owl"]
    (tmp_path / "d.jsonl").write_text('{"prompt": "an owl"}\n{"prompt": "a fox"}\n')
    assert read_prompt_file(tmp_path / "d.jsonl") == ["an owl", "a fox"]


def test_prompt_batch_repeat_matches_sample_stacking():
    import torch

    b = PromptBatch(["a 1", "a 2"], torch.tensor([1, 2]))
    r = b.repeat(3)
    assert r.texts == ["a 1", "a 2"] * 3 and r.labels.tolist() == [1, 2] * 3


def test_paper_prompt_formats(tmp_path):
    """HPDv2 benchmark JSON (a list), grouped JSON, Pick-a-Pic captions in CSV, DrawBench CSV."""
    (tmp_path / "anime.json").write_text(json.dumps(["a cat in anime style", "a castle"]))
    (tmp_path / "groups.json").write_text(json.dumps({"animals": [{"prompt": "a dog"}], "food": ["a pie"]}))
    (tmp_path / "pick.csv").write_text("caption,best_image_uid\na red fox,1\n\"a bowl, of fruit\",2\n")
    (tmp_path / "drawbench.csv").write_text("Prompts,Category\na blue cube,Colors\n")
    (tmp_path / "other.csv").write_text("title,year\nx,1\n")
    assert read_prompt_file(tmp_path / "anime.json") == ["a cat in anime style", "a castle"]
    assert read_prompt_file(tmp_path / "groups.json") == ["a dog", "a pie"]
    assert read_prompt_file(tmp_path / "pick.csv") == ["a red fox", "a bowl, of fruit"]
    assert read_prompt_file(tmp_path / "drawbench.csv") == ["a blue cube"]
    with pytest.raises(PromptError, match="other.csv.*columns"):
        read_prompt_file(tmp_path / "other.csv")
    (tmp_path / "bad.json").write_text(json.dumps([{"title": "x"}]))
    with pytest.raises(PromptError, match="bad.json: expected a JSON list"):
        read_prompt_file(tmp_path / "bad.json")


def test_separate_eval_files_make_the_eval_split(tmp_path):
    (tmp_path / "train.txt").write_text("a red fox\na bowl of fruit\na castle\n")
    (tmp_path / "eval.json").write_text(json.dumps(["a castle", "a lighthouse"]))
    tr, ev = prepare([tmp_path / "train.txt"], tmp_path / "out", domain="text", eval_src=[tmp_path / "eval.json"])
    train, evals = load_prompt_set(tr), load_prompt_set(ev)
    assert [r["prompt"] for r in train] == ["a red fox", "a bowl of fruit"]
    assert [r["prompt"] for r in evals] == ["a castle", "a lighthouse"]
    assert len({r["seed"] for r in train + evals}) == 4
