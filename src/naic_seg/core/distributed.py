"""Prediction tasks on a Dask cluster: the options, the client, the worker's predictor cache, progress.

The Kedro process stays the client: it checks the inputs, plans the tasks, logs and writes what is small;
the workers run tasks that carry paths and options (never models or pixels) and read and write files on a
path every worker sees (local disk for a local cluster, NFS or the like for several machines).

``address``: None runs in-process (no Dask at all); ``local`` or ``local:N`` starts a
:class:`~distributed.LocalCluster` of N worker processes (default: one per core) with cores / N threads
each, listening on 127.0.0.1 only, without a dashboard unless ``dashboard`` is true; ``tcp://host:port``
connects to a running scheduler (``dask scheduler``), failing within ``timeout_s`` naming the address when
nothing answers there or no worker joins it.

Each task computes on one thread (Dask's nanny sets ``OMP_NUM_THREADS=1`` in its workers), so a worker
runs as many tasks at once as it has threads. A worker builds the predictor of a (checkpoints, predict
configuration) pair once and keeps it for the next tasks (:func:`worker_predictor`).

``retries`` covers both ways a task can fail: an exception in the task (Dask's ``retries``) and the death
of the worker running it (the scheduler's ``allowed-failures``, set for a local cluster; a scheduler started
by hand takes it from its own configuration: ``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naic_seg.core.labels import ClassTable
from naic_seg.core.options import Options
from naic_seg.core.predict import PredictConfig, Predictor

log = logging.getLogger(__name__)

LOCAL = re.compile(r"local(?::(\d+))?")
# A test hook, read by every task: a marker file path. The first task attempt (on any worker) that reaches
# its second step creates the marker and kills its worker process, as a crash would; later attempts run.
KILL_ONCE_ENV = "NAIC_SEG_TEST_KILL_WORKER_ONCE"
# A test hook: every attempt of a task whose label contains this text kills its worker at its first step.
KILL_ALWAYS_ENV = "NAIC_SEG_TEST_KILL_WORKER_TASK"
PREDICTORS_KEPT = 2  # (checkpoints, configuration) pairs a worker keeps built


class ClusterError(RuntimeError):
    """The cluster cannot be reached or started, or a task failed after its retries; names what."""


@dataclass(frozen=True)
class ClusterOptions(Options):
    """Where tasks run and how hard to try; ``address`` None: in-process (``<pipeline>.distributed``)."""

    address: str | None = None
    retries: int = 2
    timeout_s: float = 30.0
    dashboard: bool = False

    def check(self) -> None:
        if self.address is not None and not (
            LOCAL.fullmatch(str(self.address)) or str(self.address).startswith(("tcp://", "tls://"))
        ):
            raise ValueError(f"address must be null, local, local:N or tcp://host:port; got {self.address!r}")
        if int(self.retries) < 0:
            raise ValueError(f"retries must be at least 0, got {self.retries}")
        if float(self.timeout_s) <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")

    @property
    def in_process(self) -> bool:
        return self.address is None

    def local_workers(self) -> int | None:
        """N of ``local:N`` (``local``: one per core); None for a scheduler address."""
        match = LOCAL.fullmatch(str(self.address))
        if match is None:
            return None
        workers = int(match.group(1) or cpu_count())
        if workers < 1:
            raise ValueError(f"distributed.address {self.address!r} asks for no worker")
        return workers


@dataclass(frozen=True)
class MapDistributed(ClusterOptions):
    """``map_scenes.distributed``."""

    # A scene of more megapixels is cut into bands of about that many, each a task; None: never cut.
    split_above_mpx: float | None = 100.0

    def check(self) -> None:
        super().check()
        if self.split_above_mpx is not None and float(self.split_above_mpx) <= 0:
            raise ValueError(f"split_above_mpx must be positive or null, got {self.split_above_mpx}")


@dataclass(frozen=True)
class SubmitDistributed(ClusterOptions):
    """``submit.distributed``."""

    chunk_size: int = 512  # tiles per task
    max_in_flight: int = 8  # chunks submitted and not yet written: what bounds the client's memory

    def check(self) -> None:
        super().check()
        if int(self.chunk_size) < 1 or int(self.max_in_flight) < 1:
            raise ValueError(
                f"chunk_size and max_in_flight must be at least 1, got {self.chunk_size} "
                f"and {self.max_in_flight}"
            )


def cpu_count() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def connect(options: ClusterOptions) -> Iterator[Any]:
    """A :class:`distributed.Client` for ``options.address`` (a local cluster is started and closed here)."""
    import dask
    from distributed import Client

    workers = options.local_workers()
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if workers is not None:
            with dask.config.set({"distributed.scheduler.allowed-failures": int(options.retries)}):
                cluster = stack.enter_context(local_cluster(workers, options.dashboard))
            client = stack.enter_context(Client(cluster, timeout=options.timeout_s))
            where = f"a local cluster of {workers} worker process(es) at {cluster.scheduler_address}"
        else:
            client = stack.enter_context(_remote_client(options))
            where = f"the Dask scheduler at {options.address}"
        threads = sum(client.nthreads().values())
        log.info(
            "Tasks run on %s: %d worker(s), %d thread(s) in all (ready in %.1f s)%s",
            where,
            len(client.nthreads()),
            threads,
            time.perf_counter() - started,
            f"; dashboard: {client.dashboard_link}" if _has_dashboard(client, options) else "",
        )
        yield client


def local_cluster(workers: int, dashboard: bool = False, threads: int | None = None):
    """A :class:`~distributed.LocalCluster` of ``workers`` processes (``threads`` each, default cores /
    workers), every port a free one on 127.0.0.1. Without ``dashboard`` the scheduler's HTTP server keeps
    only its health and metrics routes (it always runs one), on a free port too."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=workers,
        threads_per_worker=threads or max(1, cpu_count() // workers),
        processes=True,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address="127.0.0.1:0" if dashboard else None,
        scheduler_kwargs=None if dashboard else {"dashboard_address": "127.0.0.1:0"},
    )


def _has_dashboard(client, options: ClusterOptions) -> bool:
    if options.local_workers() is not None:
        return options.dashboard
    return "dashboard" in client.scheduler_info().get("services", {})


@contextlib.contextmanager
def _remote_client(options: ClusterOptions) -> Iterator[Any]:
    from distributed import Client

    try:
        client = Client(options.address, timeout=options.timeout_s)
    except (OSError, TimeoutError) as err:
        raise ClusterError(
            f"no Dask scheduler answers at {options.address} within {options.timeout_s:g} s: {err}"
        ) from err
    try:
        try:
            client.wait_for_workers(1, timeout=options.timeout_s)
        except TimeoutError as err:
            raise ClusterError(
                f"the Dask scheduler at {options.address} has no worker after {options.timeout_s:g} s: "
                "start some with `dask worker " + str(options.address) + "`"
            ) from err
        yield client
    finally:
        client.close()


def absolute(path: str | os.PathLike) -> str:
    """Workers on other machines resolve relative paths against their own folder: tasks carry absolute."""
    return str(Path(path).resolve())


# --- the worker's side ------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """What a worker needs to build a predictor: checkpoint files, the predict configuration, the classes."""

    checkpoints: tuple[str, ...]
    predict: dict
    classes: list[dict]

    @classmethod
    def of(cls, checkpoints: Sequence[dict], cfg: PredictConfig, classes: ClassTable) -> ModelSpec:
        missing = [c.get("stage") or "?" for c in checkpoints if not c.get("source")]
        if missing:
            raise ValueError(
                f"checkpoint(s) {missing} have no file: tasks on a cluster read checkpoint files"
            )
        return cls(
            tuple(absolute(c["source"]) for c in checkpoints), dataclasses.asdict(cfg), classes.as_config()
        )

    def key(self) -> str:
        """The files as they are now (a rewritten checkpoint builds anew) and the configuration."""
        files = [(p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in self.checkpoints]
        return json.dumps([files, self.predict, self.classes], sort_keys=True, default=str)


_predictors: OrderedDict[str, Predictor] = OrderedDict()
_predictors_lock = threading.Lock()


def worker_predictor(spec: ModelSpec) -> Predictor:
    """The predictor ``spec`` describes, built once per worker process (the engine choice and any ONNX
    export happen once; the ONNX cache beside the checkpoint is shared on disk) and reused by later tasks."""
    from naic_seg.core.checkpoint import load_checkpoint

    key = spec.key()
    with _predictors_lock:  # a worker with several threads: one build, the others wait for it
        if key not in _predictors:
            checkpoints = [load_checkpoint(p) for p in spec.checkpoints]
            cfg = PredictConfig(**spec.predict)
            _predictors[key] = Predictor.from_checkpoints(
                checkpoints, cfg, ClassTable.from_config(spec.classes)
            )
            while len(_predictors) > PREDICTORS_KEPT:
                _predictors.popitem(last=False)
        _predictors.move_to_end(key)
        return _predictors[key]


class FaultHook:
    """The test hooks (:data:`KILL_ONCE_ENV`, :data:`KILL_ALWAYS_ENV`) a task calls :meth:`step` in."""

    def __init__(self, label: str):
        self.label, self.steps = label, 0
        self.once, self.always = os.environ.get(KILL_ONCE_ENV), os.environ.get(KILL_ALWAYS_ENV)

    def step(self) -> None:
        self.steps += 1
        if self.always and self.always in self.label:
            os._exit(70)
        if self.once and self.steps == 2:
            try:
                fd = os.open(self.once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(fd, f"{self.label}\n".encode())
            os.close(fd)
            os._exit(70)


# --- the client's side ------------------------------------------------------------------------------------


def task_error(what: str, label: str, err: BaseException, retries: int) -> ClusterError:
    """The error a run fails with when a task is out of retries: names the task and why."""
    from distributed import KilledWorker

    if isinstance(err, KilledWorker):
        why = f"the worker running it died {retries + 1} time(s) ({err})"
    else:
        why = f"{type(err).__name__}: {err}"
    return ClusterError(f"{what}: {label} failed after {retries} retr(ies): {why}")


@dataclass
class TaskProgress:
    """Log lines as tasks finish: how many, units done (megapixels, tiles), rate and ETA."""

    what: str
    tasks: int
    units: float
    unit: str
    every_s: float = 10.0
    done_tasks: int = 0
    done_units: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    last: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, units: float, label: str = "") -> None:
        with self.lock:
            self.done_tasks += 1
            self.done_units += units
            now = time.perf_counter()
            if now - self.last < self.every_s and self.done_tasks < self.tasks:
                return
            self.last = now
            rate = self.done_units / max(now - self.started, 1e-9)
            log.info(
                "%s: %d/%d task(s) done%s, %.1f/%.1f %s (%.2f %s/s, ETA %.0f s)",
                self.what,
                self.done_tasks,
                self.tasks,
                f" (last: {label})" if label else "",
                self.done_units,
                self.units,
                self.unit,
                rate,
                self.unit,
                (self.units - self.done_units) / max(rate, 1e-9),
            )


def client_predictor(checkpoints: Sequence[dict], cfg: PredictConfig, classes: ClassTable) -> Predictor:
    """The checkpoints checked on the client before any task (a misfit or another class table raises here)
    as a float32 PyTorch predictor on the CPU: what the client needs of it is its geometry (input and tile
    size, normalisation); the workers build their own, on the engine and device ``cfg`` asks for."""
    plain = dataclasses.replace(cfg, engine="torch", device="cpu", amp="none", channels_last=False)
    return Predictor.from_checkpoints(checkpoints, plain, classes)
