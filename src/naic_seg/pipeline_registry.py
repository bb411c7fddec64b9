"""The project's pipelines. Registered explicitly: the training template is used twice."""

from kedro.pipeline import Pipeline

from naic_seg.pipelines import data_prep, map_scenes, model_export, submit, training


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {
        "data_prep": data_prep.create_pipeline(),
        "train_stage1": training.create_pipeline(stage=1),
        # stage 2 ends by handing the trained model to MLflow (a pyfunc model, registered)
        "train_stage2": training.create_pipeline(stage=2) + model_export.create_pipeline(),
        "submit": submit.create_pipeline(),
        "map_scenes": map_scenes.create_pipeline(),
    }
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    return pipelines
