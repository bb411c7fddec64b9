"""GIS products of a land-cover map: polygons, styles and category names, STAC metadata, area estimates.

Plain library code (rasterio, shapely, pyogrio, pystac; no Kedro): the map_scenes pipeline's nodes call it.
"""
