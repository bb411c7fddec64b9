"""Prediction engines: what runs the networks inside the prediction core.

An engine holds one callable per model of an ensemble, each turning a normalised float32 N x 3 x h x w
batch into float32 N x C x h x w logits. TTA, ensembles, sliding windows and scene blending around it
(:class:`naic_seg.core.predict.Predictor`) consume logits and do not care which engine made them.

* ``torch`` -- the checkpoints' PyTorch networks under the :class:`Runtime` policy (bf16 autocast and
  channels-last where the CPU runs bf16 natively, float32 elsewhere).
* ``onnxruntime`` -- the same weights exported to ONNX (dynamic batch, one graph per input size, cached
  beside the checkpoint: :func:`naic_seg.core.export.cached_onnx`), run by ONNX Runtime at float32 with the
  runtime's thread count, on the CPU (or CUDA where the installed onnxruntime has its provider).
* ``auto`` -- chosen by measurement: a few timed batches of each candidate on the batch shape the job will
  feed, the fastest wins, and the log line gives the figures. On a CPU without native bf16 ONNX Runtime
  measured about 3x PyTorch's float32; with AVX-512-BF16 PyTorch's bf16 wins at batch 8 and loses at
  batch 1, which is why this is measured and not a rule.

Where onnxruntime cannot be imported or a network cannot be exported, ``auto`` (and ``onnxruntime``, with
a warning) falls back to torch and says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from naic_seg.core.runtime import Runtime

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnxruntime")
Network = Callable[[torch.Tensor], torch.Tensor]
# (checkpoint index, (height, width)) -> an ONNX graph file for that network at that input size
GraphSource = Callable[[int, tuple[int, int]], Path]
# How long auto may time each candidate, and how many timed batches it needs at most.
PROBE_SECONDS = 2.0
PROBE_BATCHES = 3
ORT_SPINNING = False


@dataclass
class Engine:
    """The networks of an ensemble and the runtime their inputs are prepared for."""

    name: str  # torch | onnxruntime
    networks: list[Network]
    runtime: Runtime
    why: str = ""

    @property
    def precision(self) -> str:
        return "float32" if self.name == "onnxruntime" else self.runtime.precision

    def describe(self) -> str:
        return f"{self.name} {self.precision}" + (f" ({self.why})" if self.why else "")


class TorchNetwork:
    """A PyTorch network under a runtime: channels-last and autocast as the runtime says, float32 out."""

    def __init__(self, model: torch.nn.Module, runtime: Runtime):
        self.model, self.runtime = model, runtime

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.runtime.autocast():
            return self.model(x).float()


def torch_engine(models: Sequence[torch.nn.Module], runtime: Runtime, why: str = "") -> Engine:
    return Engine("torch", [TorchNetwork(m, runtime) for m in models], runtime, why)


class OnnxNetwork:
    """One network as ONNX Runtime sessions, one per input size, opened the first time a size is fed."""

    def __init__(self, graph: Callable[[tuple[int, int]], Path], threads: int, providers: Sequence[str]):
        self.graph, self.threads, self.providers = graph, threads, list(providers)
        self.sessions: dict[tuple[int, int], object] = {}

    def session(self, size: tuple[int, int]):
        if size not in self.sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # ORT's own warnings about unused initialisers are noise here
            # ORT's pool threads spin-wait after each run by default, taking the cores from the resizing,
            # blending and decoding around the network (measured: docs/engines.md).
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if ORT_SPINNING else "0")
            self.sessions[size] = ort.InferenceSession(
                str(self.graph(size)), options, providers=self.providers
            )
        return self.sessions[size]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(x.shape[-2]), int(x.shape[-1]))
        feed = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session(size).run(["logits"], {"image": feed})[0]
        return torch.from_numpy(out).to(x.device)


def onnx_providers(runtime: Runtime) -> list[str] | None:
    """ONNX Runtime's providers for this runtime's device, or None where it has none (no CUDA provider)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if runtime.cuda:
        return ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else None
    return ["CPUExecutionProvider"]


def onnx_engine(count: int, graphs: GraphSource, runtime: Runtime, why: str = "") -> Engine:
    """``count`` networks whose graphs ``graphs`` gives; inputs float32, contiguous, on the device."""
    providers = onnx_providers(runtime)
    if providers is None:
        raise RuntimeError(f"this onnxruntime has no provider for {runtime.device}")
    threads = torch.get_num_threads()
    networks = [OnnxNetwork(lambda size, i=i: graphs(i, size), threads, providers) for i in range(count)]
    plain = Runtime(runtime.device, None, False, "ONNX Runtime takes float32 contiguous inputs")
    return Engine("onnxruntime", networks, plain, why)


def checkpoint_graphs(checkpoints: Sequence[dict]) -> GraphSource:
    """Graphs exported from the checkpoints themselves, through the cache beside each."""
    from naic_seg.core.export import cached_onnx

    return lambda index, size: cached_onnx(checkpoints[index], size)


def measure_rate(engine: Engine, shape: Sequence[int]) -> float:
    """Images per second of ``engine`` on random batches of ``shape``: one warm-up call (sessions open,
    kernels are picked), then up to ``PROBE_BATCHES`` timed calls within ``PROBE_SECONDS``."""
    x = torch.randn(*shape, device=engine.runtime.device)
    with torch.inference_mode():
        for network in engine.networks:
            network(x)
        calls, started = 0, time.perf_counter()
        while calls < PROBE_BATCHES and (calls == 0 or time.perf_counter() - started < PROBE_SECONDS):
            for network in engine.networks:
                network(x)
            calls += 1
        elapsed = time.perf_counter() - started
    return shape[0] * calls / elapsed


def choose_fastest(candidates: Sequence[Engine], shape: Sequence[int]) -> Engine:
    """The candidate with the highest measured rate on ``shape``; its ``why`` gives every figure. A
    candidate that fails to run (an ONNX export the network does not survive) is dropped, with the reason
    logged; the first candidate is the fallback and must run."""
    rates = []
    for engine in candidates:
        try:
            rates.append((measure_rate(engine, shape), engine))
        except Exception as err:  # export and ONNX Runtime raise many types; the fallback decides
            if engine is candidates[0]:
                raise
            log.info("engine: %s left out of auto's choice: %s: %s", engine.name, type(err).__name__, err)
    best_rate, best = max(rates, key=lambda pair: pair[0])
    others = " vs ".join(f"{e.name} {e.precision} {r:.1f} img/s" for r, e in rates if e is not best)
    best.why = (
        f"auto: {best_rate:.1f} img/s"
        + (f" vs {others}" if others else "")
        + (f", measured on batches of {tuple(shape)}")
    )
    return best


def build_engine(
    name: str,
    checkpoints: Sequence[dict],
    runtime: Runtime,
    shape: Sequence[int] | None,
    load_models: Callable[[], Sequence[torch.nn.Module]],
    graphs: GraphSource | None = None,
) -> Engine:
    """The engine ``name`` asks for. ``shape`` is the batch the job feeds (auto times candidates on it;
    None: no fixed input size, so torch); ``load_models`` builds the PyTorch networks, called only when
    torch runs or competes; ``graphs`` gives the ONNX files (default: exported from the checkpoints)."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {name!r}")
    if name == "torch":
        return torch_engine(load_models(), runtime, "engine: torch (set explicitly)")
    if name == "auto" and shape is None:
        return torch_engine(load_models(), runtime, "auto: no fixed input size to export an ONNX graph at")
    try:
        onnx = onnx_engine(len(checkpoints), graphs or checkpoint_graphs(checkpoints), runtime)
    except (ImportError, RuntimeError) as err:
        level = logging.WARNING if name == "onnxruntime" else logging.INFO
        log.log(level, "engine: %s asked, but ONNX Runtime cannot run here (%s): using torch", name, err)
        return torch_engine(load_models(), runtime, f"ONNX Runtime unavailable: {err}")
    if name == "onnxruntime":
        onnx.why = "engine: onnxruntime (set explicitly)"
        if shape is not None:  # export (or find) the graphs now: a misfit fails before any work
            for network in onnx.networks:
                network.session((int(shape[-2]), int(shape[-1])))
        return onnx
    return choose_fastest([torch_engine(load_models(), runtime), onnx], shape)
