"""Read what GDAL itself makes of a raster's category names and attribute table, through the C API of the
GDAL library that rasterio's wheel ships (rasterio exposes neither; GDAL's Python bindings are absent)."""

from __future__ import annotations

import ctypes
import glob
import os

import pytest
import rasterio


def _libgdal() -> ctypes.CDLL:
    folder = os.path.join(os.path.dirname(os.path.dirname(rasterio.__file__)), "rasterio.libs")
    found = glob.glob(os.path.join(folder, "libgdal*.so*")) or glob.glob(os.path.join(folder, "*gdal*.dylib"))
    if not found:
        pytest.skip(
            f"no GDAL shared library beside rasterio in {folder} (a rasterio built against a system GDAL)"
        )
    lib = ctypes.CDLL(found[0])
    lib.GDALOpen.restype = ctypes.c_void_p
    lib.GDALOpen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.GDALGetRasterBand.restype = ctypes.c_void_p
    lib.GDALGetRasterBand.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.GDALGetRasterCategoryNames.restype = ctypes.POINTER(ctypes.c_char_p)
    lib.GDALGetRasterCategoryNames.argtypes = [ctypes.c_void_p]
    lib.GDALGetDefaultRAT.restype = ctypes.c_void_p
    lib.GDALGetDefaultRAT.argtypes = [ctypes.c_void_p]
    for name in ("GDALRATGetRowCount", "GDALRATGetColumnCount"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.GDALRATGetNameOfCol.restype = ctypes.c_char_p
    lib.GDALRATGetNameOfCol.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.GDALRATGetValueAsString.restype = ctypes.c_char_p
    lib.GDALRATGetValueAsString.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.GDALClose.argtypes = [ctypes.c_void_p]
    lib.GDALGetGeoTransform.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_double)]
    lib.GDALAllRegister()
    return lib


def category_names_and_table(path) -> tuple[list[str], list[dict[str, str]]]:
    """Band 1's category names and default attribute table (rows as {column: text}), as GDAL reads them."""
    lib = _libgdal()
    dataset = lib.GDALOpen(os.fsencode(path), 0)
    assert dataset, f"GDAL cannot open {path}"
    try:
        # GeoTIFF loads its PAM sidecar lazily and GetCategoryNames alone does not trigger it (GDAL 3.10);
        # gdalinfo and QGIS read the georeferencing first, which does: so do we.
        lib.GDALGetGeoTransform(dataset, (ctypes.c_double * 6)())
        band = lib.GDALGetRasterBand(dataset, 1)
        names, raw = [], lib.GDALGetRasterCategoryNames(band)
        while raw and raw[len(names)] is not None:
            names.append(raw[len(names)].decode())
        rows = []
        rat = lib.GDALGetDefaultRAT(band)
        if rat:
            columns = [
                lib.GDALRATGetNameOfCol(rat, c).decode() for c in range(lib.GDALRATGetColumnCount(rat))
            ]
            for r in range(lib.GDALRATGetRowCount(rat)):
                rows.append(
                    {c: lib.GDALRATGetValueAsString(rat, r, i).decode() for i, c in enumerate(columns)}
                )
        return names, rows
    finally:
        lib.GDALClose(dataset)
