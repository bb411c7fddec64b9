"""``kedro view``: the project command's wiring, in-process (click's CliRunner) and as a real command."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from kedro.framework.startup import bootstrap_project

import naic_seg
from naic_seg.cli import cli, view_sources
from tests.conftest import make_project

OFFLINE = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "KEDRO_DISABLE_TELEMETRY": "true"}


@pytest.fixture
def project(tmp_path, viewer_data) -> Path:
    """A throw-away project whose catalog folders hold the synthetic maps, scenes and reports."""
    project = make_project(tmp_path / "project")
    shutil.copytree(viewer_data.maps, project / "data/07_model_output/scene_maps")
    shutil.copytree(viewer_data.scenes, project / "data/01_raw/naic/scenes")
    (project / "data/08_reporting").mkdir(parents=True)
    shutil.copy(viewer_data.areas, project / "data/08_reporting/scene_areas.json")
    shutil.copy(viewer_data.scores, project / "data/08_reporting/scene_scores.json")
    return project


def invoke(project: Path, monkeypatch, *args: str):
    """Run ``kedro view ARGS`` in-process; the server is not started: (result, the app it would serve)."""
    served = {}

    def keep(app, sock, log_level="info"):
        served["app"] = app
        sock.close()

    monkeypatch.setattr("naic_seg.viewer.server.serve", keep)
    metadata = bootstrap_project(project)
    result = CliRunner().invoke(cli, ["view", "--port", "0", *args], obj=metadata)
    return result, served.get("app")


def test_view_serves_the_maps_scenes_areas_and_scores_the_catalog_names(project, monkeypatch):
    result, app = invoke(project, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "3 scene map(s) from" in result.output and "Viewer at http://127.0.0.1:" in result.output
    scenes = {s["name"]: s for s in TestClient(app).get("/api/scenes").json()["scenes"]}
    assert scenes["blocks"]["layers"] == ["map", "image"], "the imagery comes from the catalog's scenes"
    assert scenes["blocks"]["areas_source"] == "from the area table map_scenes wrote"
    assert scenes["blocks"]["scores"]["mIoU"] == pytest.approx(
        json.loads((project / "data/08_reporting/scene_scores.json").read_text())["scenes"]["blocks"]["mIoU"]
    )


def test_other_maps_get_their_own_areas_and_no_scores_of_the_project(project, monkeypatch, tmp_path):
    other = tmp_path / "other_maps"
    other.mkdir()
    shutil.copy(project / "data/07_model_output/scene_maps/blocks.tif", other / "blocks.tif")
    elsewhere = tmp_path / "imagery"
    shutil.copytree(project / "data/01_raw/naic/scenes", elsewhere)
    result, app = invoke(project, monkeypatch, "--maps", str(other), "--params", f"scenes_root={elsewhere}")
    assert result.exit_code == 0, result.output
    (blocks,) = TestClient(app).get("/api/scenes").json()["scenes"]
    assert blocks["scores"] is None and blocks["areas_source"] == "read back from the map"
    assert blocks["layers"] == ["map", "image"]


def test_view_sources_follow_the_environment_and_runtime_parameters(project):
    bootstrap_project(project)
    base = view_sources(project, None, {})
    assert base["maps"] == project / "data/07_model_output/scene_maps"
    assert base["areas"] == project / "data/08_reporting/scene_areas.json"
    assert base["scores"] == project / "data/08_reporting/scene_scores.json"
    assert base["scenes"] == project / "data/01_raw/naic/scenes" and len(base["classes"]) == 8
    assert view_sources(project, "demo", {})["scenes"] == project / "data/01_raw/demo_scenes"
    assert view_sources(project, None, {"scenes_root": "/data/s"})["scenes"] == Path("/data/s")


def test_a_missing_folder_or_a_busy_port_is_a_clear_error(project, monkeypatch, tmp_path):
    result, _ = invoke(project, monkeypatch, "--maps", str(tmp_path / "absent"))
    assert result.exit_code != 0 and "map_scenes" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result, _ = invoke(project, monkeypatch, "--port", str(port))
    assert result.exit_code != 0 and "--port" in result.output


def test_python_m_naic_seg_still_finds_kedros_run():
    from kedro.framework.cli.project import run
    from kedro.framework.cli.utils import find_run_command

    assert find_run_command("naic_seg") is run


def read_url(proc: subprocess.Popen, timeout_s: float) -> tuple[str, str]:
    """The URL ``kedro view`` prints, and everything it printed until then."""
    deadline, seen = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            seen += line
            if line.startswith("Viewer at "):
                return line.split()[2], seen
    raise AssertionError(f"kedro view printed no URL within {timeout_s} s:\n{seen}")


@pytest.mark.slow
def test_kedro_view_starts_prints_its_url_serves_the_page_and_stops(project):
    env = os.environ | OFFLINE | {"PYTHONPATH": str(Path(naic_seg.__file__).parents[1])}
    cmd = [sys.executable, "-m", "kedro", "view", "--port", "0"]
    proc = subprocess.Popen(
        cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    try:
        url, _ = read_url(proc, timeout_s=120)
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"/static/vendor/leaflet/leaflet.js" in response.read()
        with urllib.request.urlopen(url + "api/scenes", timeout=10) as response:
            assert [s["name"] for s in json.load(response)["scenes"]] == ["blocks", "geo", "scene_0"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
