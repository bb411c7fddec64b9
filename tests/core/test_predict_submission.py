"""Prediction (TTA, sliding windows, ensembles) and the pickle / zip formats."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from naic_seg.core.checkpoint import CheckpointError, make_checkpoint
from naic_seg.core.labels import ClassTable
from naic_seg.core.models import build_model
from naic_seg.core.normalization import IMAGENET_STD
from naic_seg.core.predict import (
    PredictConfig,
    Predictor,
    load_models,
    predict_manifest,
    predict_tiles,
)
from naic_seg.core.runtime import Runtime
from naic_seg.core.submission import (
    PredictionsReader,
    SubmissionError,
    check_submission,
    encode_png,
    entry_name,
    submission_entries,
    write_predictions,
    write_submission,
)
from tests.conftest import write_tile

TABLE = ClassTable.naic()
VALUES = TABLE.values
MODEL = {"arch": "pspnet", "encoder": "resnet18", "output_stride": 16, "num_classes": 8}


class PixelwiseModel(torch.nn.Module):
    """A 1x1 convolution: its output commutes with flips, so flip TTA must change nothing."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return self.conv(x)


def test_flip_tta_of_a_flip_symmetric_model_equals_no_tta():
    x = torch.randn(2, 3, 32, 32)
    plain = Predictor([PixelwiseModel()], PredictConfig(tta="none"), 32, TABLE).logits(x)
    flipped = Predictor([PixelwiseModel()], PredictConfig(tta="flip"), 32, TABLE).logits(x)
    torch.testing.assert_close(plain, flipped)


def test_flip_tta_changes_a_model_that_is_not_symmetric():
    model = build_model(**MODEL).eval()
    x = torch.randn(1, 3, 64, 64)
    plain = Predictor([model], PredictConfig(tta="none"), 64, TABLE).logits(x)
    flipped = Predictor([model], PredictConfig(tta="flip_scale"), 64, TABLE).logits(x)
    assert not torch.allclose(plain, flipped)


def test_sliding_window_on_a_tile_the_window_size_equals_whole_tile_prediction():
    model = build_model(**MODEL).eval()
    predictor = Predictor([model], PredictConfig(), 64, TABLE)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(predictor.slide(x, window=64, overlap=0.25), predictor.logits(x))


def test_sliding_window_covers_a_large_tile_with_overlapping_windows():
    predictor = Predictor([PixelwiseModel()], PredictConfig(batch_size=3), 32, TABLE)
    x = torch.randn(1, 3, 80, 100)
    # pixelwise model at the window's own scale: windows must reassemble the whole-tile logits
    torch.testing.assert_close(
        predictor.slide(x, window=32, overlap=0.5), predictor.logits(x), atol=1e-5, rtol=0
    )


def test_an_ensemble_averages_logits():
    a, b = build_model(**MODEL).eval(), build_model(**MODEL).eval()
    x = torch.randn(1, 3, 64, 64)
    both = Predictor([a, b], PredictConfig(), 64, TABLE).logits(x)
    mean = (
        Predictor([a], PredictConfig(), 64, TABLE).logits(x)
        + Predictor([b], PredictConfig(), 64, TABLE).logits(x)
    ) / 2
    torch.testing.assert_close(both, mean)


def test_a_checkpoint_that_does_not_fit_its_model_is_named():
    state = build_model(**MODEL).state_dict()
    state.pop(next(iter(state)))
    ckpt = make_checkpoint(MODEL, state, 1, {}, ClassTable.naic().as_config())
    ckpt["source"] = "/models/broken.pt"
    with pytest.raises(CheckpointError, match="/models/broken.pt"):
        load_models([ckpt], Runtime.resolve("cpu"))


def test_predictions_come_back_at_each_tiles_own_size(tmp_path):
    manifest = []
    for tid, size in ((11, 40), (12, 24)):
        img, _ = write_tile(tmp_path, "test", tid, size=size, with_label=False)
        manifest.append({"filename": str(img)})
    ckpt = make_checkpoint(
        MODEL,
        build_model(**MODEL).state_dict(),
        1,
        {},
        ClassTable.naic().as_config(),
        preprocess={"input_size": 64},
    )
    out = list(predict_manifest(manifest, [ckpt], PredictConfig(workers=0, batch_size=2), ClassTable.naic()))
    assert [tid for tid, _ in out] == ["11", "12"]
    assert [pred.shape for _, pred in out] == [(40, 40), (24, 24)]
    assert all(pred.dtype == np.uint8 and pred.max() < 8 for _, pred in out)


def test_predictions_pickle_round_trip(tmp_path):
    records = [(str(i), encode_png(np.full((4, 5), i, np.uint8))) for i in range(5)]
    path = tmp_path / "p.pkl"
    assert write_predictions(path, iter(records)) == 5
    back = list(PredictionsReader(path))
    assert back == records


def test_a_pickle_holding_any_class_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"format": "naic-seg-predictions/1"}, fh)
        pickle.dump(("1", np.zeros(3)), fh)  # a numpy array needs a class to unpickle
    with pytest.raises(SubmissionError, match="tampered"):
        list(PredictionsReader(path))


def test_a_failing_stream_leaves_no_pickle(tmp_path):
    def records():
        yield "1", b"x"
        raise OSError("tile 2 unreadable")

    with pytest.raises(OSError, match="tile 2"):
        write_predictions(tmp_path / "p.pkl", records())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["../evil", "a/b", "/abs", "..", "", ".hidden"])
def test_entry_names_cannot_escape_results(bad):
    with pytest.raises(SubmissionError):
        entry_name(bad)


def test_submission_zip_layout_dtype_values_and_sizes(tmp_path):
    preds = [("7", encode_png(np.array([[0, 7], [3, 1]], np.uint8)))]
    path = tmp_path / "s.zip"
    write_submission(path, submission_entries(preds, VALUES), {"results/7.png": (2, 2)}, VALUES)
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["results/7.png"]
        im = Image.open(io.BytesIO(zf.read("results/7.png")))
        assert im.mode == "I;16" and np.asarray(im).tolist() == [[100, 800], [400, 200]]


def test_a_zip_that_misses_a_tile_or_has_a_wrong_size_never_appears(tmp_path):
    preds = [("7", encode_png(np.zeros((2, 2), np.uint8)))]
    path = tmp_path / "s.zip"
    with pytest.raises(SubmissionError, match="1 tile\\(s\\) missing"):
        write_submission(
            path,
            submission_entries(preds, VALUES),
            {"results/7.png": (2, 2), "results/8.png": (2, 2)},
            VALUES,
        )
    with pytest.raises(SubmissionError, match="is \\(2, 2\\), its tile is \\(3, 3\\)"):
        write_submission(path, submission_entries(preds, VALUES), {"results/7.png": (3, 3)}, VALUES)
    assert list(tmp_path.iterdir()) == []


def test_check_refuses_eight_bit_entries_and_foreign_values(tmp_path):
    path = tmp_path / "s.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("results/1.png", encode_png(np.zeros((2, 2), np.uint8)))
    with pytest.raises(SubmissionError, match="not a 16-bit PNG"):
        check_submission(path, {"results/1.png": (2, 2)}, VALUES)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("results/1.png", encode_png(np.full((2, 2), 900, np.uint16)))
    with pytest.raises(SubmissionError, match="values outside"):
        check_submission(path, {"results/1.png": (2, 2)}, VALUES)


def _tile_manifest(tmp_path, sizes):
    manifest = []
    for tid, size in sizes:
        img, _ = write_tile(tmp_path, "test", tid, size=size, with_label=False)
        manifest.append({"filename": str(img)})
    return manifest


def test_auto_mode_slides_windows_over_tiles_larger_than_slide_above(tmp_path):
    """The README's promise: in ``mode: auto`` a tile with a side above ``slide_above`` is predicted by
    sliding windows, not resized down to the input size (keep_above was once stored and never read)."""
    torch.manual_seed(0)
    model = build_model(**MODEL).eval()
    manifest = _tile_manifest(tmp_path, [(21, 96), (22, 32)])

    def predict(mode: str) -> dict:
        cfg = PredictConfig(mode=mode, slide_above=64, window=32, overlap=0.5, workers=0, batch_size=4)
        return dict(predict_tiles(manifest, Predictor([model], cfg, 32, TABLE)))

    auto, slide, resize = predict("auto"), predict("slide"), predict("resize")
    assert auto["21"].shape == (96, 96)
    np.testing.assert_array_equal(auto["21"], slide["21"])
    assert (auto["21"] != resize["21"]).any()
    # the small tile is below slide_above: resized, exactly as in resize mode
    np.testing.assert_array_equal(auto["22"], resize["22"])


def test_window_logits_come_back_at_the_windows_size_on_the_cpu():
    predictor = Predictor([PixelwiseModel()], PredictConfig(), 16, TABLE)
    images = torch.randint(0, 256, (3, 3, 40, 24), dtype=torch.uint8)
    out = predictor.window_logits(images)
    assert out.shape == (3, 8, 40, 24) and out.dtype == torch.float32 and out.device.type == "cpu"


def test_predictor_from_checkpoints_refuses_another_class_table():
    other = ClassTable([1, 2, 3, 4, 5, 6, 7, 8])
    ckpt = make_checkpoint(MODEL, build_model(**MODEL).state_dict(), 1, {}, other.as_config())
    with pytest.raises(CheckpointError, match="another class table"):
        Predictor.from_checkpoints([ckpt], PredictConfig(), TABLE)


def test_the_predictor_normalises_as_the_checkpoint_says_and_refuses_a_mixed_ensemble():
    resnet = make_checkpoint(MODEL, build_model(**MODEL).state_dict(), 1, {}, TABLE.as_config())
    lite_config = {**MODEL, "encoder": "tu-tf_efficientnet_lite0"}
    lite = make_checkpoint(lite_config, build_model(**lite_config).state_dict(), 1, {}, TABLE.as_config())
    assert Predictor.from_checkpoints([resnet], PredictConfig(), TABLE).normalization["std"][0] == 0.229
    assert Predictor.from_checkpoints([lite], PredictConfig(), TABLE).normalization["std"] == [0.5] * 3
    recorded = {**resnet, "preprocess": {"normalization": {"mean": [0.1] * 3, "std": [0.2] * 3}}}
    assert Predictor.from_checkpoints([recorded], PredictConfig(), TABLE).normalization["mean"] == [0.1] * 3
    with pytest.raises(CheckpointError, match="different input normalisations"):
        Predictor.from_checkpoints([resnet, lite], PredictConfig(), TABLE)


def test_windows_are_shrunk_to_the_input_size_as_pil_shrank_the_training_tiles():
    """Training resized tiles with PIL's bilinear filter (antialiased); a scene window or a served image
    shrunk to the input size must look the same to the model, not aliased (as torch's default resize is)."""
    seen = []

    class Recording(PixelwiseModel):
        def forward(self, x):
            seen.append(x.clone())
            return super().forward(x)

    predictor = Predictor([Recording()], PredictConfig(), 32, TABLE)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    predictor.window_logits(torch.from_numpy(image).permute(2, 0, 1)[None].contiguous())
    shrunk = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR))
    expected = predictor.prepare(torch.from_numpy(shrunk).permute(2, 0, 1)[None].contiguous())
    grey_level = 1 / (255 * min(IMAGENET_STD))  # one grey level in normalised units, at most
    diff = (seen[0] - expected).abs()
    assert float(diff.max()) <= 1.5 * grey_level and float(diff.mean()) <= 0.5 * grey_level


def _submit_peak(manifest: list[dict], folder) -> int:
    """Peak bytes traced while submit's in-process path runs over ``manifest``: tiles predicted and streamed
    into the predictions pickle (its dataset), then the zip built from it and checked (node and dataset)."""
    import gc
    import tracemalloc

    from naic_seg.core.submission import prediction_records
    from naic_seg.datasets.submission import PredictionsPickleDataset, SubmissionZipDataset
    from naic_seg.pipelines.submit.nodes import make_submission

    cfg = PredictConfig(batch_size=64, workers=0, device="cpu", amp="none", channels_last=False)
    predictor = Predictor([PixelwiseModel()], cfg, None, TABLE)
    pickle_ds = PredictionsPickleDataset(str(folder / "test_predictions.pkl"))
    zip_ds = SubmissionZipDataset(str(folder / "submission.zip"))
    gc.collect()
    tracemalloc.start()
    try:
        pickle_ds.save(prediction_records(predict_tiles(manifest, predictor)))
        zip_ds.save(make_submission(pickle_ds.load(), manifest, TABLE.as_config()))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_submit_memory_does_not_grow_with_the_test_set(tmp_path):
    """README: predictions stream "tile by tile ... so memory does not grow with the test set". Peak traced
    memory (Python and NumPy) of submit over 100 vs 5,000 tiles of 64 px (a 1x1-convolution model, so each
    class map is as noisy as its tile: pickle records of 2.0 KB, zip entries of 3.0 KB) grows by less than
    2 KB per extra tile: what grows is the zip's central directory and the expected-entry table (about
    0.45 + 0.3 KB a tile, kept until the zip is closed and checked). Holding the records, the entries or the
    class maps (4 KB) would add at least 2 KB a tile on top. Measured on the 2-core EPYC: 1.07 MB vs 8.83 MB
    on a first pass of 5,000 (1.58 KB a tile), 4.98 MB on a second (0.80 KB)."""
    (tmp_path / "tiles").mkdir()
    sources = [
        write_tile(tmp_path / "src", "test", i, size=64, seed=i, with_label=False)[0] for i in range(16)
    ]
    manifest = []
    for i in range(5000):  # hard links: 5,000 files to read, 16 to write
        path = tmp_path / "tiles" / f"{i}.tif"
        os.link(sources[i % 16], path)
        manifest.append({"filename": str(path), "size": [64, 64]})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 64-px batches: threads only contend
    try:
        _submit_peak(manifest[:100], tmp_path)  # first imports and caches
        small, large = _submit_peak(manifest[:100], tmp_path), _submit_peak(manifest, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert (
        check_submission(
            tmp_path / "submission.zip", {entry_name(str(i)): (64, 64) for i in range(5000)}, VALUES
        )
        == 5000
    )
    assert (large - small) / 4900 < 2048, (small, large)
