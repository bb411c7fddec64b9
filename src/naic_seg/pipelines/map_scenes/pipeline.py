from kedro.pipeline import Pipeline, node

from naic_seg.pipelines.map_scenes.nodes import draw_quicklooks, map_scenes, measure_areas, score_maps


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                map_scenes,
                ["scenes", "stage1_checkpoint", "stage2_checkpoint", "params:classes", "params:map_scenes"],
                "scene_maps",
                name="map_scenes",
            ),
            node(
                measure_areas,
                ["scenes", "scene_maps", "params:classes", "params:map_scenes"],
                "scene_areas",
                name="measure_scene_areas",
            ),
            node(
                draw_quicklooks,
                ["scenes", "scene_maps", "params:classes", "params:map_scenes"],
                "scene_quicklooks",
                name="draw_scene_quicklooks",
            ),
            node(
                score_maps,
                ["scenes", "scene_maps", "params:classes", "params:map_scenes"],
                ["scene_scores", "scene_metrics"],
                name="score_scene_maps",
            ),
        ]
    )
