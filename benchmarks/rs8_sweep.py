"""Run the whole flow on the real rs8 tiles for a set of configurations and collect the results table.

Each configuration is one ``kedro run --env rs8 --params data_root=<rs8>,<overrides>`` in a fresh
throw-away copy of the project (its own data/ and mlflow.db; the project's own are never touched). Per
configuration the JSON records:

* the scores of the submission on the rs8 test tiles (mIoU, FWIoU, per-class IoU: ``submission_metrics``,
  the same numbers the run logs to MLflow as ``submit.test_*``) and the hold-out ``val_mIoU`` of each stage;
* for two-stage runs, the test score of the stage-1 checkpoint of the same run (a second, submit-only
  ``kedro run --pipeline submit --params submit.checkpoints=[stage1]``);
* training seconds and images/s of each stage (from the stage metrics), the wall time of the whole
  ``kedro run`` and peak memory (PSS of the process tree sampled every 0.2 s, and the kernel's
  ``ru_maxrss`` of the kedro process);
* the exact command line, to paste into a shell.

    .venv/bin/python -m benchmarks.rs8_sweep --list
    .venv/bin/python -m benchmarks.rs8_sweep --configs recipe > rs8_recipe.json
    .venv/bin/python -m benchmarks.rs8_sweep --budget short --configs r18-random flips stage1-only
    .venv/bin/python -m benchmarks.rs8_sweep --budget short --folds 5 --configs recipe lite0-192-flips

``--folds K`` scores each configuration on K folds of groups instead of one hold-out: K runs, the hold-out of
run i being fold i (``data_prep.fold={k: K, index: i}``; conf/rs8's groups are rs8's source images), hold-out
only; the record gives each fold's hold-out mIoU, their mean and sample sd. A difference between two rows
smaller than the sd is not a choice.

``--budget full`` runs ``conf/rs8`` as it stands (the recipe: whole flow within 45 minutes on 2 CPUs);
``--budget short`` cuts the iterations so that a configuration takes a few minutes, for comparing settings
and checking the reference team's claims at one budget and seed. Run it alone on the machine: with 2 CPUs,
anything else running slows training several-fold and the times would not be comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import KEDRO_WRAPPER, add_rs8_argument, cpu_model, make_project, mean_sd, run_sampled
from benchmarks._experiments import load_sweep

PROJECT_ROOT = Path(__file__).resolve().parents[1]

S1, S2 = "train_stage1", "train_stage2"

# Iterations (and batch) per budget. conf/rs8 holds the "full" figures; "short" is for comparing settings:
# 400 + 100 iterations of batch 8 (the settings of the sweep that chose conf/rs8's batch 16).
# Stage 2 (stride 8) costs about 2.2x a stage-1 iteration at conf/rs8's batch and size (measured on 2 CPUs:
# 24.7 vs 11.1 img/s), so a stage-1-only run given s1 + 2.2 * s2 iterations spends the same training time.
# "full" 0s: conf/rs8's iterations (or the row's @full_iterations) and batch.
BUDGETS: dict[str, dict[str, int]] = {
    "full": {"s1": 0, "s2": 0, "batch": 0},
    "short": {"s1": 400, "s2": 100, "batch": 8},
    "smoke": {"s1": 4, "s2": 2, "batch": 4},  # the test of this script
}
STAGE2_COST = 2.2  # a stage-2 iteration in stage-1 iterations where a row states no @stage2_cost
ITERATIONS_FACTOR = "@iterations_factor"  # an override key: scales both stages' iterations
STAGE2_COST_KEY = "@stage2_cost"  # an override key: a stage-1-only row's stage-2 cost instead of STAGE2_COST
FULL_ITERATIONS = "@full_iterations"  # an override key: (stage 1, stage 2) iterations of --budget full

# name -> (description, overrides, stage1_only), from benchmarks/experiments/rs8_sweep.yml
CONFIGS = load_sweep()


def _both(key: str, value) -> dict:
    return {f"{S1}.{key}": value, f"{S2}.{key}": value}


def log(msg: str) -> None:
    print(f"[rs8_sweep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _rs8_iterations() -> tuple[int, int]:
    import yaml

    conf = yaml.safe_load((PROJECT_ROOT / "conf" / "rs8" / "parameters_train.yml").read_text())
    return int(conf[S1]["train"]["iterations"]), int(conf[S2]["train"]["iterations"])


def _dotlist_value(value) -> str:
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def config_params(
    name: str, budget: str, rs8: Path, holdout_only: bool = False, fold: tuple[int, int] | None = None
) -> tuple[list[str], dict]:
    """The ``kedro run`` arguments after ``run`` for one configuration, and the overrides used.

    ``fold`` = (K, i): the hold-out is fold i of data_prep's K folds of groups (``data_prep.fold``).
    """
    _, overrides, stage1_only = CONFIGS[name]
    overrides = dict(overrides)
    factor = overrides.pop(ITERATIONS_FACTOR, 1.0)
    stage2_cost = overrides.pop(STAGE2_COST_KEY, STAGE2_COST)
    full_iterations = overrides.pop(FULL_ITERATIONS, None)
    s1, s2 = BUDGETS[budget]["s1"], BUDGETS[budget]["s2"]
    if not s1:
        s1, s2 = full_iterations or _rs8_iterations()
    elif f"{S2}.model.output_stride" not in overrides and _rs8_iterations()[1] == 0:
        s2 = 0  # conf/rs8's stage 2 passes stage 1's model on untrained (iterations: 0), at every budget
    batch = BUDGETS[budget]["batch"]
    params = {"data_root": str(rs8), **(_both("train.batch_size", batch) if batch else {}), **overrides}
    if fold is not None:
        params["data_prep.fold.k"], params["data_prep.fold.index"] = fold
    params[f"{S1}.train.iterations"] = max(1, round(s1 * factor))
    params[f"{S2}.train.iterations"] = max(min(s2, 1), round(s2 * factor))  # 0 stays 0: pass-through
    args = ["--env", "rs8"]
    pipelines = ["data_prep", "train_stage1", "train_stage2", "submit"]
    if stage1_only:
        params[f"{S1}.train.iterations"] = max(1, round((s1 + stage2_cost * s2) * factor))
        params.pop(f"{S2}.train.iterations")
        params["submit.checkpoints"] = "[stage1]"
        pipelines.remove("train_stage2")
    if holdout_only:  # choosing settings: no look at the test tiles
        pipelines.remove("submit")
        params.pop("submit.checkpoints", None)
    if stage1_only or holdout_only:
        args += ["--pipelines", ",".join(pipelines)]
    dotlist = ",".join(
        f"{k}={_dotlist_value(v)}" for k, v in params.items() if k not in file_overrides(params)
    )
    return [*args, "--params", dotlist], params


def file_overrides(params: dict) -> dict:
    """The overrides ``kedro --params`` cannot carry (it splits on commas): lists and mappings. The sweep
    writes them into the run's copy of conf/rs8 instead (``write_file_overrides``)."""
    return {k: v for k, v in params.items() if isinstance(v, list | tuple | dict)}


def write_file_overrides(project: Path, overrides: dict) -> None:
    """Set each dotted key in the project copy's conf/rs8: in the parameters file that holds its top-level
    key, else in a new ``parameters_sweep_<key>.yml`` (one file per top-level key: no duplicates)."""
    import yaml

    conf = project / "conf" / "rs8"
    for key, value in overrides.items():
        top, *path = key.split(".")
        holders = [
            f for f in sorted(conf.glob("parameters*.yml")) if top in (yaml.safe_load(f.read_text()) or {})
        ]
        target = holders[0] if holders else conf / f"parameters_sweep_{top}.yml"
        doc = yaml.safe_load(target.read_text()) if target.exists() else {}
        node = doc.setdefault(top, {})
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = list(value) if isinstance(value, tuple) else value
        target.write_text(yaml.safe_dump(doc, sort_keys=False))


def run_kedro(project: Path, args: list[str], log_path: Path, timeout: float) -> dict:
    rusage_path = log_path.with_suffix(".rusage.json")
    env = dict(os.environ, BENCH_RUSAGE_OUT=str(rusage_path), COLUMNS="400", NO_COLOR="1")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    cmd = [sys.executable, "-c", KEDRO_WRAPPER, "run", *args]
    with open(log_path, "wb") as out:
        returncode, wall, sampler = run_sampled(
            cmd, project, timeout, interval=0.2, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    usage = json.loads(rusage_path.read_text()) if rusage_path.exists() else {}
    text = log_path.read_text(errors="replace")
    return {
        "returncode": returncode,
        "wall_seconds": round(wall, 1),
        "peak_memory_mb": {
            "tree_pss_sampled": round(sampler.peak["tree_pss"] / 1024, 1),
            "kedro_process_maxrss": round(usage["self_maxrss_kb"] / 1024, 1) if usage else None,
        },
        "log_tail": None if returncode == 0 else text[-4000:],
    }


def _scores(path: Path) -> dict | None:
    if not path.exists():
        return None
    m = json.loads(path.read_text())
    if not m.get("evaluated"):
        return None
    return {
        "mIoU": round(m["mIoU"], 4),
        "FWIoU": round(m["FWIoU"], 4),
        "pixel_accuracy": round(m["pixel_accuracy"], 4),
        "per_class_IoU": {k: round(v, 4) for k, v in m["per_class_IoU"].items()},
        "tiles_scored": m["tiles_scored"],
    }


def _stage(path: Path) -> dict | None:
    if not path.exists():
        return None
    m = json.loads(path.read_text())
    return {
        "iterations": m["iteration"],
        "train_seconds": round(m["train_seconds"], 1),
        "images_per_s": round(m["images_per_s"], 2),
        "val_mIoU": round(m["final"]["mIoU"], 4),
        "val_FWIoU": round(m["final"]["FWIoU"], 4),
        "val_per_class_IoU": {
            k: None if v is None else round(v, 4) for k, v in m["final"]["per_class_IoU"].items()
        },
        "val_history": [{"iteration": h["iteration"], "mIoU": round(h["mIoU"], 4)} for h in m["history"]],
    }


def _holdout(path: Path) -> dict | None:
    """The hold-out the run scored on: kind, fold, tiles, and the groups it held out."""
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    holdout = report.get("holdout", {})
    return {
        "kind": holdout.get("kind"),
        "fold": holdout.get("fold"),
        "tiles": report["counts"]["val"],
        "groups": len(holdout["held_out"]) if "held_out" in holdout else None,
        "classes_without_val_pixels": holdout.get("classes_without_val_pixels"),
    }


def run_config(
    name: str,
    budget: str,
    rs8: Path,
    work: Path,
    timeout: float,
    holdout_only: bool = False,
    fold: tuple[int, int] | None = None,
) -> dict:
    run = name if fold is None else f"{name}-fold{fold[1]}of{fold[0]}"
    project = make_project(work / run)
    args, params = config_params(name, budget, rs8, holdout_only, fold)
    in_files = file_overrides(params)
    write_file_overrides(project, in_files)
    log(f"{run}: kedro run {shlex.join(args)}" + (f" with conf/rs8 holding {in_files}" if in_files else ""))
    res = run_kedro(project, args, work / f"{run}.log", timeout)
    reporting = project / "data" / "08_reporting"
    record = {
        "config": name,
        "description": CONFIGS[name][0],
        "budget": budget,
        "command": "kedro run " + shlex.join(args),
        "conf_rs8_overrides": in_files,  # lists and mappings: in the run's copy of conf/rs8, not in --params
        "overrides": {k: v for k, v in params.items() if k != "data_root"},
        **res,
        "stage1": _stage(reporting / "stage1_metrics.json"),
        "stage2": None if CONFIGS[name][2] else _stage(reporting / "stage2_metrics.json"),
        "test": None if holdout_only else _scores(reporting / "submission_metrics.json"),
        "holdout_only": holdout_only,
        "fold": None if fold is None else {"k": fold[0], "index": fold[1]},
        "holdout": _holdout(reporting / "dataset_report.json"),
    }
    stages = [s for s in (record["stage1"], record["stage2"]) if s]
    record["train_seconds"] = round(sum(s["train_seconds"] for s in stages), 1)
    if res["returncode"] == 0 and not CONFIGS[name][2] and not holdout_only:
        # Score the same run's stage-1 checkpoint on the test tiles too (stage 2 vs stage 1).
        extra = [
            "--env",
            "rs8",
            "--pipeline",
            "submit",
            "--params",
            f"data_root={rs8},submit.checkpoints=[stage1]",
        ]
        log(f"{name}: scoring the stage-1 checkpoint: kedro run {shlex.join(extra)}")
        res1 = run_kedro(project, extra, work / f"{name}.stage1_submit.log", timeout)
        record["stage1_checkpoint_test"] = _scores(reporting / "submission_metrics.json")
        record["stage1_checkpoint_test_returncode"] = res1["returncode"]
    t = record["test"] or {}
    log(
        f"{name}: rc={res['returncode']} wall={res['wall_seconds']} s train={record['train_seconds']} s "
        f"test mIoU={t.get('mIoU')} FWIoU={t.get('FWIoU')} peak={res['peak_memory_mb']}"
    )
    return record


def holdout_miou(record: dict) -> float | None:
    """The hold-out mIoU of a run's last stage (stage 2, or stage 1 where it ran alone)."""
    return (record["stage2"] or record["stage1"] or {}).get("val_mIoU")


def fold_summary(name: str, budget: str, folds: list[dict]) -> dict:
    """One configuration over K folds: the hold-out mIoU of each, their mean and sample sd."""
    scores = [holdout_miou(r) if r["returncode"] == 0 else None for r in folds]
    done = [s for s in scores if s is not None]
    return {
        "config": name,
        "description": CONFIGS[name][0],
        "budget": budget,
        "k": len(folds),
        "returncode": next((r["returncode"] for r in folds if r["returncode"] != 0), 0),
        "holdout_mIoU": {**mean_sd(done), "per_fold": scores},
        "train_seconds": round(sum(r["train_seconds"] for r in folds), 1),
        "wall_seconds": round(sum(r["wall_seconds"] for r in folds), 1),
        "commands": [r["command"] for r in folds],
        "folds": folds,
    }


def run_folds(name: str, budget: str, rs8: Path, work: Path, timeout: float, k: int) -> dict:
    """The configuration once per fold of data_prep's K folds of groups, hold-out only (no test tiles)."""
    folds = [run_config(name, budget, rs8, work, timeout, True, (k, i)) for i in range(k)]
    summary = fold_summary(name, budget, folds)
    m = summary["holdout_mIoU"]
    log(f"{name}: {k} folds, hold-out mIoU {m['mean']} +- {m['sd']} ({m['per_fold']})")
    return summary


def paired_difference(record: dict, base: dict | None) -> dict | None:
    """Fold by fold, ``record`` minus ``base`` (the same folds of the same groups): mean and sample sd over
    the folds both scored. The folds differ by scene far more than two rows on one fold do, so this is the
    figure a choice rests on; None without a base of the same budget and K."""
    if base is None or base is record or (base["budget"], base["k"]) != (record["budget"], record["k"]):
        return None
    if _split_keys(record) != _split_keys(base):  # another hold-out (random tiles, another seed): not paired
        return None
    pairs = zip(record["holdout_mIoU"]["per_fold"], base["holdout_mIoU"]["per_fold"], strict=True)
    diffs = [a - b for a, b in pairs if a is not None and b is not None]
    if not diffs:
        return None
    return {**mean_sd(diffs), "folds": len(diffs)}


def _split_keys(record: dict) -> dict:
    """The data_prep overrides of a fold summary's first run: what makes its folds the folds they are."""
    runs = record.get("folds") or [{}]
    return {k: v for k, v in runs[0].get("overrides", {}).items() if k.split(".")[0] == "data_prep"}


def folds_table(records: list[dict], base: str = "recipe") -> str:
    """The table of ``--folds`` summaries: mean +- sd of the hold-out mIoU over the folds, each fold's, and
    the paired difference from the ``base`` row of the same budget and K (where there is one)."""
    rows = [
        "| configuration | budget | folds | hold-out mIoU (mean ± sd) | per fold "
        f"| minus {base}, paired (mean ± sd) | training s (all folds) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    bases = {(r["budget"], r["k"]): r for r in records if r["config"] == base}
    for r in records:
        m = r["holdout_mIoU"]
        mean = "-" if m["mean"] is None else f"{m['mean']:.3f}"
        sd = "-" if m["sd"] is None else f"{m['sd']:.3f}"
        per = " / ".join("-" if s is None else f"{s:.3f}" for s in m["per_fold"])
        d = paired_difference(r, bases.get((r["budget"], r["k"])))
        diff = "-" if d is None else f"{d['mean']:+.3f} ± " + ("-" if d["sd"] is None else f"{d['sd']:.3f}")
        if d is not None and d["folds"] < r["k"]:
            diff += f" ({d['folds']} folds)"
        rows.append(
            f"| {r['config']} | {r['budget']} | {r['k']} | {mean} ± {sd} | {per} | {diff} "
            f"| {r['train_seconds']:.0f} |"
        )
    return "\n".join(rows)


def markdown_table(records: list[dict]) -> str:
    """The README's tables, from the records (``--table DIR`` reads the JSON files ``--out`` wrote): the
    single runs, then the ``--folds`` summaries."""
    folds = [r for r in records if "holdout_mIoU" in r]
    single = [r for r in records if "holdout_mIoU" not in r]
    tables = ([runs_table(single)] if single else []) + ([folds_table(folds)] if folds else [])
    return "\n\n".join(tables)


def runs_table(records: list[dict]) -> str:
    rows = [
        "| configuration | budget | test mIoU | test FWIoU | stage-1 checkpoint test mIoU | hold-out mIoU "
        "| training s (stage 1 + 2) | train img/s (stage 1 / 2) | whole run s | peak memory MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    nan = float("nan")
    for r in records:
        s1, s2, t = r["stage1"] or {}, r["stage2"] or {}, r["test"] or {}
        last = s2 or s1
        s1_test = (r.get("stage1_checkpoint_test") or {}).get("mIoU")
        train = f"{s1.get('train_seconds', 0):.0f}" + (f" + {s2['train_seconds']:.0f}" if s2 else "")
        ips = f"{s1.get('images_per_s', 0):.1f}" + (f" / {s2['images_per_s']:.1f}" if s2 else "")
        rows.append(
            f"| {r['config']} | {r['budget']} | {t.get('mIoU', nan):.3f} | {t.get('FWIoU', nan):.3f} "
            f"| {'-' if s1_test is None else f'{s1_test:.3f}'} | {last.get('val_mIoU', nan):.3f} "
            f"| {train} | {ips} | {r['wall_seconds']:.0f} | {r['peak_memory_mb']['tree_pss_sampled']:.0f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_rs8_argument(ap)
    ap.add_argument("--configs", nargs="+", default=["recipe"], choices=sorted(CONFIGS))
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    ap.add_argument("--out", type=Path, default=None, help="also write each configuration's JSON here")
    ap.add_argument("--tmp", type=Path, default=None, help="work dir parent (default /tmp; removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the project copies and logs")
    ap.add_argument("--timeout", type=float, default=3600, help="per-run limit in seconds")
    ap.add_argument("--list", action="store_true", help="list the configurations and exit")
    ap.add_argument(
        "--holdout-only",
        action="store_true",
        help="train and score on the hold-out only (no submit on the test tiles): for choosing settings",
    )
    ap.add_argument(
        "--folds",
        type=int,
        default=None,
        metavar="K",
        help="score each configuration on data_prep's K folds of groups (one run per fold, hold-out only): "
        "mean +- sd of the hold-out mIoU",
    )
    ap.add_argument("--table", type=Path, default=None, help="print the markdown table of the JSONs in DIR")
    args = ap.parse_args(argv)
    if args.table:
        records = []
        for path in sorted(args.table.glob("*.json")):
            doc = json.loads(path.read_text())  # one --out record, or a whole stdout document
            records.extend(doc.get("results", [doc]))
        print(markdown_table(records))
        return 0
    if args.list:
        for name, (desc, overrides, _) in CONFIGS.items():
            print(f"{name:14s} {desc}  {overrides or ''}")
        return 0
    if args.folds is not None and args.folds < 2:
        ap.error("--folds needs K >= 2")
    if not (args.rs8 / "train" / "images").is_dir():
        log(f"no rs8 tree at {args.rs8} (set --rs8 or NAIC_SEG_RS8)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="rs8_sweep_", dir=args.tmp))
    records = []
    try:
        for name in args.configs:
            if args.folds:
                rec = run_folds(name, args.budget, args.rs8.resolve(), work, args.timeout, args.folds)
                stem = f"{args.budget}_{name}_folds{args.folds}"
            else:
                rec = run_config(name, args.budget, args.rs8.resolve(), work, args.timeout, args.holdout_only)
                stem = f"{args.budget}_{name}"
            records.append(rec)
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / f"{stem}.json").write_text(json.dumps(rec, indent=1) + "\n")
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    doc = {
        "benchmark": "rs8_sweep",
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_end": os.getloadavg(),
        },
        "results": records,
    }
    print(json.dumps(doc, indent=1))
    return 0 if all(r["returncode"] == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
