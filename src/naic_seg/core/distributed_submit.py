"""Test tiles predicted on a Dask cluster: the manifest in chunks, a bounded number of chunks in flight.

Each task predicts a chunk of manifest entries with the worker's cached predictor and returns its records
(tile id, PNG bytes), exactly what :func:`naic_seg.core.submission.prediction_records` gives in-process.
The client yields them in manifest order, for the pickle (and from it the zip) to be written in tile
order; at most ``max_in_flight`` chunks are submitted and not yet yielded, so the client's memory does
not grow with the number of tiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections import deque
from collections.abc import Iterator, Sequence

from naic_seg.core.distributed import (
    FaultHook,
    ModelSpec,
    SubmitDistributed,
    TaskProgress,
    absolute,
    connect,
    task_error,
    worker_predictor,
)
from naic_seg.core.predict import predict_tiles
from naic_seg.core.submission import prediction_records

log = logging.getLogger(__name__)


def predict_chunk(spec: ModelSpec, entries: Sequence[dict], label: str) -> list[tuple[str, bytes]]:
    """On a worker: the records of ``entries``. Tiles are read in the task's thread (a Dask worker is a
    daemon process, which may not start DataLoader workers)."""
    predictor = worker_predictor(spec)
    hook = FaultHook(label)
    records = []
    for record in prediction_records(predict_tiles(entries, predictor, progress_every=0)):
        hook.step()
        records.append(record)
    return records


def chunk_spec(spec: ModelSpec) -> ModelSpec:
    return dataclasses.replace(spec, predict={**spec.predict, "workers": 0})


def distributed_records(
    manifest: Sequence[dict], spec: ModelSpec, distributed: SubmitDistributed
) -> Iterator[tuple[str, bytes]]:
    """The records of every manifest entry, in order, predicted on the cluster; connects now (an
    unreachable address fails here), predicts as the records are consumed."""
    stack = contextlib.ExitStack()
    client = stack.enter_context(connect(distributed))
    return _records(stack, client, manifest, chunk_spec(spec), distributed)


def _records(stack, client, manifest, spec: ModelSpec, distributed: SubmitDistributed):
    size, token = int(distributed.chunk_size), uuid.uuid4().hex[:8]
    entries = [{**e, "filename": absolute(e["filename"])} for e in manifest]
    starts = list(range(0, len(entries), size))
    progress = TaskProgress("submit", len(starts), len(entries), "tiles")
    log.info(
        "submit: %d tiles in %d chunk(s) of up to %d, %d in flight",
        len(entries),
        len(starts),
        size,
        distributed.max_in_flight,
    )
    pending: deque = deque()
    try:
        for index, start in enumerate(starts):
            label = f"chunk {index + 1}/{len(starts)} (tiles {start}..{min(start + size, len(entries))})"
            key = f"submit-chunk-{index + 1}-{token}"
            chunk = entries[start : start + size]
            future = client.submit(predict_chunk, spec, chunk, label, key=key, retries=distributed.retries)
            pending.append((future, label, len(chunk)))
            while len(pending) >= distributed.max_in_flight or (pending and index == len(starts) - 1):
                yield from _take(pending, progress, distributed.retries)
    finally:
        client.cancel([f for f, _, _ in pending])
        stack.close()


def _take(pending: deque, progress: TaskProgress, retries: int) -> Iterator[tuple[str, bytes]]:
    future, label, count = pending.popleft()
    try:
        records = future.result()
    except Exception as err:
        raise task_error("submit", label, err, retries) from err
    future.release()
    progress.add(count, label)
    yield from records
