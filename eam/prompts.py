"""Prompt sets: user files parsed into one normalised JSONL format with fixed seeds and train/eval
splits, and the `PromptBatch` that conditions a model and a reward.

A prepared set is JSONL, one record a line: {"prompt": str, "seed": int} plus "label": int where
the domain has classes (digits). The same format serves every domain; only the label parser differs.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .io import write_text


class PromptError(ValueError):
    """A prompt file that cannot be used; the message names the file and line."""


@dataclass
class PromptBatch:
    """Prompts of one batch: their texts and, for class-conditional domains, their class labels."""

    texts: list[str]
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def repeat(self, n: int) -> "PromptBatch":
        """The batch stacked n times (matches `x.repeat(n, ...)` of the samples)."""
        return PromptBatch(self.texts * n, None if self.labels is None else self.labels.repeat(n))

    def to(self, device) -> "PromptBatch":
        return PromptBatch(self.texts, None if self.labels is None else self.labels.to(device))

    @classmethod
    def from_records(cls, records: list[dict]) -> "PromptBatch":
        labels = [r.get("label") for r in records]
        return cls([r["prompt"] for r in records],
                   None if any(lab is None for lab in labels) else torch.tensor(labels, dtype=torch.long))


# -- digits: a prompt names one digit --------------------------------------------------------
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_TOKEN = re.compile(r"\b(?:[0-9]|" + "|".join(DIGIT_WORDS) + r")\b")


def digit_label(text: str) -> int:
    """The digit a prompt names, as a numeral or an English word ("a bold 7", "a thin seven")."""
    found = {m if m.isdigit() else str(DIGIT_WORDS.index(m)) for m in _DIGIT_TOKEN.findall(text.lower())}
    if len(found) != 1:
        raise PromptError(f"prompt {text!r} must name exactly one digit (0-9 or zero..nine), found "
                          f"{sorted(found) or 'none'}")
    return int(found.pop())


LABELLERS = {"digits": digit_label, "text": None}


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a user file: .txt (one a line, '#' comments), .jsonl ({"prompt": ...} a line),
    or .csv with a 'Prompt' or 'prompt' column (DrawBench)."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(f"prompt file {path} not found") from None
    except UnicodeDecodeError as e:
        raise PromptError(f"prompt file {path} is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    prompts = []
    if path.suffix == ".csv":
        import csv

        rows = list(csv.DictReader(raw.splitlines()))
        col = next((c for c in ("Prompt", "prompt") if rows and c in rows[0]), None)
        if col is None:
            raise PromptError(f"prompt file {path}: CSV needs a 'Prompt' column")
        prompts = [(i + 2, r[col]) for i, r in enumerate(rows)]
    else:
        for i, line in enumerate(raw.splitlines(), 1):
            line = line.strip()
            if not line or (path.suffix != ".jsonl" and line.startswith("#")):
                continue
            if path.suffix == ".jsonl":
                try:
                    rec = json.loads(line)
                    line = rec["prompt"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise PromptError(f"{path}:{i}: not a JSON object with a 'prompt' key") from None
            prompts.append((i, line))
    out = []
    for i, text in prompts:
        if not isinstance(text, str) or not text.strip() or any(ord(c) < 32 for c in text):
            raise PromptError(f"{path}:{i}: empty prompt or control characters in {text!r}")
        out.append(text.strip())
    if not out:
        raise PromptError(f"prompt file {path} holds no prompts")
    return out


def prepare(src: str | Path, out_dir: str | Path, domain: str = "digits", eval_per_label: int = 1,
            eval_fraction: float = 0.2, seed: int = 0) -> tuple[Path, Path]:
    """Parse `src` and write `train.jsonl` and `eval.jsonl` under out_dir. With labels, the eval
    split takes `eval_per_label` prompts of every label (so every class is evaluated); without,
    a fixed-seed `eval_fraction` of the prompts. Each record gets its own sampling seed."""
    if domain not in LABELLERS:
        raise PromptError(f"unknown prompt domain {domain!r}; expected one of {', '.join(LABELLERS)}")
    texts = list(dict.fromkeys(read_prompt_file(src)))  # drop duplicates, keep order
    labeller = LABELLERS[domain]
    try:
        records = [{"prompt": t, **({"label": labeller(t)} if labeller else {})} for t in texts]
    except PromptError as e:
        raise PromptError(f"{src}: {e}") from None
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    if labeller:
        taken: dict[int, int] = {}
        eval_idx = set()
        for i in order:
            lab = records[i]["label"]
            if taken.get(lab, 0) < eval_per_label:
                taken[lab] = taken.get(lab, 0) + 1
                eval_idx.add(i)
        short = [lab for lab in sorted({r["label"] for r in records})
                 if sum(r["label"] == lab for r in records) <= eval_per_label]
        if short:
            raise PromptError(f"{src}: labels {short} have too few prompts for both splits "
                              f"(need more than {eval_per_label} each)")
    else:
        eval_idx = set(order[: max(1, round(eval_fraction * len(order)))])
    out_dir = Path(out_dir)
    paths = []
    for name, keep in (("train", lambda i: i not in eval_idx), ("eval", lambda i: i in eval_idx)):
        rows = [{**records[i], "seed": seed * 100_003 + i} for i in range(len(records)) if keep(i)]
        write_text(out_dir / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        paths.append(out_dir / f"{name}.jsonl")
    return paths[0], paths[1]


def load_prompt_set(path: str | Path) -> list[dict]:
    """Records of a prepared set; a corrupted or missing file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt set {path} not found; run the prompt-preparation rule (snakemake ... prompts)")
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and isinstance(rec.get("prompt"), str) and isinstance(rec.get("seed"), int) \
                and isinstance(rec.get("label", 0), int)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise PromptError(f"{path}:{i}: corrupted prompt record; re-run the prompt-preparation rule")
        records.append(rec)
    if not records:
        raise PromptError(f"prompt set {path} is empty; re-run the prompt-preparation rule")
    return records
