"""`.ci/run`: in CI (CI=true) missing real data fails the job; elsewhere the real-data tests are skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import PROJECT_ROOT


def run_ci(tmp_path: Path, env: dict, with_data: bool = False) -> subprocess.CompletedProcess:
    """`.ci/run` in a copy of the repository's CI folder beside a `shared/` that has rs8 tiles or not, with
    `make` (the test run itself) replaced by a stub that reports what it was given."""
    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / ".ci" / "run", clone / ".ci" / "run")
    if with_data:
        (tmp_path / "shared/data/rs8/train/images").mkdir(parents=True)
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "make").write_text('#!/bin/sh\necho "make $* with NAIC_SEG_RS8=${NAIC_SEG_RS8:-}"\n')
    (stub / "make").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "NAIC_SEG_RS8")}
    full = {**base, "PATH": f"{stub}:{base['PATH']}", "NAIC_SEG_CHROMIUM": "/bin/true", **env}
    return subprocess.run(
        ["bash", str(clone / ".ci" / "run")], env=full, capture_output=True, text=True, timeout=60
    )


def test_ci_without_the_rs8_tiles_fails_naming_what_is_missing(tmp_path):
    result = run_ci(tmp_path, {"CI": "true"})
    assert result.returncode != 0
    assert (
        "CI=true but no rs8 tiles" in result.stderr and "../shared/data/rs8/train is absent" in result.stderr
    )
    assert "make" not in result.stdout  # no test ran


def test_ci_with_a_wrong_rs8_path_fails(tmp_path):
    result = run_ci(tmp_path, {"CI": "true", "NAIC_SEG_RS8": str(tmp_path / "nowhere")})
    assert result.returncode != 0
    assert f"NAIC_SEG_RS8={tmp_path / 'nowhere'} does not hold train/images" in result.stderr


def test_ci_with_the_tiles_runs_the_tests_on_them(tmp_path):
    result = run_ci(tmp_path, {"CI": "true"}, with_data=True)
    assert result.returncode == 0, result.stderr
    assert f"make test with NAIC_SEG_RS8={(tmp_path / 'shared/data/rs8').resolve()}" in result.stdout


def test_outside_ci_missing_tiles_skip_the_real_data_tests(tmp_path):
    result = run_ci(tmp_path, {})
    assert result.returncode == 0, result.stderr
    assert "the real-data tests will be skipped" in result.stdout
    assert "make test with NAIC_SEG_RS8=\n" in result.stdout
