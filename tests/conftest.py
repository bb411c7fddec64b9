"""Shared fixtures: tiny contest-format tile trees and an in-process Kedro project in a temp folder."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before any test module imports mlflow

import shutil  # noqa: E402
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLASS_VALUES = (100, 200, 300, 400, 500, 600, 700, 800)


@pytest.fixture(autouse=True)
def _forget_the_active_mlflow_experiment() -> Iterator[None]:
    """MLflow keeps the active experiment id (and MLFLOW_EXPERIMENT_ID) across tests, so a test on a
    new store would open its run in an experiment id that only an earlier test's store has."""
    yield
    import sys

    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is None:
        return
    while fluent.active_run() is not None:
        fluent.end_run()
    fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def write_tile(
    root: Path,
    split: str,
    tid: int | str,
    size: int = 32,
    seed: int = 0,
    image: np.ndarray | Image.Image | None = None,
    label: np.ndarray | Image.Image | None = None,
    with_label: bool = True,
) -> tuple[Path, Path | None]:
    """Write one contest-format tile (LZW TIFF image, 16-bit PNG label); overrides write bad ones."""
    rng = np.random.default_rng(seed)
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    if image is None:
        image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    img_path = root / split / "images" / f"{tid}.tif"
    img.save(img_path, compression="tiff_lzw")
    if not with_label:
        return img_path, None
    (root / split / "labels").mkdir(parents=True, exist_ok=True)
    if label is None:
        label = np.asarray(CLASS_VALUES, dtype=np.uint16)[rng.integers(0, 8, size=(size, size))]
        label[0, 0] = 0
    lab = label if isinstance(label, Image.Image) else Image.fromarray(label)
    lab_path = root / split / "labels" / f"{tid}.png"
    lab.save(lab_path)
    return img_path, lab_path


def make_tree(
    root: Path, n_train: int = 12, n_test: int = 4, size: int = 32, test_labels: bool = False
) -> Path:
    for i in range(n_train):
        write_tile(root, "train", 1000 + 7 * i, size=size, seed=i)
    for i in range(n_test):
        write_tile(root, "test", 5000 + 3 * i, size=size, seed=100 + i, with_label=test_labels)
    return root


@pytest.fixture
def tile_tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tiles")


def make_project(project: Path) -> Path:
    """A throw-away copy of the project's configuration, so runs never touch the repo's data or mlflow.db."""
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    # MLflow caches one store per tracking URI string: a relative "sqlite:///mlflow.db" would send every test
    # project's runs to the first project's database within one pytest process.
    mlflow_yml = project / "conf" / "base" / "mlflow.yml"
    text = mlflow_yml.read_text()
    assert "mlflow_tracking_uri: sqlite:///mlflow.db" in text
    mlflow_yml.write_text(text.replace("sqlite:///mlflow.db", f"sqlite:///{project / 'mlflow.db'}", 1))
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, project / name)
    (project / "data").mkdir()
    (project / "src").mkdir()  # Kedro checks it exists; the package itself is imported from the install
    return project


@pytest.fixture(scope="session")
def kedro_project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"))


class KedroRunner:
    def __init__(self, project: Path):
        self.project = project

    def run(self, pipeline: str, env: str = "base", params: dict | None = None, **run_kwargs) -> dict:
        from kedro.framework.session import KedroSession
        from kedro.framework.startup import bootstrap_project

        cwd = os.getcwd()
        os.chdir(self.project)
        try:
            bootstrap_project(self.project)
            with KedroSession.create(project_path=self.project, env=env, runtime_params=params) as session:
                return session.run(pipeline_names=[pipeline], **run_kwargs)
        finally:
            os.chdir(cwd)
            import mlflow

            while mlflow.active_run():  # a CLI run ends it at exit; in-process we end it ourselves
                mlflow.end_run()

    def path(self, relative: str) -> Path:
        return self.project / relative


def _clear_data(project: Path) -> None:
    shutil.rmtree(project / "data", ignore_errors=True)
    (project / "data").mkdir()


@pytest.fixture
def kedro_runner(kedro_project: Path) -> Iterator[KedroRunner]:
    """The session's throw-away project with an empty data/ folder (MLflow runs accumulate in mlflow.db)."""
    _clear_data(kedro_project)
    yield KedroRunner(kedro_project)
    _clear_data(kedro_project)


@pytest.fixture
def rs8_root() -> Path:
    """The real rs8 tiles, from NAIC_SEG_RS8; tests that need them skip without it."""
    root = os.environ.get("NAIC_SEG_RS8")
    if not root:
        pytest.skip(
            "NAIC_SEG_RS8 is not set: point it at the rs8 tiles (../shared/data/rs8) to run real-data tests"
        )
    path = Path(root)
    if not (path / "train" / "images").is_dir():
        pytest.skip(f"NAIC_SEG_RS8={root} does not hold train/images")
    return path


# Overrides that run both training stages in seconds (ResNet-18 at 64 px, 4 iterations each).
STAGE = {
    "iterations": 4,
    "input_size": 64,
    "batch_size": 2,
    "workers": 0,
    "eval_interval": 2,
    "log_interval": 2,
    "checkpoint_interval": 2,
    "eval_batch_size": 8,
}
TINY = {
    "train_stage1": {"train": STAGE, "model": {"encoder": "resnet18", "pretrained": None}},
    "train_stage2": {"train": STAGE},
    "submit": {"workers": 0, "batch_size": 16},
}


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """One finished demo flow (data_prep -> both stages -> submit) in its own project, shared read-only."""
    project = make_project(tmp_path_factory.mktemp("demo_project"))
    KedroRunner(project).run("__default__", env="demo", params=TINY)
    return project
