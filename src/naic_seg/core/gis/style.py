"""Class names and colours where desktop GIS looks for them, beside a map COG (its colour table stays in it).

- ``<map>.qml``: a QGIS style, paletted renderer, one entry (value, colour, name) per class. QGIS applies a
  ``.qml`` with the raster's base name when the raster is opened.
- ``<map>_confidence.qml``: beside the confidence COG, a colour ramp from red (the top class no likelier than
  the others, p = 1/C) to green (p = 1), labelled with probabilities.
- ``<map>.tif.aux.xml``: GDAL's PAM sidecar with the band's category names and a raster attribute table.
  GDAL's category names are a list indexed by pixel value, so a map of class indices (0..7) gets 8 names and a
  map of NAIC values (100..800) gets 801, the ones between the class values empty (``gdalinfo`` prints them
  all); the attribute table (one row per class: value, name, colour) is the compact form that QGIS (3.30+) and
  ArcGIS read for such values.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from naic_seg.core.atomic import atomic_open
from naic_seg.core.labels import ClassTable
from naic_seg.core.scenes import colormap

QGIS_VERSION = "3.28.0-Firenze"  # the long-term release whose style format this follows; later ones read it
# GDAL's field types and usages (gdal.h: GDALRATFieldType, GDALRATFieldUsage)
_INTEGER, _STRING = 0, 2
_USAGE = {"generic": 0, "name": 2, "min_max": 5, "red": 6, "green": 7, "blue": 8, "alpha": 9}


def class_entries(
    classes: ClassTable, output_values: str
) -> list[tuple[int, str, tuple[int, int, int, int]]]:
    """(stored value, name, RGBA) of each class, as the map stores it and colours it."""
    colours = colormap(classes, output_values)
    return [(value, name, colours[value]) for value, name in zip(colours, classes.names, strict=True)]


def hex_colour(rgba: tuple[int, ...]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgba[:3])


def _xml(root: ET.Element) -> str:
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def qgis_style(classes: ClassTable, output_values: str) -> str:
    """A QGIS layer style (QML) drawing band 1 with one colour and legend label per class value."""
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="Symbology")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1")
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, name, rgba in class_entries(classes, output_values):
        attrs = {"value": str(value), "color": hex_colour(rgba), "alpha": str(rgba[3]), "label": name}
        ET.SubElement(palette, "paletteEntry", attrs)
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + _xml(root)


def confidence_style(num_classes: int) -> str:
    """A QGIS style for a confidence COG (``round(255 p)``): red at p = 1/C, yellow half-way, green at 1."""
    low = round(255 / num_classes)
    stops = [(low, "#d7191c"), ((low + 255) // 2, "#ffffbf"), (255, "#1a9641")]
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="Symbology")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="singlebandpseudocolor", band="1", opacity="1")
    renderer.attrib |= {"alphaBand": "-1", "classificationMin": str(low), "classificationMax": "255"}
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader")
    shader.attrib |= {"colorRampType": "INTERPOLATED", "classificationMode": "1", "clip": "0"}
    shader.attrib |= {"minimumValue": str(low), "maximumValue": "255"}
    for value, colour in stops:
        label = f"p = {value / 255:.2f}"
        ET.SubElement(shader, "item", value=str(value), color=colour, alpha="255", label=label)
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(root, "blendMode").text = "0"
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + _xml(root)


def _attribute_table(band: ET.Element, entries) -> None:
    table = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    fields = [("Value", _INTEGER, "min_max"), ("Class", _STRING, "name")]
    fields += [(c.capitalize(), _INTEGER, c) for c in ("red", "green", "blue", "alpha")]
    for i, (name, kind, usage) in enumerate(fields):
        field = ET.SubElement(table, "FieldDefn", index=str(i))
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(kind)
        ET.SubElement(field, "Usage").text = str(_USAGE[usage])
    for i, (value, name, rgba) in enumerate(entries):
        row = ET.SubElement(table, "Row", index=str(i))
        for cell in (value, name, *rgba):
            ET.SubElement(row, "F").text = str(cell)


def gdal_category_names(classes: ClassTable, output_values: str) -> str:
    """GDAL's PAM XML for band 1: category names indexed by pixel value, and a thematic attribute table."""
    entries = class_entries(classes, output_values)
    names = [""] * (max(value for value, _, _ in entries) + 1)
    for value, name, _ in entries:
        names[value] = name
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    categories = ET.SubElement(band, "CategoryNames")
    for name in names:
        ET.SubElement(categories, "Category").text = name
    _attribute_table(band, entries)
    return _xml(root)


def write_qgis_style(target: str | os.PathLike, classes: ClassTable, output_values: str) -> None:
    with atomic_open(target, "w", encoding="utf-8") as fh:
        fh.write(qgis_style(classes, output_values))


def write_confidence_style(target: str | os.PathLike, num_classes: int) -> None:
    with atomic_open(target, "w", encoding="utf-8") as fh:
        fh.write(confidence_style(num_classes))


def write_category_names(target: str | os.PathLike, classes: ClassTable, output_values: str) -> None:
    """``target``: the map's path + ``.aux.xml``, where GDAL looks for it."""
    with atomic_open(target, "w", encoding="utf-8") as fh:
        fh.write(gdal_category_names(classes, output_values))
