"""The project's pipelines. Registered explicitly: the training template is used twice."""

from kedro.pipeline import Pipeline

from naic_seg.pipelines import data_prep, map_scenes, submit, training


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {
        "data_prep": data_prep.create_pipeline(),
        "train_stage1": training.create_pipeline(stage=1),
        "train_stage2": training.create_pipeline(stage=2),
        "submit": submit.create_pipeline(),
        "map_scenes": map_scenes.create_pipeline(),
    }
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    return pipelines
