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

    def select(self, rows: slice) -> "PromptBatch":
        """A contiguous part of the batch."""
        return PromptBatch(self.texts[rows], None if self.labels is None else self.labels[rows])

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


PROMPT_KEYS = ("Prompts", "Prompt", "prompt", "caption", "text")  # DrawBench, ours, Pick-a-Pic, others


def _record_prompt(rec) -> str:
    if isinstance(rec, str):
        return rec
    key = next(k for k in PROMPT_KEYS if k in rec)
    return rec[key]


def _json_prompts(path: Path, raw: str) -> list[tuple[int, str]]:
    """A JSON list of prompts (HPDv2's benchmark files), of records with a prompt/caption key, or a
    mapping of such lists (prompt files grouped by category, as in the AM repository)."""
    try:
        data = json.loads(raw)
        if isinstance(data, dict):
            data = [item for group in data.values() for item in (group if isinstance(group, list) else [group])]
        return [(i + 1, _record_prompt(rec)) for i, rec in enumerate(data)]
    except (json.JSONDecodeError, KeyError, TypeError, StopIteration):
        raise PromptError(f"prompt file {path}: expected a JSON list of prompts (strings or objects with a "
                          f"'prompt' or 'caption' key), or a mapping of such lists") from None


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a user file: .txt (one a line, '#' comments), .jsonl ({"prompt"|"caption": ...}
    a line), .json (a list, see `_json_prompts`), or .csv with a Prompt, prompt, caption or text
    column (DrawBench; Pick-a-Pic's captions exported to CSV)."""
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
        col = next((c for c in PROMPT_KEYS if rows and c in rows[0]), None)
        if col is None:
            raise PromptError(f"prompt file {path}: CSV needs one of the columns {', '.join(PROMPT_KEYS)}")
        prompts = [(i + 2, r[col]) for i, r in enumerate(rows)]
    elif path.suffix == ".json":
        prompts = _json_prompts(path, raw)
    else:
        for i, line in enumerate(raw.splitlines(), 1):
            line = line.strip()
            if not line or (path.suffix != ".jsonl" and line.startswith("#")):
                continue
            if path.suffix == ".jsonl":
                try:
                    line = _record_prompt(json.loads(line))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise PromptError(f"{path}:{i}: not a JSON object with a 'prompt' or 'caption' key") from None
            prompts.append((i, line))
    out = []
    for i, text in prompts:
        if not isinstance(text, str) or not text.strip() or any(ord(c) < 32 for c in text):
            raise PromptError(f"{path}:{i}: empty prompt or control characters in {text!r}")
        out.append(text.strip())
    if not out:
        raise PromptError(f"prompt file {path} holds no prompts")
    return out


def prepare(src, out_dir: str | Path, domain: str = "digits", eval_per_label: int = 1,
            eval_fraction: float = 0.2, seed: int = 0, eval_src=None) -> tuple[Path, Path]:
    """Parse `src` (one file or several) and write `train.jsonl` and `eval.jsonl` under out_dir.
    With `eval_src` (files), those prompts are the eval split and `src` the training split (minus
    any prompt also in `eval_src`). Otherwise, with labels, the eval split takes `eval_per_label`
    prompts of every label (so every class is evaluated); without, a fixed-seed `eval_fraction` of
    the prompts. Each record gets its own sampling seed."""
    if domain not in LABELLERS:
        raise PromptError(f"unknown prompt domain {domain!r}; expected one of {', '.join(LABELLERS)}")
    srcs = [src] if isinstance(src, (str, Path)) else list(src)
    eval_texts = list(dict.fromkeys(t for f in (eval_src or []) for t in read_prompt_file(f)))
    texts = list(dict.fromkeys(t for f in srcs for t in read_prompt_file(f)))  # drop duplicates, keep order
    if eval_texts:
        held = set(eval_texts)
        texts = [t for t in texts if t not in held] + eval_texts
        if len(texts) == len(eval_texts):
            raise PromptError(f"{', '.join(map(str, srcs))}: no training prompt left after removing the eval prompts")
    labeller = LABELLERS[domain]
    try:
        records = [{"prompt": t, **({"label": labeller(t)} if labeller else {})} for t in texts]
    except PromptError as e:
        raise PromptError(f"{src}: {e}") from None
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    if eval_texts:
        eval_idx = set(range(len(texts) - len(eval_texts), len(texts)))
    elif labeller:
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
