from kedro.pipeline import Pipeline, node

from naic_seg.pipelines.model_export.nodes import log_mlflow_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                log_mlflow_model,
                ["stage2_checkpoint", "stage2_metrics", "params:model_export"],
                "mlflow_model_info",
                name="log_mlflow_model",
            )
        ]
    )
