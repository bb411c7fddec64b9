"""QGIS styles and GDAL category names beside a map: valid XML naming every class in its colour, read back
by GDAL itself, for maps of class indices and of NAIC values."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import rasterio

from naic_seg.core.gis.style import (
    confidence_style,
    qgis_style,
    write_category_names,
    write_confidence_style,
    write_qgis_style,
)
from naic_seg.core.labels import PALETTE
from naic_seg.core.scenes import SceneOptions, map_scene
from tests.core.gis.gdal_c import category_names_and_table
from tests.core.test_scenes import CLASSES, conv_logits, random_scene, write_scene

EXPECTED_VALUES = {"index": list(range(8)), "naic": [100, 200, 300, 400, 500, 600, 700, 800]}


@pytest.mark.parametrize("output_values", ["index", "naic"])
def test_qgis_style_names_every_class_in_its_map_colour(tmp_path, output_values):
    write_qgis_style(tmp_path / "m.qml", CLASSES, output_values)
    text = (tmp_path / "m.qml").read_text()
    assert text.startswith("<!DOCTYPE qgis")
    root = ET.fromstring(text)
    renderer = root.find("pipe/rasterrenderer")
    assert root.tag == "qgis" and renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [int(e.get("value")) for e in entries] == EXPECTED_VALUES[output_values]
    assert [e.get("label") for e in entries] == list(CLASSES.names)
    assert [e.get("color") for e in entries] == ["#{:02x}{:02x}{:02x}".format(*c) for c in PALETTE[:8]]
    assert text == qgis_style(CLASSES, output_values)


@pytest.mark.parametrize(("output_values", "length"), [("index", 8), ("naic", 801)])
def test_gdal_reads_the_category_names_and_the_colour_table_stays_in_the_cog(tmp_path, output_values, length):
    """GDAL's category names are indexed by pixel value: 8 for indices, 801 (mostly empty) for 100..800;
    the attribute table has one row per class either way."""
    scene = write_scene(tmp_path / "s.tif", random_scene(80, 90))
    target = tmp_path / "s_map.tif"
    map_scene(scene, target, conv_logits(), CLASSES, SceneOptions(window=64, output_values=output_values))
    write_category_names(f"{target}.aux.xml", CLASSES, output_values)
    names, table = category_names_and_table(target)
    assert len(names) == length
    assert {i: n for i, n in enumerate(names) if n} == dict(
        zip(EXPECTED_VALUES[output_values], CLASSES.names, strict=True)
    )
    assert [(int(r["Value"]), r["Class"]) for r in table] == list(
        zip(EXPECTED_VALUES[output_values], CLASSES.names, strict=True)
    )
    assert [(int(r["Red"]), int(r["Green"]), int(r["Blue"])) for r in table] == [
        tuple(c) for c in PALETTE[:8]
    ]
    with rasterio.open(target) as src:
        first = EXPECTED_VALUES[output_values][0]
        assert src.colormap(1)[first][:3] == tuple(PALETTE[0])
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_confidence_style_ramps_from_a_guess_among_the_classes_to_certainty(tmp_path):
    write_confidence_style(tmp_path / "c.qml", 8)
    root = ET.fromstring((tmp_path / "c.qml").read_text())
    items = root.findall("pipe/rasterrenderer/rastershader/colorrampshader/item")
    assert [int(i.get("value")) for i in items] == [32, 143, 255]  # round(255 / 8) .. 255
    assert items[0].get("label") == "p = 0.13" and items[-1].get("label") == "p = 1.00"
    assert confidence_style(2).count("<item") == 3
