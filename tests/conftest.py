"""Shared fixtures: tiny contest-format tile trees and an in-process Kedro project in a temp folder."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before any test module imports mlflow

import ipaddress  # noqa: E402
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLASS_VALUES = (100, 200, 300, 400, 500, 600, 700, 800)

# Loopback only. Every process a test starts inherits these (torch's launcher, gloo, Dask workers, `kedro run`
# subprocesses): rendezvous on 127.0.0.1 and gloo's sockets on the loopback interface, never the host's
# address. In this process the guard below also fails any test that connects anywhere else.
LOOPBACK_ENV = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo0" if sys.platform == "darwin" else "lo"}
os.environ.update(LOOPBACK_ENV)


class NonLoopbackConnection(AssertionError):
    """A test tried to connect to an address outside the loopback."""


def is_loopback(family: int, address) -> bool:
    """AF_UNIX always; AF_INET / AF_INET6 when the host is localhost or in 127.0.0.0/8 or ::1."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        return True  # AF_UNIX, netlink, ...: nothing leaves the machine
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).split("%")[0]  # IPv6 scope id
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # any other host name may resolve outside the loopback
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class LoopbackGuard:
    """Refuses ``connect``, ``connect_ex`` and ``create_connection`` to a non-loopback address (nothing is
    sent: the check comes first) and records every attempt, so a test that swallows the error fails too."""

    def __init__(self):
        self.attempts: list[str] = []

    def check(self, family: int, address) -> None:
        if not is_loopback(family, address):
            self.attempts.append(repr(address))
            raise NonLoopbackConnection(
                f"tests talk to the loopback only: refused a connection to {address!r}"
            )

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
        real_create_connection = socket.create_connection
        guard = self

        def connect(sock, address):
            guard.check(sock.family, address)
            return real_connect(sock, address)

        def connect_ex(sock, address):
            guard.check(sock.family, address)
            return real_connect_ex(sock, address)

        def create_connection(address, *args, **kwargs):
            guard.check(socket.AF_INET6 if ":" in str(address[0]) else socket.AF_INET, address)
            return real_create_connection(address, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket, "create_connection", create_connection)


def _refused(guard: LoopbackGuard) -> str:
    attempts, guard.attempts = guard.attempts, []
    return f"connection(s) outside the loopback attempted: {', '.join(attempts)}"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch) -> Iterator[LoopbackGuard]:
    """Fails the test that connected (or tried to) to anything but the loopback, even if it caught the error:
    in its call (see ``pytest_runtest_call``), or at teardown for an attempt made by a fixture."""
    guard = LoopbackGuard()
    guard.install(monkeypatch)
    for name, value in LOOPBACK_ENV.items():  # a test that changed them gets them back
        monkeypatch.setenv(name, value)
    yield guard
    if guard.attempts:
        pytest.fail(_refused(guard), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    guard = getattr(item, "funcargs", {}).get("loopback_only")
    try:
        result = yield
    except BaseException:
        if guard is not None:
            guard.attempts.clear()  # the test fails already, with the guard's error if it let it through
        raise
    if guard is not None and guard.attempts:
        raise NonLoopbackConnection(_refused(guard))
    return result


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
