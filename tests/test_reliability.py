"""Reliability: bad input, killed runs, unwritable outputs and untrusted files, each through Kedro runs."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from naic_seg.core.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_checkpoint
from naic_seg.core.labels import ClassTable
from naic_seg.core.models import build_model
from tests.conftest import PROJECT_ROOT, STAGE, TINY, make_tree, write_tile

OUTPUTS = (
    "data/05_model_input/train_manifest.json",
    "data/05_model_input/val_manifest.json",
    "data/05_model_input/test_manifest.json",
    "data/08_reporting/dataset_report.json",
)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _label_900(root):
    label = np.full((32, 32), 300, np.uint16)
    label[1, 1] = 900
    return write_tile(root, "train", 1007, label=label)[1], "outside the valid set: 900"


def _label_8bit(root):
    return write_tile(root, "train", 1007, label=Image.fromarray(np.full((32, 32), 100, np.uint8)))[
        1
    ], "not 16-bit"


def _image_16bit(root):
    path = root / "train/images/1007.tif"
    Image.fromarray(np.full((32, 32), 5, np.uint16)).save(path)
    return path, "not 3-channel 8-bit RGB"


def _size_mismatch(root):
    return write_tile(root, "train", 1007, label=np.full((16, 16), 100, np.uint16))[
        1
    ], "differs from its image"


def _truncated(root):
    path = root / "train/images/1007.tif"
    truncate(path)
    return path, "truncated"


def _missing_label(root):
    (root / "train/labels/1007.png").unlink()
    return root / "train/images/1007.tif", "image without label"


def _extra_label(root):
    path = root / "train/labels/99.png"
    Image.fromarray(np.full((32, 32), 100, np.uint16)).save(path)
    return path, "label without image"


def _empty_folder(root):
    for path in (root / "test/images").iterdir():
        path.unlink()
    return root / "test/images", "no test images found"


BAD_INPUTS = {
    "truncated_tiff": _truncated,
    "label_value_900": _label_900,
    "eight_bit_label": _label_8bit,
    "sixteen_bit_image": _image_16bit,
    "label_size_differs": _size_mismatch,
    "missing_label": _missing_label,
    "extra_label": _extra_label,
    "empty_folder": _empty_folder,
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_the_file_and_keeps_previous_outputs(case, kedro_runner, tmp_path):
    root = make_tree(tmp_path / "tiles", n_train=6, n_test=2)
    params = {"data_root": str(root), "data_prep": {"holdout": 1}}
    kedro_runner.run("data_prep", params=params)
    before = {p: kedro_runner.path(p).read_bytes() for p in OUTPUTS}
    path, problem = BAD_INPUTS[case](root)
    with pytest.raises(Exception) as info:
        kedro_runner.run("data_prep", params=params)
    assert f"{path}: " in str(info.value) and problem in str(info.value)
    assert {p: kedro_runner.path(p).read_bytes() for p in OUTPUTS} == before


def test_rgba_image_is_converted_with_a_warning(kedro_runner, tmp_path, caplog):
    root = make_tree(tmp_path / "tiles", n_train=6, n_test=2)
    write_tile(root, "train", 1007, image=np.zeros((32, 32, 4), np.uint8))
    kedro_runner.run("data_prep", params={"data_root": str(root), "data_prep": {"holdout": 1}})
    assert "1007.tif: RGBA image converted to RGB" in caplog.text
    report = json.loads(kedro_runner.path("data/08_reporting/dataset_report.json").read_text())
    assert report["converted_images"] == 1


def test_non_image_files_are_skipped_with_a_warning(kedro_runner, tmp_path, caplog):
    root = make_tree(tmp_path / "tiles", n_train=6, n_test=2)
    for name in ("Thumbs.db", ".DS_Store", "1000.tif.aux.xml"):
        (root / "train/images" / name).write_bytes(b"x")
    kedro_runner.run("data_prep", params={"data_root": str(root), "data_prep": {"holdout": 1}})
    assert "Skipped 3 non-image file(s)" in caplog.text


def _train_once(kedro_runner, tmp_path):
    root = make_tree(tmp_path / "tiles", n_train=6, n_test=2)
    kedro_runner.run("data_prep", params={"data_root": str(root), "data_prep": {"holdout": 2}})
    return root


def test_manifest_naming_a_vanished_file_fails_before_training(kedro_runner, tmp_path):
    root = _train_once(kedro_runner, tmp_path)
    gone = Path(
        json.loads(kedro_runner.path("data/05_model_input/train_manifest.json").read_text())[0]["filename"]
    )
    gone.unlink()
    with pytest.raises(Exception, match=f"do not exist.*\n  - {gone}"):
        kedro_runner.run("train_stage1", params={"data_root": str(root), **TINY})
    assert not list(kedro_runner.path("data/06_models").glob("stage1_checkpoint.pt/*"))


def test_a_test_tile_that_vanished_fails_submit_before_any_prediction(kedro_runner, tmp_path, caplog):
    """README: a manifest naming a file that is gone fails submit before any work, listing the files."""
    from tests.pipelines.test_map_scenes import random_checkpoint

    root = _train_once(kedro_runner, tmp_path)
    test_manifest = json.loads(kedro_runner.path("data/05_model_input/test_manifest.json").read_text())
    gone = Path(test_manifest[-1]["filename"])
    gone.unlink()
    ckpt = random_checkpoint(tmp_path / "random.pt")
    params = {"data_root": str(root), "submit": {"checkpoints": [str(ckpt)], "workers": 0}}
    with pytest.raises(Exception, match=f"1 file\\(s\\) named by the manifest do not exist.*\n  - {gone}$"):
        kedro_runner.run("submit", params=params)
    assert "Prediction engine" not in caplog.text  # no model was built, no tile read
    out = kedro_runner.path("data/07_model_output")
    assert not out.exists() or not list(out.iterdir())  # no pickle, no zip, no temporary


def test_manifest_that_is_not_json_is_named(kedro_runner, tmp_path):
    root = _train_once(kedro_runner, tmp_path)
    manifest = kedro_runner.path("data/05_model_input/val_manifest.json")
    manifest.write_text('[{"filename": ')
    with pytest.raises(Exception, match=f"'{manifest}' is not valid JSON"):
        kedro_runner.run("train_stage1", params={"data_root": str(root), **TINY})


def test_an_output_that_cannot_be_written_fails_before_any_work(kedro_runner, tmp_path):
    root = make_tree(tmp_path / "tiles", n_train=4, n_test=1)
    blocker = kedro_runner.path("data/08_reporting")
    blocker.mkdir(parents=True, exist_ok=True)
    blocker.rmdir()
    blocker.write_text("a file where a folder should be")
    try:
        started = time.perf_counter()
        with pytest.raises(PermissionError, match=f"cannot write to '{blocker}'"):
            kedro_runner.run("data_prep", params={"data_root": str(root)})
        assert not kedro_runner.path("data/05_model_input/train_manifest.json").exists()
        assert time.perf_counter() - started < 30
    finally:
        blocker.unlink()


def test_a_training_work_folder_that_cannot_be_written_fails_before_training(kedro_runner, tmp_path):
    root = _train_once(kedro_runner, tmp_path)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    params = {
        "data_root": str(root),
        **TINY,
        "train_stage1": {**TINY["train_stage1"], "train": {**STAGE, "work_dir": str(blocker / "work")}},
    }
    with pytest.raises(PermissionError, match="cannot write to"):
        kedro_runner.run("train_stage1", params=params)


# --- killed runs -------------------------------------------------------------------------------------------


def kedro_cli(project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kedro", "run", *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for(condition, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before the condition held:\n{proc.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_sigkill_during_training_then_the_same_command_resumes(kedro_runner):
    kedro_project = kedro_runner.project
    args = [
        "--env",
        "demo",
        "--pipeline",
        "train_stage1",
        "--params",
        "train_stage1.train.iterations=40,train_stage1.train.input_size=64,train_stage1.train.workers=0,"
        "train_stage1.train.checkpoint_interval=5,train_stage1.train.log_interval=5,"
        "train_stage1.train.eval_interval=40,train_stage1.model.encoder=resnet18,"
        "train_stage1.model.pretrained=null",
    ]
    prep = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--env", "demo", "--pipeline", "data_prep"],
        cwd=kedro_project,
        capture_output=True,
        text=True,
    )
    assert prep.returncode == 0, prep.stdout[-3000:]
    resume = kedro_project / "data/06_models/stage1_work/resume.pt"
    proc = kedro_cli(kedro_project, *args)
    wait_for(lambda: resume.exists() and torch.load(resume, weights_only=True)["iteration"] >= 10, 180, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(resume, weights_only=True)["iteration"]
    assert 10 <= killed_at < 40
    again = kedro_cli(kedro_project, *args)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    assert f"Resuming from iteration {killed_at}" in out
    assert torch.load(resume, weights_only=True)["iteration"] == 40


def _trained_for_submit(kedro_runner, tmp_path) -> tuple[Path, list[str]]:
    """300 test tiles of 256 px and both stages trained; the ``kedro run`` arguments of a slow submit."""
    root = make_tree(tmp_path / "tiles", n_train=6, n_test=300, size=256)
    kedro_runner.run("data_prep", params={"data_root": str(root), "data_prep": {"holdout": 2}})
    kedro_runner.run("train_stage1", params={"data_root": str(root), **TINY})
    kedro_runner.run("train_stage2", params={"data_root": str(root), **TINY})
    params = f"data_root={root},submit.workers=0,submit.batch_size=1,submit.input_size=256"
    return root, ["--pipeline", "submit", "--params", params]


def test_sigkill_during_submit_leaves_no_partial_pickle_or_zip(kedro_runner, tmp_path):
    project = kedro_runner.project
    _, args = _trained_for_submit(kedro_runner, tmp_path)
    out_dir = project / "data/07_model_output"
    proc = kedro_cli(project, *args)
    # The progress signal: records reach the pickle's temporary file (its first buffer flushed).
    wait_for(
        lambda: any(p.stat().st_size > 0 for p in out_dir.glob(".test_predictions.pkl.*.tmp")), 180, proc
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(out_dir.glob(".test_predictions.pkl.*.tmp")), (
        "the kill did not land while the pickle was written"
    )
    assert not (out_dir / "test_predictions.pkl").exists()
    assert not (out_dir / "submission.zip").exists()


def test_sigkill_during_the_zip_write_leaves_no_zip_then_the_same_command_completes(kedro_runner, tmp_path):
    from naic_seg.core.submission import check_submission, expected_entries

    project = kedro_runner.project
    _, args = _trained_for_submit(kedro_runner, tmp_path)
    out_dir = project / "data/07_model_output"
    proc = kedro_cli(project, *args)
    wait_for(lambda: any(out_dir.glob(".submission.zip.*.tmp")), 300, proc)  # the zip is being written
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(out_dir.glob(".submission.zip.*.tmp")), "the kill did not land while the zip was written"
    assert not (out_dir / "submission.zip").exists()
    assert (out_dir / "test_predictions.pkl").exists()  # the step before finished
    again = kedro_cli(project, *args)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    manifest = json.loads((project / "data/05_model_input/test_manifest.json").read_text())
    values = ClassTable.naic().values
    assert check_submission(out_dir / "submission.zip", expected_entries(manifest), values) == 300
    assert sorted(p.name for p in out_dir.iterdir()) == ["submission.zip", "test_predictions.pkl"]


def _write_then_kill(script: str, tmp_sibling: str, folder: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size > 1_000_000 for p in folder.glob(tmp_sibling)):
        assert proc.poll() is None, "the writer finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_while_a_manifest_is_written_leaves_the_previous_version(tmp_path):
    target = tmp_path / "train_manifest.json"
    old = [{"filename": "a.tif", "ann": {"seg_map": "a.png"}}]
    target.write_text(json.dumps(old))
    script = (
        f"from naic_seg.core.atomic import write_json\n"
        f"write_json({str(target)!r}, [{{'filename': 'x' * 100, 'ann': {{'seg_map': 'y'}}}}] * 3_000_000)"
    )
    _write_then_kill(script, ".train_manifest.json.*.tmp", tmp_path)
    assert json.loads(target.read_text()) == old


def test_sigkill_while_a_checkpoint_is_written_leaves_the_previous_version(tmp_path):
    target = tmp_path / "stage1_checkpoint.pt"
    model = {"arch": "pspnet", "encoder": "resnet18", "output_stride": 16, "num_classes": 8}
    save_checkpoint(make_checkpoint(model, build_model(**model).state_dict(), 7, {}, []), target)
    script = (
        "import torch\nfrom naic_seg.core.checkpoint import save_checkpoint\n"
        f"save_checkpoint({{'big': [torch.zeros(2_000_000) for _ in range(400)]}}, {str(target)!r})"
    )
    _write_then_kill(script, ".stage1_checkpoint.pt.*.tmp", tmp_path)
    assert load_checkpoint(target)["iteration"] == 7


# --- untrusted files ---------------------------------------------------------------------------------------


def test_every_torch_load_in_the_project_uses_weights_only():
    calls = []
    for path in (PROJECT_ROOT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((str(path), kwargs.get("weights_only")))
    assert calls, "expected torch.load calls to check"
    assert all(flag == "True" for _, flag in calls), calls


def test_a_checkpoint_that_pickles_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "naic-seg-checkpoint/1", "payload": ClassTable.naic()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_a_checkpoint_of_an_unknown_model_configuration_is_refused(kedro_runner, tmp_path):
    root = _train_once(kedro_runner, tmp_path)
    model = {"arch": "unet", "encoder": "resnet18", "output_stride": 16, "num_classes": 8}
    state = build_model(**{**model, "arch": "pspnet"}).state_dict()
    foreign = tmp_path / "foreign.pt"
    save_checkpoint(make_checkpoint(model, state, 1, {}, ClassTable.naic().as_config()), foreign)
    with pytest.raises(CheckpointError, match=f"checkpoint '{foreign}' does not fit.*unet"):
        kedro_runner.run("submit", params={"data_root": str(root), "submit": {"checkpoints": [str(foreign)]}})
    assert not (kedro_runner.project / "data/07_model_output/test_predictions.pkl").exists()


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="is not a naic-seg checkpoint"):
        load_checkpoint(path)


def test_a_full_disk_during_a_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    import errno

    from naic_seg.core import atomic

    target = tmp_path / "val_manifest.json"
    target.write_text("[]")
    real_dump = json.dump

    def dump_until_full(obj, fh, **kwargs):
        fh.write("[" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.json, "dump", dump_until_full)
    with pytest.raises(OSError, match="No space left"):
        atomic.write_json(target, [1, 2, 3])
    monkeypatch.setattr(atomic.json, "dump", real_dump)
    assert target.read_text() == "[]"
    assert [p.name for p in tmp_path.iterdir()] == ["val_manifest.json"]


# --- a full disk while a checkpoint, the zip or a scene map is written ------------------------------------


def _disk_fills_after(n_bytes: int):
    """What a writer meets when the disk fills: ``n_bytes`` of the file land, then ENOSPC."""
    import errno

    def fill(path) -> None:
        with open(path, "r+b") as fh:
            fh.truncate(n_bytes)
        raise OSError(errno.ENOSPC, "No space left on device")

    return fill


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_full_disk_while_a_checkpoint_is_saved_keeps_the_last_version_loadable(tmp_path, monkeypatch):
    from naic_seg.datasets import TorchCheckpointDataset

    model = {"arch": "pspnet", "encoder": "resnet18", "output_stride": 16, "num_classes": 8}
    state = build_model(**model).state_dict()
    dataset = TorchCheckpointDataset(str(tmp_path / "stage1_checkpoint.pt"))
    dataset.save(make_checkpoint(model, state, 7, {}, []))
    good = dataset.load().path
    good_bytes = good.read_bytes()
    real_save = torch.save

    def save_until_full(obj, path, **kwargs):
        real_save(obj, path, **kwargs)
        _disk_fills_after(len(good_bytes) // 3)(path)

    monkeypatch.setattr(torch, "save", save_until_full)
    # Kedro wraps the dataset's error; the message names the file and the reason.
    with pytest.raises(Exception, match=r"cannot write '.*stage1_checkpoint\.pt': No space left on device"):
        TorchCheckpointDataset(str(tmp_path / "stage1_checkpoint.pt")).save(
            make_checkpoint(model, state, 8, {}, [])
        )
    monkeypatch.setattr(torch, "save", real_save)
    latest = TorchCheckpointDataset(str(tmp_path / "stage1_checkpoint.pt")).load()
    assert latest.path == good and good.read_bytes() == good_bytes  # the new version never appears
    assert load_checkpoint(latest.path)["iteration"] == 7
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p != good]  # no temporary, no partial file


def test_a_full_disk_while_the_zip_is_written_keeps_the_previous_zip(tmp_path, monkeypatch):
    import errno
    import zipfile

    from naic_seg.core import submission

    values = ClassTable.naic().values
    expected = {f"results/{i}.png": (8, 8) for i in range(5)}

    def entries(value):
        return [(name, submission.encode_png(np.full((8, 8), value, np.uint16))) for name in expected]

    target = tmp_path / "submission.zip"
    submission.write_submission(target, entries(100), expected, values)
    before = target.read_bytes()
    real_writestr, written = zipfile.ZipFile.writestr, []

    def writestr_until_full(self, name, data, *args, **kwargs):
        if len(written) == 3:  # three entries in, the fourth does not fit
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(name)
        return real_writestr(self, name, data, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", writestr_until_full)
    with pytest.raises(OSError, match=r"cannot write '.*submission\.zip': No space left on device"):
        submission.write_submission(target, entries(200), expected, values)
    assert target.read_bytes() == before and _only(tmp_path) == ["submission.zip"]
    assert submission.check_submission(target, expected, values) == 5


def test_a_full_disk_while_a_scene_map_is_written_keeps_the_previous_map(tmp_path, monkeypatch):
    import rasterio.shutil

    from naic_seg.core.scenes import SceneOptions, map_scene
    from tests.core.test_scenes import conv_logits, random_scene, write_scene

    scene = write_scene(tmp_path / "scene.tif", random_scene(200, 300))
    maps = tmp_path / "maps"
    target, options = maps / "scene.tif", SceneOptions(window=64, batch_size=4)
    map_scene(scene, target, conv_logits(seed=1), ClassTable.naic(), options)
    before = target.read_bytes()
    real_copy = rasterio.shutil.copy

    def copy_until_full(source, destination, **kwargs):  # the COG of the strips: the map's last write
        real_copy(source, destination, **kwargs)
        _disk_fills_after(Path(destination).stat().st_size // 2)(destination)

    monkeypatch.setattr(rasterio.shutil, "copy", copy_until_full)
    with pytest.raises(OSError, match=r"cannot write '.*maps/scene\.tif': No space left on device"):
        map_scene(scene, target, conv_logits(seed=2), ClassTable.naic(), options)
    assert target.read_bytes() == before and _only(maps) == ["scene.tif"]  # no strips, no partial COG
