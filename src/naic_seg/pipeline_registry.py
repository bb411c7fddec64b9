"""The project's pipelines. Registered explicitly: the training template is used twice."""

from kedro.pipeline import Pipeline

from naic_seg.pipelines import data_prep


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {"data_prep": data_prep.create_pipeline()}
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    return pipelines
