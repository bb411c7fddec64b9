"""Run every benchmark and print one JSON document with a section per benchmark.

    .venv/bin/python benchmarks/run_all.py                 # full: what `make bench` runs (hours on 2 CPUs)
    .venv/bin/python benchmarks/run_all.py --quick         # small sizes: a smoke check in a few minutes
    .venv/bin/python benchmarks/run_all.py --quick --only loader train
    .venv/bin/python benchmarks/run_all.py --args "train=--encoder resnet50 --size 512"

Sections, in order (``--only`` / ``--skip`` choose among them):

* ``data_prep``: ``bench_data_prep.py`` (``kedro run --pipeline data_prep`` on hard-linked trees of
  1k / 10k / 100k tiles in a throw-away project copy; quick: 100);
* ``submit``: ``bench_submit.py`` when it is present (memory flatness and end-to-end / forward-only);
* ``models``: ``bench_models.py`` (train / inference images/s and peak memory per model);
* ``loader``: ``bench_loader.py`` (the training DataLoader at 0/1/2 workers against bare decoding);
* ``train``: ``bench_train.py`` (the engine's steady end-to-end training images/s / compute-only ceiling,
  plus a GPU section when CUDA is available);
* ``viewer``: ``bench_viewer.py`` (``kedro view``'s map tile latency at three zoom levels of a 20,000² COG;
  quick: 2,000²).

data_prep, submit, models and viewer run as subprocesses (their own JSON on stdout, progress on stderr, each
in a fresh process so peak-memory figures are their own); loader and train run in this process (their
progress goes to stderr). Every subprocess runs with a temporary working directory, and the benchmarks
write only under temporary folders: the project's data/ and mlflow.db are never touched.
``--args SECTION="..."`` appends options to a section's command line (later options win).

Exit status: 0 when every section chosen produced its JSON (whether or not its targets were met: see
``summary``), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the sibling helpers importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import add_rs8_argument, loadavg
else:
    from ._common import add_rs8_argument, loadavg

HERE = Path(__file__).resolve().parent
SECTIONS = ("data_prep", "submit", "models", "loader", "train", "viewer")
SUBPROCESS = {
    "data_prep": "bench_data_prep.py",
    "submit": "bench_submit.py",
    "models": "bench_models.py",
    "viewer": "bench_viewer.py",
}
USES_RS8 = {"data_prep", "submit", "loader", "train"}
USES_TMP = {"data_prep", "submit", "viewer"}

FULL: dict[str, list[str]] = {
    "data_prep": ["--sizes", "1000", "10000", "100000"],
    "submit": [],  # its defaults: memory at 1k / 10k / 100k tiles, ratio for resnet50@512 and resnet18@256
    "models": [],  # its defaults: PSPNet and DeepLabV3+, ResNet-50, OS 16 and 8, 512 px, batch 4
    "loader": [],  # its defaults: 512 px, batch 4, workers 0 1 2, infinite sampler
    "train": [],  # its defaults: PSPNet ResNet-18 OS16, 256 px, batch 4, 5 + 20 iterations; GPU section
    "viewer": [],  # its defaults: a 20,000² class COG, 60 tiles at each of three zoom levels
}
QUICK: dict[str, list[str]] = {
    "data_prep": ["--sizes", "100"],
    "submit": [
        "--memory-sizes", "100", "200",
        "--throughput", "pspnet:resnet18:64:8:32",
        "--workers", "0",
        "--forward-iters", "2",
        "--forward-min-seconds", "1",
    ],
    "models": [
        "--size", "64", "--batch", "2", "--archs", "pspnet", "--encoders", "resnet18",
        "--strides", "16", "--iters", "1", "--warmup", "1",
    ],
    "loader": ["--tiles", "16", "--size", "64", "--batch", "2", "--batches", "4", "--warmup-batches", "1"],
    "train": [
        "--train-tiles", "16", "--val-tiles", "2", "--size", "64", "--batch", "2", "--workers", "1",
        "--iters", "4", "--warmup-iters", "2", "--log-interval", "2",
        "--ceiling-iters", "2", "--ceiling-warmup", "1",
        "--gpu-size", "256", "--gpu-iters", "3", "--gpu-warmup", "1", "--gpu-e2e-iters", "10",
    ],
    "viewer": ["--side", "2000", "--tiles", "10"],
}  # fmt: skip


def log(msg: str) -> None:
    print(f"[run_all {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _import_inprocess(name: str):
    """bench_loader / bench_train, whether run_all runs as a script or as ``benchmarks.run_all``."""
    if __package__ in (None, ""):
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        src = HERE.parent / "src"
        if src.is_dir() and str(src) not in sys.path:
            sys.path.append(str(src))
        return __import__(name)
    import importlib

    return importlib.import_module(f"{__package__}.{name}")


def run_subprocess(name: str, argv: list[str], cwd: Path, env: dict, timeout: float | None) -> dict:
    script = HERE / SUBPROCESS[name]
    cmd = [sys.executable, str(script), *argv]
    log(f"{name}: {shlex.join(cmd)}")
    try:  # stderr (progress) passes through; stdout is the section's JSON
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {
            "status": "error",
            "error": f"timed out after {timeout} s",
            "stdout_tail": str(exc.stdout)[-2000:],
        }
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {
            "status": "error",
            "returncode": proc.returncode,
            "error": "no JSON document on stdout",
            "stdout_tail": proc.stdout[-2000:],
        }
    # A non-zero status with a JSON document means "ran, target not met" (bench_submit, bench_models).
    return {"status": "ok", "returncode": proc.returncode, "result": result}


def run_inprocess(name: str, argv: list[str]) -> dict:
    module = _import_inprocess(f"bench_{name}")
    log(f"{name}: bench_{name}.collect({argv})")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # only the final document goes to stdout
            result = module.collect(argv)
    except (Exception, SystemExit) as exc:  # keep going with the other sections
        traceback.print_exc(file=sys.stderr)
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    return {"status": "ok", "result": result}


def _get(doc: dict, *keys, default=None):
    for key in keys:
        if not isinstance(doc, dict | list):
            return default
        try:
            doc = doc[key]
        except (KeyError, IndexError, TypeError):
            return default
    return doc


def summarize(doc: dict) -> dict:
    """The headline figure of each section that ran."""
    out: dict = {}
    if _get(doc, "data_prep", "status") == "ok":
        s = _get(doc, "data_prep", "result", "summary", default={})
        out["data_prep"] = {
            k: s.get(k) for k in ("target", "target_pipeline_seconds", "target_met", "all_counts_ok")
        } | {
            "pipeline_seconds": {
                str(r["tiles"]["train"]): r["pipeline_seconds"]
                for r in _get(doc, "data_prep", "result", "records", default=[])
            }
        }
    if _get(doc, "submit", "status") == "ok":
        r = doc["submit"]["result"]
        out["submit"] = {
            "targets_met": r.get("targets_met"),
            "memory_target_met": _get(r, "memory", "target_met"),
            "throughput_ratios": [x.get("ratio") for x in _get(r, "throughput", "records", default=[])],
        }
    if _get(doc, "models", "status") == "ok":
        out["models"] = [
            {
                k: m.get(k)
                for k in ("arch", "encoder", "stride", "size", "train_img_s", "infer_img_s", "error")
            }
            for m in doc["models"]["result"]
        ]
    if _get(doc, "loader", "status") == "ok":
        r = doc["loader"]["result"]
        out["loader"] = {
            "decode_ceiling_img_s": _get(r, "decode_ceiling", "img_s"),
            "img_s_by_workers": {str(x["workers"]): x["img_s"] for x in r.get("records", [])},
        }
    if _get(doc, "train", "status") == "ok":
        r = doc["train"]["result"]
        main = r.get("cpu") or r.get("cuda") or {}
        out["train"] = {
            "end_to_end_steady_img_s": _get(main, "end_to_end", "steady_img_s"),
            "ceiling_img_s": _get(main, "ceiling", "train_img_s_used"),
            "ratio": main.get("ratio"),
            "target_met": main.get("target_met"),
            "gpu": r.get("gpu", {}).get("gpu"),
            "gpu_ratio": _get(r, "gpu", "end_to_end", "ratio"),
        }
    if _get(doc, "viewer", "status") == "ok":
        out["viewer"] = {
            f"z{r['zoom']}": {k: r["http"][k] for k in ("median_ms", "p95_ms")}
            for r in _get(doc, "viewer", "result", "records", default=[])
        }
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke check, not a measurement")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=None, help="run only these sections")
    ap.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], help="leave these sections out")
    add_rs8_argument(ap)
    ap.add_argument("--tmp", type=Path, default=None, help="parent of the work dirs (default: the system's)")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (OMP_NUM_THREADS for subprocesses)"
    )
    ap.add_argument("--timeout", type=float, default=None, help="per subprocess section, seconds")
    ap.add_argument(
        "--args",
        action="append",
        default=[],
        metavar='SECTION="OPTIONS"',
        help="extra options for one section, e.g. --args 'train=--encoder resnet50 --size 512' (repeatable)",
    )
    ap.add_argument("--output", type=Path, default=None, help="also write the document to this file")
    return ap.parse_args(argv)


def section_argv(name: str, args: argparse.Namespace, extra: dict[str, list[str]]) -> list[str]:
    argv = list((QUICK if args.quick else FULL)[name])
    if name in USES_RS8:
        argv += ["--rs8", str(args.rs8)]
    if name in USES_TMP and args.tmp is not None:
        argv += ["--tmp", str(args.tmp)]
    if name in ("loader", "train") and args.threads is not None:
        argv += ["--threads", str(args.threads)]
    return argv + extra.get(name, [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    extra: dict[str, list[str]] = {}
    for item in args.args:
        name, sep, opts = item.partition("=")
        if not sep or name not in SECTIONS:
            raise SystemExit(
                f"--args wants SECTION=OPTIONS with SECTION in {', '.join(SECTIONS)}; got {item!r}"
            )
        extra.setdefault(name, []).extend(shlex.split(opts))
    chosen = [s for s in SECTIONS if (args.only is None or s in args.only) and s not in args.skip]
    if args.tmp is not None:
        args.tmp.mkdir(parents=True, exist_ok=True)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("--threads must be >= 1")
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the subprocess sections

    started = time.time()
    doc: dict = {
        "run_all": {
            "mode": "quick" if args.quick else "full",
            "sections": chosen,
            "argv": sys.argv[1:] if argv is None else list(argv),
            "rs8": str(args.rs8),
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        },
        "loadavg_start": loadavg(),
    }
    cwd = Path(tempfile.mkdtemp(prefix="run_all_", dir=args.tmp))
    try:
        for name in chosen:
            t0 = time.perf_counter()
            argv_s = section_argv(name, args, extra)
            if name == "submit" and not (HERE / SUBPROCESS["submit"]).is_file():
                section = {"status": "skipped", "reason": "benchmarks/bench_submit.py is not present"}
            elif name in SUBPROCESS:
                section = run_subprocess(name, argv_s, cwd, dict(os.environ), args.timeout)
            else:
                section = run_inprocess(name, argv_s)
            section = {"argv": argv_s, "seconds": round(time.perf_counter() - t0, 1), **section}
            log(f"{name}: {section['status']} in {section['seconds']} s (load {loadavg()})")
            doc[name] = section
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    doc["loadavg_end"] = loadavg()
    doc["run_all"]["seconds"] = round(time.time() - started, 1)
    doc["summary"] = summarize(doc)
    text = json.dumps(doc, indent=2)
    if args.output is not None:
        args.output.write_text(text + "\n")
    print(text)
    return 0 if all(doc[s]["status"] in ("ok", "skipped") for s in chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
