"""Experiment definitions kept as data: the YAML files of ``benchmarks/experiments/`` read and expanded.

``load_sweep`` reads ``rs8_sweep.yml`` (its header says what a row holds) into ``{name: Config}``, each row's
``extends`` resolved: the parents' overrides merged in order, then the row's own; ``stage1_only`` from the
row, else from its first parent that states it. ``load_holdout_scenes`` reads ``holdout_scenes.yml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import yaml

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"
ROW_KEYS = {"description", "extends", "stage1_only", "overrides"}
TUPLE_KEYS = {"@full_iterations"}  # pairs, kept as tuples as the sweep code has always held them


class Config(NamedTuple):
    """One sweep row (a tuple: description, overrides, stage1_only): what --list prints and what
    ``config_params`` turns into a ``kedro run``."""

    description: str
    overrides: dict
    stage1_only: bool


def _parents(entry: dict) -> list[str]:
    extends = entry.get("extends") or []
    return [extends] if isinstance(extends, str) else list(extends)


def _resolve(
    name: str, table: dict[str, dict], path: Path, seen: tuple[str, ...] = ()
) -> tuple[dict, bool | None]:
    """(overrides, stage1_only or None) of ``name`` with everything it extends, in order."""
    if name in seen:
        raise ValueError(f"{path}: {' -> '.join((*seen, name))}: a row cannot extend itself")
    if name not in table:
        raise ValueError(f"{path}: {seen[-1]!r} extends {name!r}, which is neither a row nor a base")
    entry = table[name]
    unknown = set(entry) - ROW_KEYS
    if unknown:
        raise ValueError(f"{path}: {name!r} has unknown key(s) {sorted(unknown)}; valid: {sorted(ROW_KEYS)}")
    overrides: dict = {}
    stage1_only = None
    for parent in _parents(entry):
        inherited, parent_stage1_only = _resolve(parent, table, path, (*seen, name))
        overrides.update(inherited)
        if stage1_only is None:
            stage1_only = parent_stage1_only
    own = entry.get("overrides") or {}
    if not isinstance(own, dict):
        raise ValueError(f"{path}: {name!r}: overrides must be a mapping of dotted keys, got {own!r}")
    overrides.update(own)
    if "stage1_only" in entry:
        stage1_only = bool(entry["stage1_only"])
    return overrides, stage1_only


def load_sweep(path: Path = EXPERIMENTS / "rs8_sweep.yml") -> dict[str, Config]:
    """The runnable rows of a sweep file, in file order, every ``extends`` expanded."""
    doc = yaml.safe_load(path.read_text())
    bases, rows = doc.get("bases") or {}, doc["configs"]
    clash = sorted(set(bases) & set(rows))
    if clash:
        raise ValueError(f"{path}: {clash} name both a base and a row; give the base another name")
    table = {**bases, **rows}
    configs = {}
    for name, entry in rows.items():
        if "description" not in entry:
            raise ValueError(f"{path}: row {name!r} has no description")
        overrides, stage1_only = _resolve(name, table, path)
        overrides = {k: tuple(v) if k in TUPLE_KEYS else v for k, v in overrides.items()}
        configs[name] = Config(str(entry["description"]), overrides, bool(stage1_only))
    return configs


def load_holdout_scenes(path: Path = EXPERIMENTS / "holdout_scenes.yml") -> dict:
    """How benchmarks/holdout_scenes.py lays the hold-out tiles out as scenes (see the file's comments)."""
    return yaml.safe_load(path.read_text())
