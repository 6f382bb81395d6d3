"""Shared by the reference scripts: test images, a fake offline Hugging Face cache, the result table.

Nothing here comes from the project or from the reward authors' code: the images are made from
numpy/torch random numbers, the table is plain printing.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

TOL = 1e-5

# (height, width), printed as WxH: square, landscape, portrait, odd sizes both ways, and two that
# are downscaled (so the resize's antialiasing matters); every one is resized by the rewards' transforms.
SIZES = [(64, 64), (48, 96), (80, 48), (77, 33), (33, 77), (256, 256), (200, 300)]

PROMPTS = ["a red fox in the snow",
           "an astronaut riding a horse on mars, highly detailed, trending on artstation, 4k"]


def label(hw) -> str:
    """'WxH' as image sizes are usually written (PIL's order)."""
    return f"{hw[1]}x{hw[0]}"


def smooth_pil_images(n: int, h: int, w: int, seed: int):
    """`n` low-frequency random RGB PIL images of h×w (bilinear upsampling of 6×6 noise, rounded to
    8 bits), as decoded latents look; both scorers get the very same PIL objects."""
    import numpy as np
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=(h, w), mode="bilinear",
                                        align_corners=False).clamp(0, 1)
    arr = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def image_digest(images_for) -> str:
    """SHA-1 over the bytes of every test image, `images_for(k, hw)` for each size of SIZES: the results files
    record it, so that columns from different machines are known to have scored the same images."""
    h = hashlib.sha1()
    for k, hw in enumerate(SIZES):
        for im in images_for(k, hw):
            h.update(im.tobytes())
    return h.hexdigest()


def fake_hf_snapshot(cache: Path, repo_id: str, files: dict[str, Path | str | bytes]) -> Path:
    """Lay out `files` as a cached snapshot of model repo `repo_id` in the Hugging Face hub cache at
    `cache` (models--org--name/refs/main + snapshots/<revision>/), so that `hf_hub_download` and
    `from_pretrained(repo_id)` resolve them offline (HF_HUB_OFFLINE=1), as they would the real files."""
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    root = cache / ("models--" + repo_id.replace("/", "--"))
    snap = root / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    for name, src in files.items():
        dst = snap / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            dst.write_bytes(src)
        elif isinstance(src, Path) and src.is_dir():
            shutil.copytree(src, dst)
        elif isinstance(src, Path):
            shutil.copyfile(src, dst)
        else:
            dst.write_text(src)
    return snap


def offline_hf(cache: Path):
    """Point the Hugging Face libraries at `cache` and forbid network access (call before importing them)."""
    os.environ["HF_HUB_CACHE"] = str(cache)
    os.environ["HF_HOME"] = str(cache.parent / "hf_home")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def versions(names) -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = [f"python {platform.python_version()}"]
    for n in names:
        try:
            out.append(f"{n} {version(n)}")
        except PackageNotFoundError:
            out.append(f"{n} (not installed)")
    return ", ".join(out)


def report(title: str, rows, columns=("project", "reference"), extra_note: str = "") -> int:
    """Print rows (size label, image index, prompt index or '-', {column: score}) as a table with
    |diff| of every other column against the last one (the reference), the max |diff| per image
    size and column and overall; return the exit status (1 if any |diff| > TOL or is not finite)."""
    import math

    ref = columns[-1]
    others = columns[:-1]
    head = f"{'size (WxH)':>10} {'img':>3} {'prompt':>6} " + " ".join(f"{c:>22}" for c in columns) + \
        " " + " ".join(f"{'|' + c + ' - ref|':>26}" for c in others)
    print(title)
    print(head)
    print("-" * len(head))
    per_size: dict[str, dict[str, float]] = {}
    worst = 0.0
    for size, i, p, scores in rows:
        diffs = []
        for c in others:
            d = abs(float(scores[c]) - float(scores[ref]))
            d = d if math.isfinite(d) else math.inf
            diffs.append(d)
            per_size.setdefault(size, {}).setdefault(c, 0.0)
            per_size[size][c] = max(per_size[size][c], d)
            worst = max(worst, d)
        print(f"{size:>10} {i:>3} {p:>6} " + " ".join(f"{float(scores[c]):>22.10f}" for c in columns) + " " +
              " ".join(f"{d:>26.3e}" for d in diffs))
    print()
    print("max |diff| against the reference, per image size:")
    print(f"  {'size (WxH)':>10} " + " ".join(f"{c:>22}" for c in others))
    for size, d in per_size.items():
        print(f"  {size:>10} " + " ".join(f"{d[c]:>22.3e}" for c in others))
    print(f"max |diff| overall: {worst:.3e}  (tolerance {TOL:g})")
    if extra_note:
        print(extra_note)
    ok = worst <= TOL
    print("PASS" if ok else "FAIL")
    sys.stdout.flush()
    return 0 if ok else 1


def write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=1))


def read_json(path):
    return json.loads(Path(path).read_text())


def project_column() -> str:
    """The column name of the project's scores in this environment: eam/tf<transformers version>."""
    from importlib.metadata import version

    return f"eam/tf{version('transformers')}"


def other_columns(paths, images_sha1: str) -> dict[str, dict]:
    """{column: {key: score}} from --project-only outputs of other environments; they must have
    scored the very same images."""
    out = {}
    for path in paths:
        other = read_json(path)
        if other["images_sha1"] != images_sha1:
            raise SystemExit(f"{path}: scored other images ({other['images_sha1']} != {images_sha1})")
        print(f"column {other['column']!r} from {path}: {other['versions']}")
        out[other["column"]] = other["scores"]
    return out


def score_columns(args, ours: dict) -> tuple[str, dict, list]:
    """The project's column here, the other environments' columns (--project-scores, which must have scored the
    same images) and the table's column order."""
    here = project_column()
    extra = other_columns(args.project_scores, ours["images_sha1"])
    return here, extra, [here, *extra]


def transform_note(pix: dict, rows, whose: str, over: str) -> str:
    """The note under a score table: per image size, the largest pixel gap between the project's transform and
    `whose` _transform(224) (`pix`), and the spread of the reference scores of `rows`."""
    refs = [r[3]["reference"] for r in rows]
    return (f"max |project transform - {whose} _transform(224)| on the pixels, per size: "
            + ", ".join(f"{s} {d:.1e}" for s, d in pix.items())
            + f"\nspread of the reference scores over {over}: {max(refs) - min(refs):.4f}")


def write_project_scores(path, res: dict) -> int:
    """--project-only: the project's scores `res`, with this environment's versions and column name, into `path`."""
    res = {**res, "versions": versions(["torch", "torchvision", "transformers"]), "column": project_column()}
    write_json(path, res)
    print(f"project scores ({len(res['scores'])}) written to {path}")
    return 0


def split_run_args(doc: str, build_help: str, prefix: str):
    """The command line shared by the scripts that build weights in one environment and score the project in
    another: --workdir, --build-only, --project-only, --project-scores. Returns (args, work folder)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--workdir", help="where the weights go (default: a fresh temporary folder)")
    ap.add_argument("--build-only", action="store_true", help=build_help)
    ap.add_argument("--project-only", metavar="OUT.json", help="only score with the project, into OUT.json")
    ap.add_argument("--project-scores", metavar="IN.json", action="append", default=[],
                    help="a --project-only output from another environment, as an extra column")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return args, work
