"""Error-adjusted areas (Olofsson et al. 2014) on a two-class example worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from naic_seg.core.gis.area_estimate import adjusted_areas
from naic_seg.core.metrics import confusion_matrix


def test_a_two_class_example_worked_by_hand():
    """Sample: 10 pixels mapped water (8 truly water, 2 forest), 10 mapped forest (1 water, 9 forest); the
    map: 30 ha water, 70 ha forest (W = 0.3, 0.7; A = 100 ha).
    p_ww = 0.3 * 8/10 = 0.24, p_wf = 0.3 * 2/10 = 0.06, p_fw = 0.7 * 1/10 = 0.07, p_ff = 0.7 * 9/10 = 0.63.
    Water: 100 * (0.24 + 0.07) = 31 ha; forest: 100 * (0.06 + 0.63) = 69 ha.
    S(p_.w) = sqrt(0.3^2 * 0.8 * 0.2 / 9 + 0.7^2 * 0.1 * 0.9 / 9) = sqrt(0.0016 + 0.0049) = sqrt(0.0065), so
    the interval is 1.96 * 100 * 0.0806226 = 15.80 ha, the same for forest (two classes: p_.f = 1 - p_.w).
    User's accuracy 0.8 and 0.9; producer's 0.24 / 0.31 and 0.63 / 0.69; overall 0.24 + 0.63 = 0.87."""
    # metrics' convention: rows = label (reference), columns = prediction (map)
    pred = torch.tensor([0] * 10 + [1] * 10)
    truth = torch.tensor([0] * 8 + [1] * 2 + [0] * 1 + [1] * 9)
    confusion = confusion_matrix(pred, truth, 2)
    assert confusion.tolist() == [[8, 1], [2, 9]]

    result = adjusted_areas(confusion.numpy(), [30.0, 70.0], ["water", "forest"])
    water, forest = result["classes"]
    assert result["estimated"] and result["mapped_hectares"] == 100.0 and result["sample_pixels"] == 20
    assert water["adjusted_hectares"] == pytest.approx(31.0)
    assert forest["adjusted_hectares"] == pytest.approx(69.0)
    assert (
        water["ci95_hectares"]
        == pytest.approx(1.96 * 100 * np.sqrt(0.0065))
        == pytest.approx(15.8020, abs=1e-4)
    )
    assert forest["ci95_hectares"] == pytest.approx(water["ci95_hectares"])
    assert (water["mapped_hectares"], forest["mapped_hectares"]) == (30.0, 70.0)
    assert water["users_accuracy"] == pytest.approx(0.8) and forest["users_accuracy"] == pytest.approx(0.9)
    assert water["producers_accuracy"] == pytest.approx(0.24 / 0.31)
    assert forest["producers_accuracy"] == pytest.approx(0.63 / 0.69)
    assert result["overall_accuracy"] == pytest.approx(0.87)


def test_a_fully_labelled_map_gives_back_the_labels_areas():
    """When every mapped pixel is labelled (W_i = n_i. / N), the adjusted areas are the reference counts."""
    rng = np.random.default_rng(0)
    confusion = rng.integers(5, 60, size=(3, 3))
    mapped = confusion.sum(axis=0)  # pixels mapped as each class = column sums
    result = adjusted_areas(confusion, mapped, ["a", "b", "c"], unit="pixels")
    adjusted = [row["adjusted_pixels"] for row in result["classes"]]
    np.testing.assert_allclose(adjusted, confusion.sum(axis=1))


def test_a_mapped_class_without_labelled_pixels_is_not_estimated():
    result = adjusted_areas([[5, 0], [1, 0]], [10.0, 3.0], ["water", "forest"])
    assert result["estimated"] is False and "['forest']" in result["reason"]
    with pytest.raises(ValueError, match="do not fit"):
        adjusted_areas([[1, 2], [3, 4]], [1.0], ["water", "forest"])
