from kedro.pipeline import Pipeline, node

from naic_seg.pipelines.training.nodes import (
    log_checkpoint,
    plot_confusion,
    plot_validation_grid,
    train_stage,
)

SHARED = {"train_manifest": "train_manifest", "val_manifest": "val_manifest"}


def template() -> Pipeline:
    """One stage: inputs ``init_checkpoint`` (a checkpoint, a path or null) and the manifests."""
    return Pipeline(
        [
            node(
                train_stage,
                inputs={
                    "train_manifest": "train_manifest",
                    "val_manifest": "val_manifest",
                    "init_checkpoint": "init_checkpoint",
                    "classes": "params:classes",
                    "name": "params:name",
                    "model": "params:model",
                    "train": "params:train",
                    "distributed": "params:distributed",
                },
                outputs=["checkpoint", "metrics", "validation_tiles", "scores"],
                name="train",
            ),
            node(
                plot_confusion, ["metrics", "params:classes"], "confusion_matrix_plot", name="plot_confusion"
            ),
            node(
                plot_validation_grid,
                ["validation_tiles", "params:classes"],
                "validation_grid_plot",
                name="plot_validation_grid",
            ),
            node(log_checkpoint, ["checkpoint", "params:log_checkpoint"], None, name="log_checkpoint"),
        ]
    )


def create_pipeline(stage: int) -> Pipeline:
    """``train_stage1`` starts from its ``init_checkpoint`` parameter (null: the pretrained backbone);
    ``train_stage2`` from ``stage1_checkpoint``."""
    namespace = f"train_stage{stage}"
    init = f"params:{namespace}.init_checkpoint" if stage == 1 else f"stage{stage - 1}_checkpoint"
    return Pipeline(
        template(),
        namespace=namespace,
        inputs={**SHARED, "init_checkpoint": init},
        parameters={"params:classes": "params:classes"},
        outputs={"checkpoint": f"stage{stage}_checkpoint", "metrics": f"stage{stage}_metrics"},
    )
