"""map_scenes through Kedro: scenes folder -> COG maps, areas, quick-looks, scores, tracked in MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from naic_seg.core.checkpoint import make_checkpoint, save_checkpoint
from naic_seg.core.labels import ClassTable
from naic_seg.core.models import build_model
from naic_seg.core.scenes import score_map
from tests.conftest import STAGE
from tests.pipelines.test_flow import mlflow_runs
from tests.test_reliability import kedro_cli, wait_for

TRANSFORM = rasterio.transform.from_origin(500_000.0, 4_000_000.0, 0.5, 0.5)
MODEL = {"arch": "pspnet", "encoder": "resnet18", "output_stride": 16, "num_classes": 8}


def random_checkpoint(
    path: Path, input_size: int = 32, tile_size: int = 64, mlflow_run_id: str | None = None
) -> Path:
    torch.manual_seed(0)
    state = build_model(**MODEL).state_dict()
    preprocess = {"input_size": input_size, "tile_size": tile_size}
    checkpoint = make_checkpoint(MODEL, state, 1, {}, ClassTable.naic().as_config(), "stage2", preprocess)
    checkpoint["mlflow_run_id"] = mlflow_run_id  # as train_stage leaves it: the run that trained the model
    save_checkpoint(checkpoint, path)
    return path


def assert_cog_like(map_path: Path, scene_path: Path) -> None:
    with rasterio.open(scene_path) as scene, rasterio.open(map_path) as out:
        assert (out.width, out.height) == (scene.width, scene.height)
        assert out.crs == scene.crs and out.transform == scene.transform
        assert out.count == 1 and out.dtypes[0] == "uint8" and out.nodata == 255
        assert out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert out.colormap(1)[0][:3] == (31, 119, 180)
        if max(out.width, out.height) > 512:
            assert out.overviews(1), f"{map_path} has no overviews"
        if scene.nodata is not None:  # nodata in, nodata out, and only there
            np.testing.assert_array_equal(out.read(1) == 255, scene.dataset_mask() == 0)


PRODUCT_SUFFIXES = (
    ".tif",
    "_confidence.tif",
    ".qml",
    "_confidence.qml",
    ".tif.aux.xml",
    "_polygons.gpkg",
    ".png",
    ".stac.json",
)


def product_files(names) -> list[str]:
    return sorted(["collection.json", *(f"{n}{s}" for n in names for s in PRODUCT_SUFFIXES)])


def registered_model_run(project: Path) -> str:
    """A run in the project's MLflow store with a registered model version, as train_stage2 leaves one."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("naic_seg")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("naic_seg")
    run = client.create_run(experiment_id)
    if not client.search_registered_models("name = 'naic_seg'"):  # an earlier test's run may have made it
        client.create_registered_model("naic_seg")
    client.create_model_version("naic_seg", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_demo_scenes_are_mapped_scored_and_logged_with_every_gis_product(kedro_runner, tmp_path):
    project = kedro_runner.project
    training_run = registered_model_run(project)
    ckpt = random_checkpoint(tmp_path / "random.pt", mlflow_run_id=training_run)
    options = {"checkpoints": [str(ckpt)], "batch_size": 4, "device": "cpu"}
    options |= {"confidence": True, "vector": {"min_area_m2": 25}}
    kedro_runner.run("map_scenes", env="demo", params={"map_scenes": options})

    scenes = project / "data/01_raw/demo_scenes"
    maps = project / "data/07_model_output/scene_maps"
    assert sorted(p.name for p in maps.iterdir()) == product_files(["scene_0", "scene_1"])  # no temporary
    for name in ("scene_0", "scene_1"):
        assert_cog_like(maps / f"{name}.tif", scenes / f"{name}.tif")
    with rasterio.open(maps / "scene_0.tif") as src:
        corner = src.read(1, window=((0, 140), (0, 140)))
    assert (corner == 255).all()  # the synthetic scene's nodata corner (700 / 5 rows, 560 / 4 columns)

    areas = json.loads((project / "data/08_reporting/scene_areas.json").read_text())
    assert sorted(areas) == ["scene_0", "scene_1"]
    a0 = areas["scene_0"]
    assert a0["mapped_pixels"] + a0["nodata_pixels"] == 700 * 560
    assert a0["nodata_pixels"] == 140 * 140
    assert a0["mapped_hectares"] == pytest.approx(a0["mapped_pixels"] * 0.25 / 1e4)
    assert sum(r["pixels"] for r in a0["classes"]) == a0["mapped_pixels"]

    report = json.loads((project / "data/08_reporting/scene_scores.json").read_text())
    table = ClassTable.naic()
    expected = score_map(maps / "scene_1.tif", scenes / "scene_1_label.tif", table)
    assert report["evaluated"] and report["scenes"]["scene_1"]["mIoU"] == pytest.approx(expected["mIoU"])

    client, runs = mlflow_runs(project)
    run = next(r for r in runs if r.info.run_id != training_run)
    assert run.data.metrics["map.scene_0.mIoU"] == pytest.approx(report["scenes"]["scene_0"]["mIoU"])
    assert run.data.metrics["map.mIoU"] == pytest.approx(report["overall"]["mIoU"])
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "map")}
    assert {"map/scene_areas.json", "map/scene_area_estimates.json", "map/scene_map_model.json"} <= logged
    quicklooks = {a.path for a in client.list_artifacts(run.info.run_id, "map/quicklooks")}
    assert quicklooks == {"map/quicklooks/scene_0.png", "map/quicklooks/scene_1.png"}
    styles = {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "map/styles")}
    assert styles == {f"scene_{i}{s}" for i in (0, 1) for s in (".qml", "_confidence.qml", ".tif.aux.xml")}
    stac = {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "map/stac")}
    assert stac == {"collection.json", "scene_0.stac.json", "scene_1.stac.json"}
    assert_gis_products(maps, areas, run, training_run)


def assert_gis_products(maps: Path, areas: dict, run, training_run: str) -> None:
    """Confidence aligned with the map, polygons covering what it maps, adjusted areas, and STAC Items whose
    assets are the files beside them, linked to the run and the registered model version."""
    import pyogrio.raw
    import pystac

    for name in ("scene_0", "scene_1"):
        with rasterio.open(maps / f"{name}.tif") as m, rasterio.open(maps / f"{name}_confidence.tif") as c:
            assert (c.width, c.height, c.crs, c.transform) == (m.width, m.height, m.crs, m.transform)
            np.testing.assert_array_equal(c.read(1) == 0, m.read(1) == 255)
            crs = m.crs
        meta, _, _, columns = pyogrio.raw.read(maps / f"{name}_polygons.gpkg")
        assert rasterio.crs.CRS.from_user_input(meta["crs"]) == crs
        assert columns[meta["fields"].tolist().index("pixels")].sum() == areas[name]["mapped_pixels"]

    estimates = json.loads((maps.parents[1] / "08_reporting/scene_area_estimates.json").read_text())
    assert estimates["estimated"] and estimates["labelled_scenes"] == ["scene_0", "scene_1"]
    mapped = sum(a["mapped_hectares"] for a in areas.values())
    assert estimates["mapped_hectares"] == pytest.approx(mapped)
    assert sum(r["adjusted_hectares"] for r in estimates["classes"]) == pytest.approx(mapped)
    water = estimates["classes"][0]
    assert run.data.metrics["map.area.water.adjusted_ha"] == pytest.approx(water["adjusted_hectares"])
    assert run.data.metrics["map.area.water.ci95_ha"] == pytest.approx(water["ci95_hectares"])

    from mlflow import MlflowClient

    registry = MlflowClient(f"sqlite:///{maps.parents[2] / 'mlflow.db'}")
    (version,) = [v.version for v in registry.search_model_versions(f"run_id = '{training_run}'")]
    collection = pystac.Collection.from_file(str(maps / "collection.json"))
    items = {i.id: i for i in collection.get_items()}
    assert sorted(items) == ["scene_0", "scene_1"]
    for name, item in items.items():
        assert set(item.assets) == {
            "map",
            "confidence",
            "polygons",
            "style",
            "confidence_style",
            "category_names",
            "quicklook",
        }
        assert all(
            (maps / a.href).resolve().is_file() and not a.href.startswith("/") for a in item.assets.values()
        )
        via = {link.href for link in item.links if link.rel == "via"}
        assert via == {f"runs:/{run.info.run_id}", f"models:/naic_seg/{version}"}
        assert item.properties["naic_seg:mapped_hectares"] == pytest.approx(areas[name]["mapped_hectares"])


def small_scene_folder(folder: Path) -> Path:
    folder.mkdir()
    profile = {"driver": "GTiff", "width": 80, "height": 60, "count": 3, "dtype": "uint8"}
    with rasterio.open(folder / "small.tif", "w", crs="EPSG:32650", transform=TRANSFORM, **profile) as dst:
        dst.write(np.random.default_rng(0).integers(1, 255, (3, 60, 80), dtype=np.uint8))
    return folder


def test_products_switched_off_are_not_made_and_none_is_left_from_an_earlier_run(kedro_runner, tmp_path):
    """Base parameters (confidence off, vector null): the map, its styles, category names, quick-look and STAC
    Item only; a confidence COG or polygons left by an earlier run would describe another map: removed."""
    folder = small_scene_folder(tmp_path / "scenes")
    maps = kedro_runner.path("data/07_model_output/scene_maps")
    maps.mkdir(parents=True)
    for stale in ("small_confidence.tif", "small_polygons.gpkg", "small_confidence.qml"):
        (maps / stale).write_bytes(b"from an earlier run")
    ckpt = random_checkpoint(tmp_path / "random.pt")
    params = {"scenes_root": str(folder), "map_scenes": {"checkpoints": [str(ckpt)], "device": "cpu"}}
    kedro_runner.run("map_scenes", params=params)
    expected = [
        "collection.json",
        *(f"small{s}" for s in (".png", ".qml", ".stac.json", ".tif", ".tif.aux.xml")),
    ]
    assert sorted(p.name for p in maps.iterdir()) == expected
    item = json.loads((maps / "small.stac.json").read_text())
    assert set(item["assets"]) == {"map", "style", "category_names", "quicklook"}
    estimates = json.loads(kedro_runner.path("data/08_reporting/scene_area_estimates.json").read_text())
    assert estimates == {"estimated": False, "reason": "no labelled scene was scored"}


def test_the_confidence_reaches_its_dataset_when_kedro_saves_outputs_at_once(kedro_runner, tmp_path):
    """``kedro run --async`` saves scene_maps and scene_confidence in threads at the same time: each
    confidence COG is placed once its map is made."""
    from kedro.runner import SequentialRunner

    folder = small_scene_folder(tmp_path / "scenes")
    ckpt = random_checkpoint(tmp_path / "random.pt")
    options = {"checkpoints": [str(ckpt)], "device": "cpu", "confidence": True}
    params = {"scenes_root": str(folder), "map_scenes": options}
    kedro_runner.run("map_scenes", params=params, runner=SequentialRunner(is_async=True))
    maps = kedro_runner.path("data/07_model_output/scene_maps")
    with rasterio.open(maps / "small.tif") as m, rasterio.open(maps / "small_confidence.tif") as c:
        assert (m.width, m.height) == (c.width, c.height) and (c.read(1) > 0).all()
    assert not [p.name for p in maps.iterdir() if p.name.startswith(".")]


def test_no_scenes_folder_means_nothing_to_map_and_no_checkpoint_needed(kedro_runner, tmp_path):
    kedro_runner.run("map_scenes", params={"scenes_root": str(tmp_path / "absent")})
    report = json.loads(kedro_runner.path("data/08_reporting/scene_scores.json").read_text())
    assert report["evaluated"] is False
    assert json.loads(kedro_runner.path("data/08_reporting/scene_areas.json").read_text()) == {}


def test_a_corrupt_scene_is_named_and_nothing_is_mapped(kedro_runner, tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    profile = {"driver": "GTiff", "width": 40, "height": 30, "count": 3, "dtype": "uint8"}
    with rasterio.open(folder / "fine.tif", "w", **profile) as dst:
        dst.write(np.full((3, 30, 40), 7, np.uint8))
    (folder / "broken.tif").write_bytes(b"II*\x00" + bytes(300))
    ckpt = random_checkpoint(tmp_path / "random.pt")
    with pytest.raises(Exception, match=r"1 scene\(s\) cannot be mapped:\n  '.*broken\.tif'"):
        kedro_runner.run(
            "map_scenes", params={"scenes_root": str(folder), "map_scenes": {"checkpoints": [str(ckpt)]}}
        )
    maps = kedro_runner.path("data/07_model_output/scene_maps")
    assert not maps.exists() or not any(maps.iterdir())


def test_bad_scenes_are_refused_before_any_checkpoint_is_opened(kedro_runner, tmp_path):
    """README: "Bad scenes refuse the run before any model is loaded": with a checkpoint path that does not
    exist, a bad scene gives the scene error; with good scenes, the same path gives the checkpoint's."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    profile = {"driver": "GTiff", "width": 40, "height": 30, "count": 3, "dtype": "uint8"}
    with rasterio.open(folder / "fine.tif", "w", **profile) as dst:
        dst.write(np.full((3, 30, 40), 7, np.uint8))
    with rasterio.open(folder / "two_bands.tif", "w", **{**profile, "count": 2}) as dst:
        dst.write(np.full((2, 30, 40), 7, np.uint8))
    absent = tmp_path / "no_such_checkpoint.pt"
    params = {"scenes_root": str(folder), "map_scenes": {"checkpoints": [str(absent)]}}
    with pytest.raises(
        Exception, match=r"1 scene\(s\) cannot be mapped:\n  '.*two_bands\.tif' has 2 band"
    ) as info:
        kedro_runner.run("map_scenes", params=params)
    assert "checkpoint" not in str(info.value)
    (folder / "two_bands.tif").unlink()
    with pytest.raises(Exception, match=f"checkpoint '{absent}' does not exist"):
        kedro_runner.run("map_scenes", params=params)
    maps = kedro_runner.path("data/07_model_output/scene_maps")
    assert not maps.exists() or not any(maps.iterdir())


def test_sigkill_during_mapping_leaves_no_partial_map_then_the_same_command_completes(kedro_runner, tmp_path):
    project = kedro_runner.project
    ckpt = random_checkpoint(tmp_path / "random.pt", input_size=32, tile_size=128)
    # About 80 windows, one at a time on the torch engine: mapping lasts seconds, long enough to be killed in
    # the middle (ONNX Runtime maps this tiny model's scene faster than the kill lands).
    args = [
        "--env",
        "demo",
        "--pipeline",
        "map_scenes",
        "--params",
        f"map_scenes.checkpoints={ckpt},map_scenes.batch_size=1,map_scenes.device=cpu,map_scenes.engine=torch",
    ]
    maps = project / "data/07_model_output/scene_maps"
    proc = kedro_cli(project, *args)
    # The progress signal: the first map's rows are being written into its temporary strips file.
    wait_for(lambda: maps.is_dir() and any(maps.glob(".scene_0.tif.*.strips.tmp")), 180, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(maps.glob(".scene_0.tif.*")), "the kill did not land while the map was written"
    assert not (maps / "scene_0.tif").exists() and not (maps / "scene_1.tif").exists()
    again = subprocess.run(
        [sys.executable, "-m", "kedro", "run", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert sorted(p.name for p in maps.iterdir()) == product_files(["scene_0", "scene_1"])  # strays cleaned
    for name in ("scene_0", "scene_1"):
        assert_cog_like(maps / f"{name}.tif", project / f"data/01_raw/demo_scenes/{name}.tif")


@pytest.fixture
def scenes_root(rs8_root: Path) -> Path:
    path = Path(os.environ.get("NAIC_SEG_SCENES", rs8_root.parent / "scenes"))
    if not path.is_dir():
        pytest.skip(f"no scenes folder at {path} (set NAIC_SEG_SCENES)")
    return path


@pytest.mark.realdata
def test_rs8_model_maps_the_shared_scenes(kedro_runner, rs8_root, scenes_root):
    """About a minute of training on rs8 train, then every shared scene mapped and scored."""
    project = kedro_runner.project
    stage = {**STAGE, "iterations": 300, "batch_size": 8, "eval_interval": 300, "log_interval": 50}
    params = {
        "data_root": str(rs8_root),
        "scenes_root": str(scenes_root),
        "train_stage1": {"train": stage, "model": {"encoder": "resnet18", "pretrained": None}},
        "map_scenes": {"checkpoints": ["stage1"], "batch_size": 8},
    }
    kedro_runner.run("data_prep", params=params)
    kedro_runner.run("train_stage1", params=params)
    kedro_runner.run("map_scenes", params=params)

    maps = project / "data/07_model_output/scene_maps"
    scenes = sorted(p for p in scenes_root.glob("*.tif") if not p.stem.endswith("_label"))
    assert sorted(p.name for p in maps.glob("*.tif")) == [p.name for p in scenes]
    for scene in scenes:
        assert_cog_like(maps / scene.name, scene)

    report = json.loads((project / "data/08_reporting/scene_scores.json").read_text())
    table = ClassTable.naic()
    truth_counts = np.zeros(8, np.int64)
    for name in report["scenes"]:
        with rasterio.open(scenes_root / f"{name}_label.tif") as src:
            idx = table.to_index(src.read(1))
            truth_counts += np.bincount(idx.ravel(), minlength=256)[:8]
    # the trivial baseline: the most frequent true class everywhere (its IoU is its share; other classes 0)
    share = truth_counts / truth_counts.sum()
    baseline_miou = share.max() / (truth_counts > 0).sum()
    overall = report["overall"]
    print(f"map mIoU {overall['mIoU']:.4f} FWIoU {overall['FWIoU']:.4f}; baseline mIoU {baseline_miou:.4f}")
    assert report["overall"]["mIoU"] > baseline_miou + 0.05, (report["overall"]["mIoU"], baseline_miou)
    _, runs = mlflow_runs(project)
    assert "map.rs8test_gid_mosaic.mIoU" in runs[0].data.metrics


def test_the_scene_parameters_users_set_reach_the_mapper():
    """The README's quality setting `--params map_scenes.overlap=0.5` (and every other scene key in
    conf/base) reaches SceneOptions: windows half a window apart."""
    import yaml

    from naic_seg.pipelines.map_scenes.options import MapScenesOptions

    conf = Path(__file__).resolve().parents[2] / "conf" / "base" / "parameters_map_scenes.yml"
    params = yaml.safe_load(conf.read_text())["map_scenes"]
    changed = {**params, "overlap": 0.5, "nodata_fill": "mean", "bands": [3, 2, 1]}
    opts = MapScenesOptions.from_params(changed, "map_scenes").scene_options(window=256)
    assert opts.overlap == 0.5 and opts.stride == 128
    assert opts.nodata_fill == "mean" and opts.bands == (3, 2, 1)
