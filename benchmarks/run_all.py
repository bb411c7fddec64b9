"""Run every benchmark and print one JSON document with a section per benchmark.

    .venv/bin/python -m benchmarks.run_all                 # full: what `make bench` runs (hours on 2 CPUs)
    .venv/bin/python -m benchmarks.run_all --quick         # small sizes: a smoke check of every section
    .venv/bin/python -m benchmarks.run_all --quick --only loader train
    .venv/bin/python -m benchmarks.run_all --args "train=--encoder resnet50 --size 512"

Run from the repository root. Sections, in order (``--only`` / ``--skip`` choose among them):

* ``data_prep``: ``bench_data_prep`` (``kedro run --pipeline data_prep`` on hard-linked trees of
  1k / 10k / 100k tiles in a throw-away project copy; quick: 100);
* ``submit``: ``bench_submit`` (memory flatness and end-to-end / forward-only);
* ``models``: ``bench_models`` (train / inference images/s and peak memory per model);
* ``loader``: ``bench_loader`` (the training DataLoader at 0/1/2 workers against bare decoding);
* ``train``: ``bench_train`` (the engine's steady end-to-end training images/s / compute-only ceiling,
  plus a GPU section when CUDA is available);
* ``viewer``: ``bench_viewer`` (``kedro view``'s map tile latency at three zoom levels of a 20,000² COG;
  quick: 2,000²);
* ``scenes``: ``bench_scenes`` (scene mapping end to end vs forward-only, memory at 2,000² and 20,000²;
  quick: 600², memory at 300² and 900²; its quality section needs a trained checkpoint: run it alone);
* ``serving``: ``bench_serving`` (``mlflow models serve`` vs the in-process pyfunc vs the Predictor;
  quick: a batch of 2, one repeat);
* ``engines``: ``bench_engines`` (forward ceilings per engine, submit and scene mapping against them, served
  latency, torch / ONNX Runtime agreement on the rs8 test tiles; quick: the recipe network only, no
  minimum timing, one submit pass);
* ``gis``: ``bench_gis`` (map_scenes with the GIS products off and on; quick: one repeat);
* ``distributed``: ``bench_distributed`` (in-process vs a Dask LocalCluster; quick: its ``--quick``).

``engines`` and ``gis`` map ``--scene`` (default: their own, a real scene of ../shared/data/scenes_full);
with ``--quick`` and no ``--scene`` they map a synthetic 600² scene written into the work directory.

Every section but loader and train runs as a subprocess ``python -m benchmarks.<name>`` (its own JSON on
stdout, progress on stderr, a fresh process so peak-memory figures are its own); loader and train run in
this process (their progress goes to stderr). Every subprocess runs with a temporary working directory
(the repository root on its PYTHONPATH), and the benchmarks write only under temporary folders: the
project's data/ and mlflow.db are never touched. ``--args SECTION="..."`` appends options to a section's
command line (later options win).

Exit status: 0 when every section chosen produced its JSON (whether or not its targets were met: see
``summary``), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
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

from benchmarks._common import add_rs8_argument, loadavg

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "data_prep", "submit", "models", "loader", "train", "viewer",
    "scenes", "serving", "engines", "gis", "distributed",
)  # fmt: skip
IN_PROCESS = {"loader", "train"}  # the others: ``python -m benchmarks.bench_<name>`` subprocesses
USES_RS8 = {"data_prep", "submit", "loader", "train", "serving", "engines"}
USES_TMP = {"data_prep", "submit", "viewer", "scenes"}
USES_SCENE = {"engines", "gis"}
QUICK_SCENE_PX = 600

FULL: dict[str, list[str]] = {
    "data_prep": ["--sizes", "1000", "10000", "100000"],
    "submit": [],  # its defaults: memory at 1k / 10k / 100k tiles, ratio for resnet50@512 and resnet18@256
    "models": [],  # its defaults: PSPNet and DeepLabV3+, ResNet-50, OS 16 and 8, 512 px, batch 4
    "loader": [],  # its defaults: 512 px, batch 4, workers 0 1 2, infinite sampler
    "train": [],  # its defaults: PSPNet ResNet-18 OS16, 256 px, batch 4, 5 + 20 iterations; GPU section
    "viewer": [],  # its defaults: a 20,000² class COG, 60 tiles at each of three zoom levels
    "scenes": [],  # its defaults: throughput on 3,000², memory at 2,000² and 20,000² (no quality section)
    "serving": [],  # its defaults: PSPNet ResNet-18 at 256 px, one tile and a batch of 16, 5 repeats
    "engines": [],  # its defaults: every section, the recipe network and two random-weight models
    "gis": [],  # its defaults: full_deepglobe_855 of scenes_full, 3 alternated repeats
    "distributed": [],  # its defaults: 4 scenes of 1,500², 20,000² in bands, 10,000 tiles
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
    "scenes": ["--quick", "--repeats", "1"],
    "serving": ["--batch", "2", "--repeats", "1"],
    "engines": ["--models", "--min-seconds", "0", "--workers", "0", "--submit-repeat", "1"],
    "gis": ["--repeats", "1"],
    "distributed": ["--quick"],
}  # fmt: skip


def log(msg: str) -> None:
    print(f"[run_all {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_subprocess(name: str, argv: list[str], cwd: Path, env: dict, timeout: float | None) -> dict:
    cmd = [sys.executable, "-m", f"benchmarks.bench_{name}", *argv]
    log(f"{name}: {shlex.join(cmd)}")
    try:  # stderr (progress) passes through; stdout is the section's JSON
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {
            "status": "error",
            "error": f"timed out after {timeout} s",
            "stdout_tail": str(exc.stdout)[-2000:],
        }
    result = _json_document(proc.stdout)
    if result is None:
        return {
            "status": "error",
            "returncode": proc.returncode,
            "error": "no JSON document on stdout",
            "stdout_tail": proc.stdout[-2000:],
        }
    # A non-zero status with a JSON document means "ran, target not met" (bench_submit, bench_models).
    return {"status": "ok", "returncode": proc.returncode, "result": result}


def _json_document(stdout: str):
    """The JSON document a benchmark printed: all of stdout, or from the first line opening one (a
    library may have logged a line to stdout before it); None when there is none."""
    opens = ("\n{", "\n[")
    starts = [0] + [i + 1 for i in range(len(stdout)) if stdout.startswith(opens, i)]
    for start in starts:
        try:
            return json.loads(stdout[start:])
        except json.JSONDecodeError:
            continue
    return None


def run_inprocess(name: str, argv: list[str]) -> dict:
    module = importlib.import_module(f"benchmarks.bench_{name}")
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
    out |= summarize_added(doc)
    if _get(doc, "viewer", "status") == "ok":
        out["viewer"] = {
            f"z{r['zoom']}": {k: r["http"][k] for k in ("median_ms", "p95_ms")}
            for r in _get(doc, "viewer", "result", "records", default=[])
        }
    return out


def summarize_added(doc: dict) -> dict:
    """The headline figures of the scenes, serving, engines, gis and distributed sections that ran."""
    result = {s: doc[s]["result"] for s in ("scenes", "serving", "engines", "gis", "distributed")
              if _get(doc, s, "status") == "ok"}  # fmt: skip
    out: dict = {}
    if "scenes" in result:
        r = result["scenes"]
        out["scenes"] = {
            "end_to_end_over_forward_only": _get(r, "throughput", "ratio"),
            "km2_per_hour_at_50cm": _get(r, "throughput", "km2_per_hour_at_50cm"),
            "memory_rss_spread_mb": _get(r, "memory", "rss_spread_mb"),
        }
    if "serving" in result:
        out["serving"] = {k: v.get("one_ms") for k, v in result["serving"].get("timings", {}).items()}
    if "engines" in result:
        out["engines"] = {k: v.get("ratio") for k, v in result["engines"].get("submit", {}).items()}
    if "gis" in result:
        out["gis"] = {k: result["gis"].get(k) for k in ("extra_seconds", "extra_share")}
    if "distributed" in result:
        rows = _get(result["distributed"], "throughput", "rows", default={})
        out["distributed"] = {k: v.get("ratio_to_in_process") for k, v in rows.items()}
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
        "--scene", type=Path, default=None, help="the scene engines and gis map (see the docstring)"
    )
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
    if name in IN_PROCESS and args.threads is not None:
        argv += ["--threads", str(args.threads)]
    if name in USES_SCENE and args.scene is not None:
        argv += ["--scene", str(args.scene)]
    return argv + extra.get(name, [])


def subprocess_env() -> dict:
    """This process's environment with the repository root first on PYTHONPATH: the sections run as
    ``python -m benchmarks.<name>`` from a temporary working directory."""
    paths = [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))


def run_sections(chosen: list[str], args: argparse.Namespace, extra: dict[str, list[str]], doc: dict):
    """Each chosen section in turn, into ``doc``; a failed section is recorded and the next one runs."""
    cwd = Path(tempfile.mkdtemp(prefix="run_all_", dir=args.tmp))
    try:
        if args.quick and args.scene is None and USES_SCENE & set(chosen):
            from benchmarks._tiles import write_synthetic_scene

            args.scene = write_synthetic_scene(cwd / "quick_scene.tif", QUICK_SCENE_PX)
        for name in chosen:
            t0 = time.perf_counter()
            argv_s = section_argv(name, args, extra)
            if name in IN_PROCESS:
                section = run_inprocess(name, argv_s)
            else:
                section = run_subprocess(name, argv_s, cwd, subprocess_env(), args.timeout)
            section = {"argv": argv_s, "seconds": round(time.perf_counter() - t0, 1), **section}
            log(f"{name}: {section['status']} in {section['seconds']} s (load {loadavg()})")
            doc[name] = section
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


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
    run_sections(chosen, args, extra, doc)
    doc["loadavg_end"] = loadavg()
    doc["run_all"]["seconds"] = round(time.time() - started, 1)
    doc["summary"] = summarize(doc)
    text = json.dumps(doc, indent=2)
    if args.output is not None:
        args.output.write_text(text + "\n")
    print(text)
    return 0 if all(doc[s]["status"] == "ok" for s in chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
