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
