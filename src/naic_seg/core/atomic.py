"""Atomic file writes: write to a temporary file beside the target, fsync, then rename over it.

A run killed mid-write leaves the previous version of the file (or no file) and at most a stray
``.<name>.*.tmp`` next to it, never a half-written target.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# No room left: the device, the user's quota, or the largest file allowed.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):  # left by a killed run
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise OSError(
            err.errno, f"cannot write '{target}': {err.strerror or err} (any previous version is kept)"
        ) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Like ``open(target, mode)`` for writing, but the target appears only when the block succeeds."""
    with atomic_path(target) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_json(target: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    with atomic_open(target, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=indent)
        fh.write("\n")


def check_writable(target: str | os.PathLike) -> None:
    """Fail now, naming the folder, if ``target`` could not be written later. Creates nothing."""
    folder = Path(target).parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"'{existing}' is not a folder")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check.", delete=True):
            pass
    except OSError as err:
        raise PermissionError(f"cannot write to '{folder}' (needed for '{target}'): {err}") from err


def move_into_place(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a finished file to ``target`` atomically: a rename on one file system, else a copy to a
    temporary beside the target, then a rename."""
    import shutil

    Path(target).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        os.unlink(source)
