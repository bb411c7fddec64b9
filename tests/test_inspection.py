"""Inspection tools: notebooks/inspect_run.ipynb on a finished demo run, and `kedro viz build` of the flow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

from tests.conftest import PROJECT_ROOT
from tests.pipelines.test_flow import mlflow_runs

NOTEBOOK = PROJECT_ROOT / "notebooks" / "inspect_run.ipynb"
# Nothing may reach the network: MLflow, Kedro and Kedro-Viz telemetry off in every child process.
OFFLINE = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "KEDRO_DISABLE_TELEMETRY": "true"}


class ThisPythonKernelManager(AsyncKernelManager):
    """Starts the "python3" kernel with this interpreter (the venv's ipykernel), whatever kernelspecs exist.

    With no kernel directories to search, jupyter_client falls back to ipykernel's built-in spec, whose
    command is ``sys.executable -m ipykernel_launcher``: no `ipykernel install` is needed, and a user-wide
    "python3" kernelspec pointing at another Python cannot take over.
    """

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return KernelSpecManager(kernel_dirs=[])


def outputs(nb) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


@pytest.mark.slow
def test_inspect_run_notebook_executes_on_a_demo_run(demo_run, tmp_path, monkeypatch):
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter_runtime"))  # kernel connection files
    project = demo_run
    _, runs = mlflow_runs(project)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "save it without outputs"

    workdir = tmp_path / "notebooks"  # the kernel's cwd, as if the notebook were opened from notebooks/
    workdir.mkdir()
    client = NotebookClient(
        nb,
        kernel_name="python3",
        kernel_manager_class=ThisPythonKernelManager,
        timeout=300,
        resources={"metadata": {"path": str(workdir)}},
    )
    assert client.create_kernel_manager().kernel_spec.argv[:3] == [sys.executable, "-m", "ipykernel_launcher"]
    env = {
        **os.environ,
        **OFFLINE,
        "NAIC_SEG_PROJECT": str(project),
        "NAIC_SEG_MLFLOW_URI": f"sqlite:///{project / 'mlflow.db'}",
        "MPLBACKEND": "Agg",  # as in CI (.ci/run): the notebook must still show its figures inline
        "IPYTHONDIR": str(tmp_path / "ipython"),
    }
    start = time.perf_counter()
    try:
        client.execute(env=env)  # raises CellExecutionError on the first failing cell
    finally:
        nbformat.write(nb, tmp_path / "inspect_run.executed.ipynb")  # left for a look when it fails
    print(f"notebook executed in {time.perf_counter() - start:.1f} s")

    outs = outputs(nb)
    images = [out for out in outs if "image/png" in out.get("data", {})]
    assert len(images) >= 2, "expected the validation curves and the test tiles"
    text = "".join(out.get("text", "") + out.get("data", {}).get("text/plain", "") for out in outs)
    assert "stage2.val_mIoU" in text and "stage2.final_mIoU" in text
    assert runs[0].info.run_id in text  # the run it opened is the one just made
    assert "submit.test_mIoU" in text  # the demo's test tiles have labels, so submit scored its zip
    assert "Traceback" not in text


GIS = {"scene_confidence", "scene_polygons", "scene_styles", "scene_stac", "scene_area_estimates"}


def test_kedro_viz_build_draws_every_pipeline(kedro_project, tmp_path):
    build = kedro_project / "build"
    shutil.rmtree(build, ignore_errors=True)
    env = {**os.environ, **OFFLINE, "XDG_CONFIG_HOME": str(tmp_path / "config")}  # no telemetry uuid in ~
    start = time.perf_counter()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "kedro", "viz", "build"],
            cwd=kedro_project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        elapsed = time.perf_counter() - start
        print(f"kedro viz build took {elapsed:.1f} s")
        log = result.stdout + result.stderr
        # It exits 0 even when the build fails, printing an error instead: check the message and the files.
        assert result.returncode == 0 and "Success!" in log, log[-3000:]
        assert (build / "index.html").is_file()

        main = json.loads((build / "api" / "main").read_text())
        assert {p["id"] for p in main["pipelines"]} == {
            "__default__",
            "data_prep",
            "train_stage1",
            "train_stage2",
            "submit",
            "map_scenes",
        }
        expected = {
            "data_prep": {"train_manifest", "val_manifest", "test_manifest"},
            "train_stage1": {"train_manifest", "val_manifest", "stage1_checkpoint"},
            "train_stage2": {"train_manifest", "val_manifest", "stage1_checkpoint", "stage2_checkpoint"},
            "submit": {"test_manifest", "stage2_checkpoint", "test_predictions", "submission"},
            "map_scenes": {"scenes", "stage2_checkpoint", "scene_maps", "scene_areas", "scene_scores"} | GIS,
        }
        for name, datasets in expected.items():
            graph = json.loads((build / "api" / "pipelines" / name).read_text())
            assert graph["selected_pipeline"] == name
            data = {n["name"]: n for n in graph["nodes"] if n["type"] == "data"}
            assert datasets <= data.keys(), (name, sorted(data))
            assert any(n["type"] == "task" for n in graph["nodes"]), name
        data = {n["name"]: n for n in main["nodes"] if n["type"] == "data"}
        assert set().union(*expected.values()) <= data.keys()
        assert data["stage2_checkpoint"]["dataset_type"].endswith("TorchCheckpointDataset")
        assert data["submission"]["dataset_type"].endswith("SubmissionZipDataset")
        assert elapsed < 120, f"kedro viz build took {elapsed:.0f} s"
    finally:
        shutil.rmtree(build, ignore_errors=True)
