"""A smoke run of ``benchmarks/bench_viewer.py`` on a small map: it writes the COG, serves it, times tiles."""

from __future__ import annotations

from benchmarks import bench_viewer


def test_bench_viewer_smoke(tmp_path):
    doc = bench_viewer.main(["--side", "1500", "--tiles", "3", "--tmp", str(tmp_path)])
    assert doc["map"]["side"] == 1500 and doc["map"]["overview_factors"] == [2, 4], "down to one 512 px block"
    low, high = doc["zooms"]["rio_tiler_minzoom"], doc["zooms"]["rio_tiler_maxzoom"]
    assert doc["zooms"]["measured"] == [high, (low + high) // 2, low] and low < high
    for record in doc["records"]:
        http = record["http"]
        assert record["requests"] == 3 and 1 <= record["distinct_tiles"] <= 3
        assert 0 < http["median_ms"] <= http["p95_ms"] <= http["max_ms"]
        assert record["render_in_process_median_ms"] > 0
    assert len(doc["loadavg_start"]) == 3 and doc["machine"]["cpu"] != "unknown CPU"
    assert not list(tmp_path.iterdir()), "the work folder is removed"
