"""Helpers the benchmarks share: where the rs8 tiles are, the load, memory and CPU time, the host, torch's
threads, and a ``kedro run`` in a throw-away project copy watched by a process-tree memory sampler.

Benchmarks import these (``from benchmarks._common import ...``), never each other; each one runs from the
repository root as ``python -m benchmarks.<name>``."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RS8 = os.environ.get("NAIC_SEG_RS8", "/work/shared/data/rs8")


def add_rs8_argument(ap: argparse.ArgumentParser) -> None:
    """``--rs8``: the rs8 tile tree to read (default: $NAIC_SEG_RS8, else /work/shared/data/rs8)."""
    ap.add_argument(
        "--rs8",
        type=Path,
        default=Path(DEFAULT_RS8),
        help="the rs8 tree (default: $NAIC_SEG_RS8 or /work/shared/data/rs8)",
    )


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages (other work on a 2-core machine skews every timing)."""
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def mean_sd(values: list[float], digits: int = 4) -> dict:
    """Mean and sample sd of ``values``, rounded (sd None for fewer than two; both None for none): the
    summary every fold and paired figure of the benchmarks prints."""
    values = list(values)
    return {
        "mean": round(statistics.fmean(values), digits) if values else None,
        "sd": round(statistics.stdev(values), digits) if len(values) > 1 else None,
    }


def status_kb(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``), or None where there is none."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its waited-for children (DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_model() -> str:
    """The CPU's model name and its bf16 units as PyTorch sees them (figures depend on both):
    "AMX + AVX-512-BF16" (the Xeon), "AVX-512-BF16" (an EPYC with it) or "no native bf16" (emulated: AVX2)."""
    name = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(ImportError, AttributeError):
        import torch

        units = [
            u
            for u, on in (
                ("AMX", torch.cpu._is_amx_tile_supported()),
                ("AVX-512-BF16", torch.cpu._is_avx512_bf16_supported()),
            )
            if on
        ]
        name += f", {' + '.join(units)}, native bf16" if units else ", no native bf16"
    return name


# Same as the `kedro` console script, plus an exit hook (main process only: forked pool workers
# inherit atexit but leave through os._exit) that records the kernel's peak-RSS counters.
KEDRO_WRAPPER = """\
import atexit, json, os, resource, sys
_pid, _out = os.getpid(), os.environ["BENCH_RUSAGE_OUT"]
def _dump():
    if os.getpid() != _pid:
        return
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(_out, "w") as fh:
        json.dump({"self_maxrss_kb": s.ru_maxrss, "children_maxrss_kb": c.ru_maxrss,
                   "self_cpu_s": s.ru_utime + s.ru_stime, "children_cpu_s": c.ru_utime + c.ru_stime}, fh)
atexit.register(_dump)
sys.argv[0] = "kedro"
from kedro.framework.cli import main
sys.exit(main())
"""


def make_project(dst: Path) -> Path:
    """A throw-away Kedro project dir: conf, pyproject and telemetry copied, empty src/ and data/.

    ``naic_seg`` itself is imported from the editable install, so src/ only has to exist.
    """
    dst.mkdir(parents=True)
    shutil.copytree(PROJECT_ROOT / "conf", dst / "conf")
    shutil.copy2(PROJECT_ROOT / "pyproject.toml", dst / "pyproject.toml")
    if (PROJECT_ROOT / ".telemetry").exists():
        shutil.copy2(PROJECT_ROOT / ".telemetry", dst / ".telemetry")
    (dst / "src").mkdir()
    (dst / "data").mkdir()
    return dst


def _descendants(pid: int) -> list[int]:
    """``pid``'s descendants, from /proc/<pid>/task/<tid>/children."""
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    kids = [int(c) for c in fh.read().split()]
                out.extend(kids)
                stack.extend(kids)
        except (OSError, ValueError):
            continue
    return out


def _mem_kb(pid: int) -> dict[str, int]:
    """Rss, Pss and USS (Private_Clean + Private_Dirty) of one process in kB; {} once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            fields = dict(line.split(":", 1) for line in fh.read().splitlines()[1:])
    except (OSError, ValueError):
        return {}
    kb = {k: int(v.split()[0]) for k, v in fields.items()}
    return {"rss": kb["Rss"], "pss": kb["Pss"], "uss": kb["Private_Clean"] + kb["Private_Dirty"]}


class TreeSampler(threading.Thread):
    """Samples the kedro process tree every ``interval`` s and keeps the peaks.

    Forked pool workers share the parent's pages copy-on-write, so RSS (and ru_maxrss) of a worker
    counts the parent's imports again; PSS splits shared pages between the sharers, so the tree's PSS
    sum is what the run really occupies, and a worker's USS is what it adds on its own.
    """

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = {"main_rss": 0, "tree_pss": 0, "tree_rss": 0, "child_uss": 0}
        self.max_children = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            main = _mem_kb(self.pid)
            kids = [m for m in map(_mem_kb, _descendants(self.pid)) if m]
            if main:
                every = [main, *kids]
                self.peak["main_rss"] = max(self.peak["main_rss"], main["rss"])
                self.peak["tree_pss"] = max(self.peak["tree_pss"], sum(m["pss"] for m in every))
                self.peak["tree_rss"] = max(self.peak["tree_rss"], sum(m["rss"] for m in every))
                self.peak["child_uss"] = max([self.peak["child_uss"], *(m["uss"] for m in kids)])
                self.max_children = max(self.max_children, len(kids))
            self.done.wait(self.interval)


def run_sampled(
    cmd: list[str],
    cwd: Path,
    timeout: float,
    interval: float = 0.1,
    stdout=None,
    stderr=None,
    env: dict | None = None,
) -> tuple[int, float, TreeSampler]:
    """Run ``cmd`` while a :class:`TreeSampler` watches its process tree; kill it after ``timeout`` s.

    Returns the exit status, the wall time in seconds and the sampler (its ``peak`` holds the maxima).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
    sampler = TreeSampler(proc.pid, interval=interval)
    sampler.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    wall = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    return proc.returncode, wall, sampler


def set_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)`` when asked (intra-op threads of this process; loader workers use 1)."""
    import torch

    if n is not None:
        if n < 1:
            raise SystemExit(f"--threads must be >= 1, got {n}")
        torch.set_num_threads(n)


def host_info() -> dict:
    """The host and torch build a figure was measured on."""
    import torch

    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.cuda.is_available(),
    }


def _files(folder: Path) -> dict[str, str]:
    with os.scandir(folder) as entries:
        return {Path(e.name).stem: e.path for e in entries if e.is_file() and not e.name.startswith(".")}


def rs8_manifest(root: str | os.PathLike, split: str = "train", limit: int | None = None) -> list[dict]:
    """``[{"filename": image, "ann": {"seg_map": label}}]`` for the ids of ``root/split`` that have both
    an image and a label, sorted by id (numeric ids numerically); the first ``limit`` of them."""
    from naic_seg.core.tiles import id_sort_key

    root = Path(root)
    images, labels = _files(root / split / "images"), _files(root / split / "labels")
    ids = sorted(images.keys() & labels.keys(), key=id_sort_key)
    if not ids:
        raise FileNotFoundError(f"no image/label pairs under {root / split}")
    if limit is not None:
        ids = ids[:limit]
    return [{"filename": images[t], "ann": {"seg_map": labels[t]}} for t in ids]
