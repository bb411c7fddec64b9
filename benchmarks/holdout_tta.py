"""Choose submit's TTA on the hold-out, never on the test tiles: each finished run's checkpoint predicts
its own hold-out tiles once per TTA mode, through submit's prediction path, and the modes are compared fold
by fold.

Point it at finished projects: a kedro project folder (its ``data/05_model_input/val_manifest.json`` and the
newest version of ``data/06_models/<stage>_checkpoint.pt``), or a folder of them, such as the work folder that
``python -m benchmarks.rs8_sweep --folds K --keep`` leaves (one project per fold)::

    python -m benchmarks.holdout_tta /tmp/rs8_sweep_abc123 --tta none flip > tta.json

The record gives each project's hold-out mIoU / FWIoU per mode, and over the projects the mean and sd of each
mode and of each mode's paired difference from the first one: with K grouped folds, the folds differ far more
from each other than two modes on one fold do, so the paired difference is the figure to choose on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import cpu_model, loadavg, mean_sd
from naic_seg.core.checkpoint import load_checkpoint
from naic_seg.core.data import read_label
from naic_seg.core.labels import ClassTable
from naic_seg.core.metrics import confusion_matrix, scores
from naic_seg.core.predict import TTA_MODES, PredictConfig, predict_manifest

MANIFEST = Path("data/05_model_input/val_manifest.json")


def find_projects(paths: list[Path]) -> list[Path]:
    """The finished projects at or directly under each path, in name order."""
    found: list[Path] = []
    for path in paths:
        if (path / MANIFEST).is_file():
            found.append(path)
        else:
            found.extend(sorted(p for p in path.iterdir() if (p / MANIFEST).is_file()))
    if not found:
        raise FileNotFoundError(f"no project with {MANIFEST} at or under {', '.join(map(str, paths))}")
    return found


def newest_checkpoint(project: Path, stage: str) -> Path:
    """The newest version of a Kedro-versioned checkpoint (``<name>.pt/<timestamp>/<name>.pt``)."""
    root = project / "data" / "06_models" / f"{stage}_checkpoint.pt"
    versions = sorted(root.glob(f"*/{root.name}"))
    if not versions:
        raise FileNotFoundError(f"no version of {root}")
    return versions[-1]


def score_mode(manifest: list[dict], checkpoint: dict, cfg: PredictConfig, classes: ClassTable) -> dict:
    """Hold-out scores of one checkpoint under one prediction config, and the seconds it took."""
    labels = {Path(e["filename"]).stem: e["ann"]["seg_map"] for e in manifest}
    n = classes.num_classes
    cm = torch.zeros(n, n, dtype=torch.int64)
    start = time.perf_counter()
    for tile_id, pred in predict_manifest(manifest, [checkpoint], cfg, classes):
        truth = torch.from_numpy(classes.to_index(read_label(labels[tile_id])))
        cm += confusion_matrix(torch.from_numpy(pred.astype(np.int64)), truth, n)
    seconds = time.perf_counter() - start
    result = scores(cm, classes.names)
    return {"mIoU": result["mIoU"], "FWIoU": result["FWIoU"], "seconds": round(seconds, 2)}


def summarise(projects: list[dict], modes: list[str]) -> dict:
    base = modes[0]
    out = {}
    for mode in modes:
        values = [p["modes"][mode]["mIoU"] for p in projects]
        diffs = [p["modes"][mode]["mIoU"] - p["modes"][base]["mIoU"] for p in projects]
        out[mode] = {"mIoU": mean_sd(values), f"minus_{base}": mean_sd(diffs)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", type=Path, help="finished projects, or folders of them")
    ap.add_argument("--tta", nargs="+", default=["none", "flip"], choices=TTA_MODES, help="first: the base")
    ap.add_argument("--stage", default="stage2", choices=["stage1", "stage2"])
    ap.add_argument("--engine", default="torch", help="one engine for every mode (auto would time them)")
    ap.add_argument("--mode", default="auto", help="submit's mode: resize | slide | auto")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON record to this file")
    args = ap.parse_args(argv)
    records = []
    for project in find_projects(args.paths):
        manifest = json.loads((project / MANIFEST).read_text())
        ckpt_path = newest_checkpoint(project, args.stage)
        checkpoint = load_checkpoint(ckpt_path)
        classes = ClassTable.from_config(checkpoint["classes"])  # the table it was trained on
        modes = {}
        for tta in args.tta:
            cfg = PredictConfig(
                tta=tta, mode=args.mode, engine=args.engine, batch_size=args.batch_size, workers=args.workers
            )
            modes[tta] = score_mode(manifest, checkpoint, cfg, classes)
            print(f"[holdout_tta] {project.name} {tta}: {modes[tta]}", file=sys.stderr, flush=True)
        records.append(
            {"project": project.name, "checkpoint": str(ckpt_path), "tiles": len(manifest), "modes": modes}
        )
    doc = {
        "benchmark": "holdout_tta",
        "command": "python -m benchmarks.holdout_tta " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpu": cpu_model(), "loadavg_end": loadavg()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("paths", "out")},
        "projects": records,
        "summary": summarise(records, args.tta),
    }
    text = json.dumps(doc, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
