from functools import partial

from kedro.pipeline import Pipeline, node

from naic_seg.pipelines.training.nodes import (
    log_checkpoint,
    plot_confusion,
    plot_validation_grid,
    train_stage,
)

SHARED = {"train_manifest": "train_manifest", "val_manifest": "val_manifest"}


def template(stage: int) -> Pipeline:
    """One stage: inputs ``init_checkpoint`` (a checkpoint, a path or null), the manifests and ``options``,
    the stage's whole parameter block (each node parses it: see ``pipelines.training.options``)."""
    return Pipeline(
        [
            node(
                partial(train_stage, stage=stage),
                inputs={
                    "train_manifest": "train_manifest",
                    "val_manifest": "val_manifest",
                    "init_checkpoint": "init_checkpoint",
                    "classes": "params:classes",
                    "options": "params:options",
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
            node(
                partial(log_checkpoint, stage=stage),
                ["checkpoint", "params:options"],
                None,
                name="log_checkpoint",
            ),
        ]
    )


def create_pipeline(stage: int) -> Pipeline:
    """``train_stage1`` starts from its ``init_checkpoint`` parameter (null: the pretrained backbone);
    ``train_stage2`` from ``stage1_checkpoint``."""
    namespace = f"train_stage{stage}"
    init = f"params:{namespace}.init_checkpoint" if stage == 1 else f"stage{stage - 1}_checkpoint"
    return Pipeline(
        template(stage),
        namespace=namespace,
        inputs={**SHARED, "init_checkpoint": init},
        parameters={"params:classes": "params:classes", "params:options": f"params:{namespace}"},
        outputs={"checkpoint": f"stage{stage}_checkpoint", "metrics": f"stage{stage}_metrics"},
    )
