"""STAC: Items and a Collection that pystac reads back, footprints in EPSG:4326, every asset a file
beside them by a relative href (the folder copied elsewhere still resolves), valid against the STAC schemas
shipped with pystac."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pystac
import pystac.validation
import pytest
import rasterio
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from rasterio.warp import transform_bounds

from naic_seg.core.gis.stac import Provenance, SceneProducts, run_collection, save_catalog, scene_item
from naic_seg.core.gis.style import write_category_names, write_qgis_style
from naic_seg.core.scenes import SceneOptions, area_table, map_scene
from tests.core.test_scenes import CLASSES, conv_logits, random_scene, write_scene

MAPPED_AT = dt.datetime(2026, 5, 4, 3, 2, 1, tzinfo=dt.timezone.utc)
PROVENANCE = Provenance("0123456789abcdef", (("naic_seg", "7"),))
SUFFIXES = {"map": ".tif", "confidence": "_confidence.tif", "style": ".qml", "category_names": ".tif.aux.xml"}


@pytest.fixture
def catalog(tmp_path):
    """Two scenes mapped, styled and catalogued in tmp/products; returns that folder."""
    products = tmp_path / "products"
    items = []
    for name, (h, w) in {"north": (90, 120), "south": (70, 60)}.items():
        scene = write_scene(tmp_path / f"{name}.tif", random_scene(h, w, seed=h))
        files = {k: products / f"{name}{s}" for k, s in (("map", ".tif"), ("confidence", "_confidence.tif"))}
        map_scene(scene, files["map"], conv_logits(), CLASSES, SceneOptions(window=64), files["confidence"])
        files["style"] = products / f"{name}.qml"
        write_qgis_style(files["style"], CLASSES, "index")
        files["category_names"] = products / f"{name}.tif.aux.xml"
        write_category_names(files["category_names"], CLASSES, "index")
        areas = area_table(files["map"], CLASSES)
        items.append(
            scene_item(SceneProducts(name, scene, files), CLASSES, "index", MAPPED_AT, PROVENANCE, areas)
        )
    save_catalog(run_collection(items, PROVENANCE, "two test scenes"), products)
    return products


def test_items_and_collection_read_back_with_footprints_and_every_asset_beside_them(catalog, tmp_path):
    copied = shutil.copytree(catalog, tmp_path / "elsewhere" / "copy")  # relative hrefs: still resolves
    shutil.rmtree(catalog)
    collection = pystac.Collection.from_file(str(copied / "collection.json"))
    items = {item.id: item for item in collection.get_items()}
    assert sorted(items) == ["north", "south"]
    assert collection.id == "naic_seg-maps-0123456789ab"
    for name, item in items.items():
        with rasterio.open(copied / f"{name}.tif") as src:
            assert item.bbox == pytest.approx(
                list(transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21))
            )
            proj = ProjectionExtension.ext(item)
            assert proj.code == "EPSG:32650" and proj.shape == [src.height, src.width]
            assert proj.transform == list(src.transform)[:6] and proj.bbox == list(src.bounds)
        assert item.datetime == MAPPED_AT and item.properties["created"] == MAPPED_AT.isoformat()
        assert set(item.assets) == {"map", "confidence", "style", "category_names"}
        for key, asset in item.assets.items():
            assert not asset.href.startswith("/") and (copied / asset.href).resolve().is_file()
            assert (copied / asset.href).resolve() == (copied / f"{name}{SUFFIXES[key]}").resolve()
        assert item.assets["map"].media_type == pystac.MediaType.COG and item.assets["map"].roles == ["data"]
        assert item.assets["map"].extra_fields["nodata"] == 255
        classes = ClassificationExtension.ext(item.assets["map"]).classes
        assert [(c.value, c.name, c.color_hint) for c in classes[:2]] == [
            (0, "water", "1F77B4"),
            (1, "transport", "7F7F7F"),
        ]
        assert classes[-1].value == 255 and classes[-1].nodata is True
        hrefs = {link.href for link in item.links if link.rel == "via"}
        assert hrefs == {"runs:/0123456789abcdef", "models:/naic_seg/7"}
        geometry = item.geometry["coordinates"][0]
        lons, lats = [p[0] for p in geometry], [p[1] for p in geometry]
        assert [min(lons), min(lats), max(lons), max(lats)] == pytest.approx(item.bbox)
    boxes = [i.bbox for i in items.values()]
    assert collection.extent.spatial.bboxes[0] == pytest.approx(
        [
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        ]
    )


def test_items_and_collection_are_valid_against_the_core_stac_schemas_offline(catalog):
    """pystac ships the STAC 1.1 core JSON schemas (item, collection and their parts): checked here without
    network. The extensions' own schemas are not shipped; see the next test."""
    validator = pystac.validation.JsonSchemaSTACValidator()
    for path in sorted(catalog.glob("*.json")):
        data = json.loads(path.read_text())
        assert pystac.validation.validate_dict(data, extensions=[], validator=validator), path


def test_items_are_valid_against_the_extension_schemas_when_they_are_at_hand(catalog):
    item = json.loads((catalog / "north.stac.json").read_text())
    validator = pystac.validation.JsonSchemaSTACValidator()
    missing = [uri for uri in item["stac_extensions"] if uri not in validator.schema_cache]
    if missing:
        pytest.skip(
            f"the extension schemas {missing} ship in no package (pystac ships only the core STAC schemas, "
            "pystac-ext-* none) and the tests fetch nothing from the web: the projection and classification "
            "fields are read back through pystac's extension classes in the test above instead"
        )
    pystac.validation.validate_dict(item, validator=validator)
