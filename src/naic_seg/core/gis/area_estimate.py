"""Error-adjusted class areas with 95 % confidence intervals, from a map's areas and a confusion matrix.

A pixel count of a map is biased by the map's errors: if forest is often mapped where the ground is
farmland, the map's forest area is too large. Olofsson et al. (2014), "Good practices for estimating area
and assessing accuracy of land change", Remote Sensing of Environment 148:42-57, estimate each class's area
from a sample of reference (labelled) pixels stratified by map class. With ``n_ij`` the sample pixels mapped
as class ``i`` whose reference class is ``j``, ``n_i.`` the sample pixels mapped as ``i``, ``W_i`` the share
of the mapped area that is mapped as ``i`` and ``A`` the mapped area:

- ``p_ij = W_i n_ij / n_i.``, the estimated share of the area mapped ``i`` and truly ``j``;
- ``A_j = A sum_i p_ij``, the error-adjusted area of class ``j``;
- ``S(p_.j) = sqrt(sum_i W_i^2 (n_ij / n_i.)(1 - n_ij / n_i.) / (n_i. - 1))``, its standard error as a share,
  so the 95 % interval is ``A_j +- 1.96 A S(p_.j)``;
- user's accuracy ``n_ii / n_i.``, producer's accuracy ``p_jj / p_.j`` and overall accuracy ``sum_j p_jj``.

Here the sample is the labelled pixels of the scored scenes and the region is every mapped scene. The
estimate is only as good as that sample is representative of the region: labelled scenes picked at random
from it (or, as the paper asks, random pixels within each map class). Neighbouring pixels are not
independent, so with whole labelled scenes the intervals are too narrow; they are the paper's formulas, not
a spatial cluster-sampling analysis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Z95 = 1.96
METHOD = "Olofsson et al. 2014, Remote Sensing of Environment 148:42, stratified estimator of area"


def adjusted_areas(
    confusion: np.ndarray | Sequence[Sequence[int]],
    mapped: Sequence[float],
    names: Sequence[str],
    unit: str = "hectares",
) -> dict:
    """Error-adjusted area per class with its 95 % interval.

    ``confusion``: sample pixel counts with rows = reference (label) class and columns = map class, the
    convention of :func:`naic_seg.core.metrics.confusion_matrix` (transposed here into the paper's
    ``n_ij``, rows = map class). ``mapped``: each class's mapped area (``unit``) over the whole region.
    Returns ``estimated: False`` with the reason when a class present in the map has fewer than two sample
    pixels mapped as it (its stratum's variance is undefined).
    """
    n = np.asarray(confusion, dtype=np.float64).T  # n[i, j]: mapped as i, reference j
    mapped = np.asarray(mapped, dtype=np.float64)
    total = float(mapped.sum())
    if n.shape != (len(names), len(names)) or mapped.shape != (len(names),):
        raise ValueError(
            f"confusion {n.shape} and mapped areas {mapped.shape} do not fit {len(names)} classes"
        )
    n_i = n.sum(axis=1)
    reason = _unestimable(n_i, mapped, names)
    if reason:
        return {"estimated": False, "reason": reason, "method": METHOD}
    weight = mapped / total
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n_i[:, None] > 0, n / n_i[:, None], 0.0)  # n_ij / n_i.
        p = weight[:, None] * share
        variance = np.where(
            n_i[:, None] > 1, weight[:, None] ** 2 * share * (1 - share) / (n_i[:, None] - 1), 0
        )
        column = p.sum(axis=0)
        producers = np.where(column > 0, np.diag(p) / column, np.nan)
    std_error = np.sqrt(variance.sum(axis=0))
    rows = [
        {
            "name": name,
            f"mapped_{unit}": float(mapped[k]),
            f"adjusted_{unit}": float(total * column[k]),
            f"ci95_{unit}": float(Z95 * total * std_error[k]),
            "users_accuracy": float(n[k, k] / n_i[k]) if n_i[k] > 0 else None,
            "producers_accuracy": None if np.isnan(producers[k]) else float(producers[k]),
            "sample_pixels_mapped": int(n_i[k]),
            "sample_pixels_reference": int(n[:, k].sum()),
        }
        for k, name in enumerate(names)
    ]
    return {
        "estimated": True,
        "method": METHOD,
        "unit": unit,
        f"mapped_{unit}": total,
        "sample_pixels": int(n.sum()),
        "overall_accuracy": float(np.trace(p)),
        "classes": rows,
    }


def _unestimable(n_i: np.ndarray, mapped: np.ndarray, names: Sequence[str]) -> str | None:
    """Why there can be no estimate (no mapped area; a mapped class with under 2 sample pixels), or None."""
    if mapped.sum() <= 0:
        return "no mapped area"
    thin = [name for name, area, count in zip(names, mapped, n_i, strict=True) if area > 0 and count < 2]
    return (
        f"class(es) {thin} are mapped but fewer than 2 labelled pixels were mapped as them" if thin else None
    )
