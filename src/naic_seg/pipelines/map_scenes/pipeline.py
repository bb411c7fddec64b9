from kedro.pipeline import Pipeline, node

from naic_seg.pipelines.map_scenes.nodes import (
    catalog_scenes,
    draw_quicklooks,
    estimate_areas,
    map_scenes,
    measure_areas,
    score_maps,
    style_maps,
    vectorise_maps,
)

MAP_INPUTS = ["scenes", "scene_maps", "params:classes", "params:map_scenes"]
# The products a STAC Item lists, by asset key (see naic_seg.core.gis.stac.ASSETS).
PRODUCTS = {
    "confidence": "scene_confidence",
    "polygons": "scene_polygons",
    "style": "scene_styles",
    "confidence_style": "scene_confidence_styles",
    "category_names": "scene_category_names",
    "quicklook": "scene_quicklooks",
}


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                map_scenes,
                ["scenes", "stage1_checkpoint", "stage2_checkpoint", "params:classes", "params:map_scenes"],
                ["scene_maps", "scene_confidence", "scene_map_model"],
                name="map_scenes",
            ),
            node(measure_areas, MAP_INPUTS, "scene_areas", name="measure_scene_areas"),
            node(draw_quicklooks, MAP_INPUTS, "scene_quicklooks", name="draw_scene_quicklooks"),
            node(score_maps, MAP_INPUTS, ["scene_scores", "scene_metrics"], name="score_scene_maps"),
            node(
                style_maps,
                MAP_INPUTS,
                ["scene_styles", "scene_category_names", "scene_confidence_styles"],
                name="style_scene_maps",
            ),
            node(vectorise_maps, MAP_INPUTS, "scene_polygons", name="vectorise_scene_maps"),
            node(
                estimate_areas,
                ["scene_areas", "scene_scores", "params:classes"],
                ["scene_area_estimates", "scene_area_metrics"],
                name="estimate_scene_areas",
            ),
            node(
                catalog_scenes,
                {
                    "scenes": "scenes",
                    "scene_maps": "scene_maps",
                    "scene_areas": "scene_areas",
                    "scene_map_model": "scene_map_model",
                    "classes": "params:classes",
                    "options": "params:map_scenes",
                    **PRODUCTS,
                },
                "scene_stac",
                name="catalog_scenes",
            ),
        ]
    )
