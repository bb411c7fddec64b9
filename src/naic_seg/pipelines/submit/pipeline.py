from kedro.pipeline import Pipeline, node

from naic_seg.pipelines.submit.nodes import evaluate_submission, make_submission, predict_test_tiles


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                predict_test_tiles,
                [
                    "test_manifest",
                    "stage1_checkpoint",
                    "stage2_checkpoint",
                    "params:classes",
                    "params:submit",
                ],
                "test_predictions",
                name="predict_test_tiles",
            ),
            node(
                make_submission,
                ["test_predictions", "test_manifest", "params:classes"],
                "submission",
                name="make_submission",
            ),
            node(
                evaluate_submission,
                ["submission", "test_labels", "params:classes"],
                ["submission_metrics", "submission_scores"],
                name="evaluate_submission",
            ),
        ]
    )
