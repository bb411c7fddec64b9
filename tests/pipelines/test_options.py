"""One options path: each pipeline block parses through its options class before its node does any work.

A typo, a missing key, a wrong type or an out-of-range value fails naming the dotted key; every conf
environment parses; the library's own defaults for Python callers are conf/base's.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from naic_seg.core.distributed import MapDistributed, SubmitDistributed
from naic_seg.core.holdout import GroupTable
from naic_seg.core.options import OptionsError
from naic_seg.core.predict import PredictConfig
from naic_seg.core.scenes import SceneOptions
from naic_seg.core.tiles import prepare
from naic_seg.core.training import TrainConfig
from naic_seg.pipelines.data_prep.nodes import prepare_manifests
from naic_seg.pipelines.map_scenes import nodes as map_nodes
from naic_seg.pipelines.model_export.nodes import log_mlflow_model
from naic_seg.pipelines.options import BLOCKS, parse_blocks
from naic_seg.pipelines.submit.nodes import predict_test_tiles
from naic_seg.pipelines.training.nodes import log_checkpoint, train_stage
from tests.conftest import PROJECT_ROOT

ENVIRONMENTS = ("base", "local", "demo", "rs8")


def conf_parameters(env: str) -> dict:
    """The parameters a ``kedro run --env <env>`` gets, loaded as the project's settings load them."""
    from kedro.config import OmegaConfigLoader

    from naic_seg.settings import CONFIG_LOADER_ARGS

    args = {**CONFIG_LOADER_ARGS, "default_run_env": env}
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), env=env, runtime_params={}, **args)
    return loader["parameters"]


BASE = conf_parameters("base")


class Untouchable:
    """A node input that fails the test if the node reads it (lists, listings, checkpoints, metrics)."""

    def __init__(self, name: str):
        self._name = name

    def _touched(self, *args, **kwargs):
        raise AssertionError(f"the node touched {self._name} before checking its parameters")

    __getattr__ = __iter__ = __len__ = __getitem__ = __bool__ = __contains__ = _touched  # type: ignore


def block(name: str, /, **changes) -> dict:
    """A copy of conf/base's block ``name`` with dotted keys changed (``None`` as a value is kept;
    ``DROP`` removes the key)."""
    params = copy.deepcopy(BASE[name])
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = params
        for parent in parents:
            target = target[parent]
        if value is DROP:
            del target[key]
        else:
            target[key] = value
    return params


DROP = object()
CLASSES = BASE["classes"]


def run_node(name: str, params: dict) -> None:
    """The node(s) that take block ``name``, each given inputs it must not touch before parsing ``params``."""
    u = Untouchable
    if name == "data_prep":
        prepare_manifests(u("train_images"), u("train_labels"), u("test_images"), CLASSES, [0], params)
    elif name.startswith("train_stage"):
        stage = int(name[-1])
        init = "/nonexistent/checkpoint.pt" if stage == 1 else u("stage1_checkpoint")
        train_stage(u("train_manifest"), u("val_manifest"), init, CLASSES, params, stage)
    elif name == "submit":
        predict_test_tiles(
            u("test_manifest"), u("stage1_checkpoint"), u("stage2_checkpoint"), CLASSES, params
        )
    elif name == "map_scenes":
        map_nodes.map_scenes(u("scenes"), u("stage1_checkpoint"), u("stage2_checkpoint"), CLASSES, params)
    elif name == "model_export":
        log_mlflow_model(u("stage2_checkpoint"), u("stage2_metrics"), params)
    else:
        raise AssertionError(name)


TYPOS = [
    ("data_prep", {"holdot": 0.1}, "unknown key 'holdot' in data_prep; did you mean 'holdout'"),
    (
        "train_stage1",
        {"log_checkpont": True},
        "unknown key 'log_checkpont' in train_stage1; did you mean 'log_",
    ),
    (
        "train_stage2",
        {"init_checkpoint": None},
        "unknown key 'init_checkpoint' in train_stage2;",
    ),
    ("submit", {"windw": 128}, "unknown key 'windw' in submit; did you mean 'window'"),
    ("map_scenes", {"overlapp": 0.5}, "unknown key 'overlapp' in map_scenes; did you mean 'overlap'"),
    ("model_export", {"registr": True}, "unknown key 'registr' in model_export; did you mean 'register'"),
    # nested blocks, named with their dotted path
    (
        "train_stage1",
        {"train__iteratons": 5},
        "unknown key 'iteratons' in train_stage1.train; did you mean 'it",
    ),
    (
        "train_stage2",
        {"train__iteratons": 5},
        "unknown key 'iteratons' in train_stage2.train; did you mean 'it",
    ),
    (
        "train_stage1",
        {"model__encodr": "resnet18"},
        "key 'encodr' in train_stage1.model; did you mean 'encoder'",
    ),
    (
        "train_stage2",
        {"model__encoder": "resnet18"},
        "unknown key 'encoder' in train_stage2.model; valid: outp",
    ),
    (
        "train_stage1",
        {"distributed__nprocs": 2},
        "'nprocs' in train_stage1.distributed; did you mean 'nproc'",
    ),
    (
        "submit",
        {"distributed__chunk_sise": 8},
        "'chunk_sise' in submit.distributed; did you mean 'chunk_size'",
    ),
    (
        "map_scenes",
        {"distributed__adress": None},
        "'adress' in map_scenes.distributed; did you mean 'address'",
    ),
    (
        "map_scenes",
        {"vector": {"min_area": 5}},
        "'min_area' in map_scenes.vector; did you mean 'min_area_m2'",
    ),
    (
        "data_prep",
        {"holdout_groups": {"csv": "s.csv", "group_column": "source", "colum": "x"}},
        "unknown key 'colum' in data_prep.holdout_groups; did you mean 'id_column'",
    ),
    (
        "data_prep",
        {"fold": {"k": 5, "idx": 1}},
        "unknown key 'idx' in data_prep.fold; did you mean 'index'? valid: k, index",
    ),
]


@pytest.mark.parametrize(("name", "changes", "message"), TYPOS, ids=lambda v: str(v)[:40])
def test_a_typo_fails_before_any_work_naming_the_closest_key(name, changes, message):
    with pytest.raises(OptionsError, match=re.escape(message)):
        run_node(name, block(name, **changes))


def test_every_block_names_a_missing_key_and_that_conf_base_states_every_key():
    for name in BLOCKS:
        for key in BASE[name]:
            with pytest.raises(OptionsError, match=rf"^{name} is missing key\(s\) '{key}': conf/base states"):
                run_node(name, block(name, **{key: DROP}))
    with pytest.raises(OptionsError, match=r"^train_stage1.train is missing key\(s\) 'lr'"):
        run_node("train_stage1", block("train_stage1", train__lr=DROP))
    with pytest.raises(OptionsError, match=r"^map_scenes.distributed is missing key\(s\) 'timeout_s'"):
        run_node("map_scenes", block("map_scenes", distributed__timeout_s=DROP))


BAD_VALUES = [
    # wrong types
    ("data_prep", {"seed": 1.5}, "data_prep.seed must be an integer, got 1.5"),
    (
        "data_prep",
        {"holdout_groups": "sources.csv"},
        "data_prep.holdout_groups must be a mapping of csv, group",
    ),
    ("train_stage1", {"train__lr": "high"}, "train_stage1.train.lr must be a number, got 'high'"),
    ("train_stage1", {"model__aux": 1}, "train_stage1.model.aux must be true or false, got 1"),
    (
        "train_stage2",
        {"distributed__nproc": "many"},
        "train_stage2.distributed.nproc must be an integer or auto",
    ),
    ("submit", {"tta": "flips"}, "submit.tta must be one of none, flip, flip_scale, got 'flips'"),
    ("submit", {"tta_scales": [1.0, "x"]}, "submit.tta_scales[1] must be a number, got 'x'"),
    ("map_scenes", {"batch_size": "eight"}, "map_scenes.batch_size must be an integer, got 'eight'"),
    ("map_scenes", {"confidence": "yes"}, "map_scenes.confidence must be true or false, got 'yes'"),
    ("map_scenes", {"distributed": None}, "map_scenes.distributed must be a mapping of address, retries"),
    ("model_export", {"register": "yes"}, "model_export.register must be true or false, got 'yes'"),
    ("model_export", {"output_values": "rgb"}, "model_export.output_values must be one of naic, index, got"),
    # out of range
    ("data_prep", {"holdout": -1}, "data_prep.holdout must be a count or a fraction in [0, 1), got -1"),
    ("data_prep", {"fold": {"k": 1, "index": 0}}, "data_prep.fold.k must be at least 2, got 1"),
    (
        "train_stage1",
        {"train__encoder_lr_mult": -1},
        "train_stage1.train.encoder_lr_mult must be >= 0, got -1",
    ),
    ("train_stage1", {"model__dropout": 1.0}, "train_stage1.model.dropout must be in [0, 1), got 1.0"),
    ("train_stage2", {"train__ohem_thresh": 1.5}, "train_stage2.train.ohem_thresh must be in (0, 1] or null"),
    ("submit", {"overlap": 1.5}, "submit.overlap must be in [0, 1), got 1.5"),
    ("submit", {"batch_size": 0}, "submit.batch_size must be at least 1, got 0"),
    ("submit", {"distributed__max_in_flight": 0}, "submit.distributed.chunk_size and max_in_flight must be"),
    ("map_scenes", {"overlap": 1.5}, "map_scenes.overlap must be in [0, 0.5], got 1.5"),
    ("map_scenes", {"window": 4}, "map_scenes.window must be at least 8 scene pixels, got 4"),
    ("map_scenes", {"distributed__retries": -1}, "map_scenes.distributed.retries must be at least 0, got -1"),
    ("map_scenes", {"vector": {"min_area_m2": -5}}, "map_scenes.vector.min_area_m2 must be a number >= 0"),
    (
        "map_scenes",
        {"confidence": True, "distributed__address": "local:2"},
        "map_scenes.confidence is made in-process only",
    ),
]


@pytest.mark.parametrize(("name", "changes", "message"), BAD_VALUES, ids=lambda v: str(v)[:40])
def test_a_wrong_type_or_range_fails_before_any_work_naming_the_dotted_key(name, changes, message):
    with pytest.raises(OptionsError, match="^" + re.escape(message)):
        run_node(name, block(name, **changes))


def test_every_node_that_takes_a_block_checks_it_first():
    """The map_scenes product nodes and log_checkpoint parse the block too, before reading any map."""
    bad = block("map_scenes", overlapp=0.5)
    for node in (
        map_nodes.measure_areas,
        map_nodes.draw_quicklooks,
        map_nodes.score_maps,
        map_nodes.style_maps,
        map_nodes.vectorise_maps,
    ):
        with pytest.raises(OptionsError, match="unknown key 'overlapp' in map_scenes"):
            node(Untouchable("scenes"), Untouchable("scene_maps"), CLASSES, bad)
    with pytest.raises(OptionsError, match="unknown key 'overlapp' in map_scenes"):
        map_nodes.catalog_scenes(Untouchable("scenes"), {}, {}, {}, CLASSES, bad)
    with pytest.raises(OptionsError, match="unknown key 'log_checkpont' in train_stage2"):
        log_checkpoint(Untouchable("checkpoint"), block("train_stage2", log_checkpont=True), 2)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_conf_environment_parses(env):
    params = conf_parameters(env)
    parsed = parse_blocks(params)
    assert set(parsed) == set(BLOCKS) <= set(params)
    if env == "rs8":
        groups = parsed["data_prep"].holdout_groups
        assert isinstance(groups, GroupTable) and groups.pattern == "^([^@]+)"
        assert parsed["train_stage1"].train.augment["hflip"] is True
        assert parsed["train_stage2"].model.output_stride == 16
        assert parsed["submit"].tta == "flip"  # chosen on the grouped folds (docs/holdout.md)
    if env == "demo":
        assert parsed["data_prep"].holdout == 8
        assert parsed["map_scenes"].vector.min_area_m2 == 25 and parsed["map_scenes"].confidence
        assert parsed["train_stage1"].model.encoder == "resnet18"


def test_the_library_defaults_for_python_callers_are_conf_base():
    """A library default and conf/base never disagree: the default objects equal those conf/base builds."""
    parsed = parse_blocks(BASE)
    submit, scenes, stage1 = parsed["submit"], parsed["map_scenes"], parsed["train_stage1"]

    def plain(obj) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}

    assert plain(submit.predict_config()) == plain(PredictConfig())
    assert plain(scenes.predict_config()) == plain(PredictConfig())
    assert submit.distributed == SubmitDistributed() and scenes.distributed == MapDistributed()
    assert vars(scenes.scene_options()).keys() == vars(SceneOptions()).keys()
    for key, value in vars(SceneOptions()).items():
        assert repr(getattr(scenes.scene_options(), key)) == repr(value), key
    train = stage1.train  # stage 2 differs from it where conf/base says so (lr, work_dir)
    assert train == TrainConfig(iterations=train.iterations, work_dir=train.work_dir)
    defaults = {k: p.default for k, p in inspect.signature(prepare).parameters.items()}
    data_prep = parsed["data_prep"]
    assert (defaults["holdout"], defaults["seed"], defaults["workers"]) == (
        data_prep.holdout,
        data_prep.seed,
        data_prep.workers,
    )
    assert list(defaults["ignore_values"]) == BASE["ignore_values"]


def test_a_typo_on_the_command_line_fails_the_run_before_its_first_node(kedro_runner):
    """``kedro run --env demo --pipeline map_scenes --params map_scenes.overlapp=0.5`` in-process."""
    with pytest.raises(OptionsError, match=r"unknown key 'overlapp' in map_scenes; did you mean 'overlap'\?"):
        kedro_runner.run("map_scenes", env="demo", params={"map_scenes": {"overlapp": 0.5}})
    assert not any(Path(kedro_runner.path("data")).rglob("*.tif")), "no scene was written or mapped"


def test_a_typo_in_a_later_pipeline_fails_the_whole_run_before_training(kedro_runner):
    with pytest.raises(OptionsError, match=r"unknown key 'windw' in submit"):
        kedro_runner.run("__default__", env="demo", params={"submit": {"windw": 128}})
    assert not any(Path(kedro_runner.path("data")).rglob("*.json")), "data_prep did not run"
