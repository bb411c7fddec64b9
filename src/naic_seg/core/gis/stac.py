"""STAC metadata of a mapping run: an Item per scene, a Collection for the run, written self-contained.

Each Item has the scene's footprint (geometry, bbox) in EPSG:4326, the projection extension (the map's
native CRS, bounds, shape and transform), the classification extension on the map asset (value, name and
colour of each class, and the nodata value) and one asset per product written beside it: the map COG, the
confidence COG, the polygons, the QGIS styles, GDAL's category names, the quick-look. Links with rel
``via`` name the MLflow run that mapped the scenes (``runs:/<id>``) and, when the model is registered, its
version (``models:/<name>/<version>``), URIs that MLflow's own clients resolve.

The catalog is saved self-contained (``collection.json`` and ``<scene>.stac.json`` in one folder, every link
and asset href relative), so the folder can be copied or served as it is; every file is written atomically.
Item ``datetime``: the scene's TIFF ``DATETIME`` tag when it has one, otherwise the time it was mapped (the
acquisition time is not known then); ``created`` is always the time it was mapped.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import pystac
import rasterio
import shapely
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.layout import CustomLayoutStrategy
from pystac.stac_io import DefaultStacIO
from rasterio.warp import transform_bounds, transform_geom

from naic_seg.core.atomic import atomic_open
from naic_seg.core.gis.style import class_entries
from naic_seg.core.labels import ClassTable
from naic_seg.core.scenes import CONFIDENCE_NODATA, output_encoding

ITEM_SUFFIX = ".stac.json"
COLLECTION_FILE = "collection.json"
QML = "application/vnd.qgis.qml+xml"
# asset key -> (media type, roles, title)
ASSETS = {
    "map": (pystac.MediaType.COG, ["data"], "Land-cover classes"),
    "confidence": (pystac.MediaType.COG, ["data", "confidence"], "Top-class probability x 255"),
    "polygons": (pystac.MediaType.GEOPACKAGE, ["data"], "Land-cover polygons (minimum mapping unit)"),
    "style": (QML, ["style", "metadata"], "QGIS style of the map"),
    "confidence_style": (QML, ["style", "metadata"], "QGIS style of the confidence"),
    "category_names": (pystac.MediaType.XML, ["metadata"], "GDAL category names and attribute table"),
    "quicklook": (pystac.MediaType.PNG, ["overview"], "Scene beside its map, with a legend"),
}


@dataclass
class SceneProducts:
    """The files made for one scene (None where a product is switched off)."""

    name: str
    scene: Path
    files: dict[str, Path] = field(default_factory=dict)  # asset key (see ASSETS) -> file


@dataclass(frozen=True)
class Provenance:
    """Where the maps come from: the MLflow run that made them and the registered model versions used."""

    run_id: str | None = None
    registered_models: tuple[tuple[str, str], ...] = ()  # (name, version)

    @classmethod
    def from_dict(cls, data: dict | None) -> Provenance:
        data = data or {}
        models = tuple((m["name"], str(m["version"])) for m in data.get("registered_models", []))
        return cls(data.get("run_id"), models)

    def links(self) -> list[pystac.Link]:
        links = []
        if self.run_id:
            links.append(pystac.Link("via", f"runs:/{self.run_id}", title="MLflow run that made the maps"))
        for name, version in self.registered_models:
            links.append(pystac.Link("via", f"models:/{name}/{version}", title=f"model {name} v{version}"))
        return links


def _acquired(tags: dict, mapped: dt.datetime) -> dt.datetime:
    stamp = tags.get("TIFFTAG_DATETIME")
    try:
        return dt.datetime.strptime(stamp, "%Y:%m:%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    except (TypeError, ValueError):
        return mapped


def footprint(src) -> tuple[dict | None, list[float] | None]:
    """(GeoJSON polygon, bbox) of the raster's bounds in EPSG:4326, edges densified; (None, None) without
    a CRS."""
    if src.crs is None:
        return None, None
    bounds = src.bounds
    bbox = list(transform_bounds(src.crs, "EPSG:4326", *bounds, densify_pts=21))
    ring = shapely.segmentize(shapely.box(*bounds), max(src.res) * max(src.width, src.height) / 20)
    return transform_geom(src.crs, "EPSG:4326", shapely.geometry.mapping(ring)), bbox


def _project(item: pystac.Item, src) -> None:
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = src.crs.to_epsg() if src.crs is not None else None
    if epsg is not None:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.code = None
        proj.wkt2 = src.crs.to_wkt() if src.crs is not None else None
    proj.bbox = list(src.bounds)
    proj.shape = [src.height, src.width]
    proj.transform = list(src.transform)[:6]


def _classify(asset: pystac.Asset, classes: ClassTable, output_values: str) -> None:
    nodata = output_encoding(classes, output_values)[1]
    entries = [
        Classification.create(
            value, name=name, description=name.replace("_", " "), color_hint=f"{r:02X}{g:02X}{b:02X}"
        )
        for value, name, (r, g, b, _) in class_entries(classes, output_values)
    ]
    entries.append(Classification.create(nodata, name="nodata", description="not mapped", nodata=True))
    ClassificationExtension.ext(asset, add_if_missing=True).classes = entries


def scene_item(
    products: SceneProducts,
    classes: ClassTable,
    output_values: str,
    mapped_at: dt.datetime,
    provenance: Provenance,
    areas: dict | None = None,
) -> pystac.Item:
    """The STAC Item of one scene, its assets pointing (absolutely, until saved) at the files made."""
    with rasterio.open(products.files["map"]) as src:
        geometry, bbox = footprint(src)
        with rasterio.open(products.scene) as scene:
            acquired = _acquired(scene.tags(), mapped_at)
        properties = {"created": mapped_at.isoformat(), "naic_seg:scene": products.scene.name}
        if areas and areas.get("mapped_hectares") is not None:
            properties["naic_seg:mapped_hectares"] = areas["mapped_hectares"]
            properties["naic_seg:class_hectares"] = {r["name"]: r["hectares"] for r in areas["classes"]}
        item = pystac.Item(products.name, geometry, bbox, acquired, properties)
        _project(item, src)
        dtype, nodata = src.dtypes[0], src.nodata
    for key, path in products.files.items():
        media_type, roles, title = ASSETS[key]
        item.add_asset(
            key, pystac.Asset(str(Path(path).resolve()), title, media_type=media_type, roles=roles)
        )
    item.assets["map"].extra_fields |= {"data_type": dtype, "nodata": int(nodata)}
    _classify(item.assets["map"], classes, output_values)
    if "confidence" in item.assets:
        item.assets["confidence"].extra_fields |= {"data_type": "uint8", "nodata": CONFIDENCE_NODATA}
    for link in provenance.links():
        item.add_link(link)
    return item


def run_collection(items: list[pystac.Item], provenance: Provenance, description: str) -> pystac.Collection:
    """The Collection of a run's Items: extent from theirs, the run's links, license ``other``."""
    boxes = [i.bbox for i in items if i.bbox is not None]
    spatial = (
        [
            [
                min(b[0] for b in boxes),
                min(b[1] for b in boxes),
                max(b[2] for b in boxes),
                max(b[3] for b in boxes),
            ]
        ]
        if boxes
        else [[-180.0, -90.0, 180.0, 90.0]]
    )
    times = [i.datetime for i in items if i.datetime is not None]
    temporal = [[min(times), max(times)]] if times else [[None, None]]
    run = f"-{provenance.run_id[:12]}" if provenance.run_id else ""
    collection = pystac.Collection(
        id=f"naic_seg-maps{run}",
        description=description,
        extent=pystac.Extent(pystac.SpatialExtent(spatial), pystac.TemporalExtent(temporal)),
        license="other",
        title="naic-seg land-cover maps",
    )
    for link in provenance.links():
        collection.add_link(link)
    collection.add_items(items)
    return collection


class AtomicStacIO(DefaultStacIO):
    """pystac's file I/O, every write atomic; remembers what it wrote (for logging to MLflow)."""

    def __init__(self):
        super().__init__()
        self.written: list[Path] = []

    def write_text_to_href(self, href: str, txt: str) -> None:
        with atomic_open(href, "w", encoding="utf-8") as fh:
            fh.write(txt)
        self.written.append(Path(href))


def save_catalog(collection: pystac.Collection, folder: str | os.PathLike) -> list[Path]:
    """``collection.json`` and ``<item>.stac.json`` files in ``folder``, self-contained (relative hrefs)."""
    folder = Path(folder).resolve()
    layout = CustomLayoutStrategy(
        collection_func=lambda col, parent_dir, is_root: str(folder / COLLECTION_FILE),
        item_func=lambda item, parent_dir: str(folder / f"{item.id}{ITEM_SUFFIX}"),
    )
    collection.normalize_hrefs(str(folder), strategy=layout)
    collection.make_all_asset_hrefs_relative()
    stac_io = AtomicStacIO()
    collection.save(pystac.CatalogType.SELF_CONTAINED, stac_io=stac_io)
    return stac_io.written
