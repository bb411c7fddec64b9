"""Data-parallel training on several processes and machines with torchrun's launcher."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from naic_seg.core.labels import ClassTable
from naic_seg.core.runtime import resolve_device
from naic_seg.core.training.config import TrainConfig
from naic_seg.core.training.engine import LogFn, TrainResult, train


def _distributed_worker(model_config, cfg, train_manifest, val_manifest, class_config, init_state, log_fn):
    cuda = resolve_device(cfg.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        if rank != 0:
            logging.getLogger("naic_seg").setLevel(logging.WARNING)
        classes = ClassTable.from_config(class_config)
        result = train(
            model_config,
            cfg,
            train_manifest,
            val_manifest,
            classes,
            init_state,
            log_fn if rank == 0 else None,
            rank,
            world,
        )
        return result if rank == 0 else None
    finally:
        dist.destroy_process_group()


def launch(
    nproc: int,
    model_config: dict,
    cfg: TrainConfig,
    train_manifest: Sequence[dict],
    val_manifest: Sequence[dict],
    classes: ClassTable,
    init_state: dict | None = None,
    log_fn: LogFn | None = None,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    run_id: str | None = None,
) -> TrainResult | None:
    """Train data-parallel on ``nproc`` processes per machine with torchrun's launcher.

    One machine: ``nnodes=1`` and a free port on 127.0.0.1 is picked. Several machines: the same call on each,
    with ``nnodes`` and a shared ``rdzv_endpoint`` (host:port of the first machine) and ``run_id``;
    only the machine holding global rank 0 gets the result (the others get None).
    """
    if nproc * nnodes <= 1:
        return train(model_config, cfg, train_manifest, val_manifest, classes, init_state, log_fn)
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # One machine: the rendezvous and the workers' store on 127.0.0.1 (by default torch's launcher gives the
    # workers the host's name as MASTER_ADDR, which resolves to an address beyond the loopback).
    alone = nnodes == 1 and rdzv_endpoint is None
    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=nproc,
        run_id=run_id or f"naic-seg-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=rdzv_endpoint or "127.0.0.1:0",
        local_addr="127.0.0.1" if alone else None,
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    results: dict[int, Any] = elastic_launch(config, _distributed_worker)(
        model_config, cfg, list(train_manifest), list(val_manifest), classes.as_config(), init_state, log_fn
    )
    return results.get(0)


def devices(nproc: int | str) -> int:
    """Processes per machine: ``auto`` is one per CUDA device (1 without CUDA)."""
    if nproc == "auto":
        return max(1, torch.cuda.device_count())
    return int(nproc)
