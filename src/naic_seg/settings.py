"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from kedro.config import OmegaConfigLoader

from naic_seg.hooks import OutputCheckHook, RunHook

HOOKS = (OutputCheckHook(), RunHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment overrides single keys of a parameter block instead of replacing the block.
    "merge_strategy": {"parameters": "soft"},
}
