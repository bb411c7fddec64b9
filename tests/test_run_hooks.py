"""Readable runs: the MLflow run's name and git tags, the known warnings silenced, the closing summary."""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path

from naic_seg import quiet
from naic_seg.hooks import git_state, run_name, summary_lines


def _last_run(project: Path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("naic_seg")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]


def test_the_demo_run_is_named_and_tagged(demo_run):
    run = _last_run(demo_run)
    assert run.info.run_name.startswith("demo __default__ pspnet/resnet18 20")
    assert run.data.tags["naic_seg.env"] == "demo"
    # the throw-away test project is no git checkout
    assert run.data.tags["git.commit"] == "unknown" and run.data.tags["git.dirty"] == "unknown"


def test_git_state_gives_the_commit_and_whether_tracked_files_changed(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert git_state(tmp_path) == {"git.commit": head.strip(), "git.dirty": "false"}
    (tmp_path / "a.txt").write_text("2")
    assert git_state(tmp_path)["git.dirty"] == "true"


def test_run_name_has_env_pipelines_model_and_time():
    params = {"train_stage1": {"model": {"arch": "deeplabv3plus", "encoder": "resnet50"}}}
    name = run_name("rs8", params, ["train_stage1", "train_stage2"], now=0)
    assert name == "rs8 train_stage1+train_stage2 deeplabv3plus/resnet50 1970-01-01 00:00"


def test_only_the_known_warnings_are_silenced():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet.install()
        warnings.warn("register_new_resolver() is deprecated and will be removed", UserWarning, stacklevel=1)
        warnings.warn("Support for class-based `config` is deprecated", _pydantic_category(), stacklevel=1)
        warnings.warn(
            "register_new_resolver() is deprecated", DeprecationWarning, stacklevel=1
        )  # other class
        warnings.warn(
            "Hint: Inferred schema contains integer column(s). Integer ...", UserWarning, stacklevel=1
        )
        warnings.warn("something else entirely", UserWarning, stacklevel=1)
    assert [(w.category, str(w.message)) for w in seen] == [
        (DeprecationWarning, "register_new_resolver() is deprecated"),
        (UserWarning, "something else entirely"),
    ]


def _pydantic_category():
    from pydantic.warnings import PydanticDeprecatedSince20

    return PydanticDeprecatedSince20


def test_sessions_quieten_the_parameter_validation_note(demo_run):
    assert logging.getLogger("kedro.validation.parameter_validator").level == logging.WARNING


def test_the_summary_names_scores_files_and_the_mlflow_command(demo_run):
    from kedro.io import DataCatalog

    from naic_seg.datasets import AtomicJSONDataset, SubmissionZipDataset

    data = demo_run / "data"
    catalog = DataCatalog(
        {
            "stage2_metrics": AtomicJSONDataset(str(data / "08_reporting/stage2_metrics.json")),
            "submission_metrics": AtomicJSONDataset(str(data / "08_reporting/submission_metrics.json")),
            "submission": SubmissionZipDataset(str(data / "07_model_output/submission.zip")),
        }
    )
    lines = summary_lines(set(catalog.keys()), catalog, ("abc123", "demo run"))
    text = "\n".join(lines)
    assert "stage 2 hold-out: mIoU 0." in text and "submission on test labels: mIoU 0." in text
    assert f"submission zip: {data / '07_model_output/submission.zip'}" in text
    assert "MLflow run abc123 ('demo run')" in text and "mlflow ui --backend-store-uri " in text
    assert summary_lines(set(), catalog, None) == []


def test_the_run_name_parameter_and_mlflow_yml_names_win_over_the_generated_one(tmp_path):
    import mlflow

    from naic_seg.hooks import RunHook

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("run names")  # not whichever experiment an earlier test left active
    run_params = {"env": "rs8", "pipeline_names": ["submit"], "project_path": str(tmp_path)}
    cases = [
        ({"run_name": "my run"}, "submit", "my run"),  # the parameter wins
        ({}, "named in mlflow.yml", "named in mlflow.yml"),  # kedro-mlflow's configured name is kept
        ({}, "submit", "rs8 submit "),  # kedro-mlflow's default (the pipeline): replaced
    ]
    for params, opened_as, expected in cases:
        hook = RunHook()
        hook.params = params
        with mlflow.start_run(run_name=opened_as) as run:
            hook.before_pipeline_run(run_params, None, None)
        name = mlflow.get_run(run.info.run_id).info.run_name
        assert name.startswith(expected) and hook.run == (run.info.run_id, name)
