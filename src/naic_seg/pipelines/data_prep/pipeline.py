from kedro.pipeline import Pipeline, node

from naic_seg.pipelines.data_prep.nodes import prepare_manifests


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                prepare_manifests,
                inputs=[
                    "train_images",
                    "train_labels",
                    "test_images",
                    "params:classes",
                    "params:ignore_values",
                    "params:data_prep",
                ],
                outputs=["train_manifest", "val_manifest", "test_manifest", "dataset_report"],
                name="prepare_manifests",
            )
        ]
    )
