"""Benchmark the viewer's map tiles: latency at three zoom levels of a 20,000 x 20,000 class COG.

The map is synthetic (written into a temporary folder, never shipped) and made as ``map_scenes`` makes its
maps: uint8 class indices (nodata 255) with the project's colour table, written by strips into a GeoTIFF,
then converted by GDAL's COG driver, tiled 512, DEFLATE, overviews by mode. Its classes come in cells of
``--cell`` px with wavy borders, 1 % speckle and a nodata corner, so tiles decode borders and noise
as in a model's map, not flat colour. EPSG:32650
at 0.5 m: the viewer warps every tile to Web Mercator.

The viewer (``create_app``) then serves it on 127.0.0.1 (a free port). At each of three zoom levels, the
map's own pixels (rio-tiler's maxzoom), its coarsest overview (minzoom) and the one between, ``--tiles``
tiles chosen at random inside the map are fetched one after the other over one keep-alive HTTP connection,
after one warm-up request per zoom: median and p95 latency of the HTTP request (read, warp, colour, PNG,
HTTP), and the median of the same tiles rendered in-process without HTTP. The file is fresh in the page
cache, as it is after ``map_scenes`` wrote it. One JSON document goes to stdout, progress to stderr.

    .venv/bin/python -m benchmarks.bench_viewer > bench_viewer.json
    .venv/bin/python -m benchmarks.bench_viewer --side 2000 --tiles 10     # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from benchmarks._common import cpu_model, loadavg

PIXEL_M = 0.5
SPECKLE = 0.01  # share of pixels given a random class


def log(msg: str) -> None:
    print(f"[bench_viewer {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_class_cog(target: Path, side: int, cell: int, seed: int = 0) -> dict:
    """A side x side class COG in map_scenes' format, written by 512-row strips; its size and timings."""
    import rasterio
    import rasterio.shutil
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from naic_seg.core.labels import ClassTable
    from naic_seg.core.scenes import COG_BLOCK, GDAL_CACHE_MB, colormap, output_encoding

    classes = ClassTable.naic()
    dtype, nodata, _ = output_encoding(classes, "index")
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, classes.num_classes, size=(side // cell + 1, side // cell + 1), dtype=np.uint8)
    strips = target.with_name(f".{target.name}.strips.tmp")
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 1, "dtype": dtype, "nodata": nodata,
        "crs": CRS.from_epsg(32650), "transform": from_origin(400_000.0, 3_500_000.0, PIXEL_M, PIXEL_M),
        "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    started = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(strips, "w", **profile) as dst:
        dst.write_colormap(1, colormap(classes, "index"))
        cols = np.arange(side, dtype=np.int32)
        wave_y = (cell / 2 * np.sin(cols / 37.0)).astype(np.int32)[None, :]  # wavy, not straight, borders
        for y in range(0, side, COG_BLOCK):
            rows = np.arange(y, min(y + COG_BLOCK, side), dtype=np.int32)
            wave_x = (cell / 2 * np.sin(rows / 29.0)).astype(np.int32)[:, None]
            r = np.clip((rows[:, None] + wave_y) // cell, 0, cells.shape[0] - 1)
            c = np.clip((cols[None, :] + wave_x) // cell, 0, cells.shape[1] - 1)
            block = cells[r, c]
            speckle = rng.random(block.shape) < SPECKLE  # isolated pixels, as a model's maps have
            block[speckle] = rng.integers(0, classes.num_classes, int(speckle.sum()), dtype=np.uint8)
            block[rows < side // 10, : side // 8] = nodata  # a nodata corner, as beside a scene's footprint
            dst.write(block[None], window=Window(0, y, side, len(rows)))
    written = time.perf_counter() - started
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        rasterio.shutil.copy(
            strips, target, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=COG_BLOCK,
            OVERVIEW_RESAMPLING="MODE", NUM_THREADS="ALL_CPUS",
        )  # fmt: skip
    strips.unlink()
    with rasterio.open(target) as src:
        overviews = src.overviews(1)
    return {
        "side": side,
        "cell_px": cell,
        "pixel_m": PIXEL_M,
        "file_mb": round(target.stat().st_size / 1e6, 1),
        "overview_factors": overviews,
        "strips_seconds": round(written, 1),
        "cog_seconds": round(time.perf_counter() - started - written, 1),
    }


def tiles_inside(path: Path, z: int, n: int, seed: int) -> list:
    """``n`` tiles at zoom ``z`` chosen at random among those wholly inside the map (among those that touch
    it, when the map is smaller than a tile there); when there are fewer than ``n``, each comes again."""
    import morecantile
    from rasterio.crs import CRS
    from rio_tiler.io import Reader

    tms = morecantile.tms.get("WebMercatorQuad")
    with Reader(str(path)) as src:
        west, south, east, north = src.get_geographic_bounds(CRS.from_epsg(4326))
    touching = list(tms.tiles(west, south, east, north, [z]))
    inside = [
        t
        for t in touching
        if (b := tms.bounds(t)).left >= west and b.right <= east and b.bottom >= south and b.top <= north
    ]
    pool = inside or touching
    order = np.random.default_rng(seed + z).permutation(len(pool))
    return [pool[order[i % len(pool)]] for i in range(n)]


def fetch_ms(conn: http.client.HTTPConnection, path: str) -> float:
    started = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - started) * 1e3
    if response.status != 200 or not body.startswith(b"\x89PNG"):
        raise RuntimeError(f"{path}: HTTP {response.status} {body[:200]!r}")
    return elapsed


def summarise(times_ms: list[float]) -> dict:
    ordered = sorted(times_ms)
    p95 = ordered[min(len(ordered) - 1, int(np.ceil(0.95 * len(ordered))) - 1)]
    return {
        "median_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(p95, 1),
        "mean_ms": round(statistics.fmean(ordered), 1),
        "max_ms": round(ordered[-1], 1),
    }


def bench_zoom(conn, renderer, name: str, z: int, tiles: list) -> dict:
    paths = [f"/tiles/{name}/map/{t.z}/{t.x}/{t.y}.png" for t in tiles]
    fetch_ms(conn, paths[0])  # warm-up: the first request of a zoom opens the overview's blocks cold
    http_ms = [fetch_ms(conn, p) for p in paths]
    render_ms = []
    for t in tiles:
        started = time.perf_counter()
        renderer.tile(name, "map", t.z, t.x, t.y)
        render_ms.append((time.perf_counter() - started) * 1e3)
    return {
        "zoom": z,
        "requests": len(tiles),
        "distinct_tiles": len(set(tiles)),
        "metres_per_screen_pixel_at_equator": round(156543.03392 / 2**z, 3),
        "http": summarise(http_ms),
        "render_in_process_median_ms": round(statistics.median(render_ms), 1),
    }


def bench(args, work: Path) -> dict:
    from naic_seg.core.labels import ClassTable
    from naic_seg.viewer import SceneIndex, TileRenderer, create_app
    from naic_seg.viewer.server import running

    maps = work / "maps"
    maps.mkdir()
    target = maps / "big.tif"
    log(f"writing a {args.side:,} x {args.side:,} class COG")
    doc = {"map": write_class_cog(target, args.side, args.cell)}
    log(f"map written: {doc['map']}")
    index = SceneIndex.build(maps, ClassTable.naic())
    scene = index.get("big")
    low, high = scene.zooms
    zooms = [high, (low + high) // 2, low]
    doc["zooms"] = {"rio_tiler_minzoom": low, "rio_tiler_maxzoom": high, "measured": zooms}
    renderer = TileRenderer(index)
    doc["records"] = []
    with running(create_app(index, renderer)) as url:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            for z in zooms:
                record = bench_zoom(conn, renderer, "big", z, tiles_inside(target, z, args.tiles, args.seed))
                log(f"zoom {z}: {record}")
                doc["records"].append(record)
        finally:
            conn.close()
    return doc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=20_000, help="map side in pixels (default 20,000)")
    ap.add_argument("--cell", type=int, default=40, help="side of the class cells in pixels")
    ap.add_argument("--tiles", type=int, default=60, help="tiles fetched at each zoom level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--tmp", type=Path, default=None, help="parent of the work folder (default: the system's)"
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    given = sys.argv[1:] if argv is None else argv
    doc = {
        "benchmark": "viewer",
        "command": shlex.join(["python", "-m", "benchmarks.bench_viewer", *given]),
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count()},
        "loadavg_start": loadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench_viewer_", dir=args.tmp) as tmp:
        doc |= bench(args, Path(tmp))
    doc["loadavg_end"] = loadavg()
    doc["seconds"] = round(time.perf_counter() - started, 1)
    return doc


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
