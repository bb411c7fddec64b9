"""The third-party warnings every ``kedro run`` of this project would print, silenced one by one.

Each entry names the exact warning category and a regular expression for the start of its message, so a
new or different warning (from these libraries or any other) still shows. They are installed when the
package is imported, which ``kedro run`` does before it loads kedro-mlflow and before any of these is
raised. Why each one is harmless:

* omegaconf's ``register_new_resolver()`` deprecation: raised inside Kedro's and kedro-mlflow's own config
  loaders, four times a run; nothing in this project calls it.
* pydantic's class-based ``config`` deprecation: in kedro-mlflow's configuration classes.
* MLflow's "Hint: Inferred schema contains integer column(s)": about missing values in integer columns; the
  served model's ``height`` and ``width`` are never missing.

One stays, once a process: MLflow's "Add type hints to the `predict` method", raised when a ``PythonModel``
subclass is defined (kedro-mlflow's, this project's served model). MLflow raises it inside its own
``catch_warnings`` block that resets the filters, so no filter outside can reach it; the served model
declares its signature explicitly.
"""

from __future__ import annotations

import logging
import warnings

# (category's module, category's name, message regex)
KNOWN_WARNINGS: tuple[tuple[str, str, str], ...] = (
    ("builtins", "UserWarning", r"register_new_resolver\(\) is deprecated"),
    ("pydantic.warnings", "PydanticDeprecatedSince20", r"Support for class-based `config` is deprecated"),
    ("builtins", "UserWarning", r"Hint: Inferred schema contains integer column\(s\)"),
)
# Loggers whose INFO lines repeat on every run and say nothing about it.
QUIET_LOGGERS: tuple[str, ...] = ("kedro.validation.parameter_validator",)


def _category(module: str, name: str) -> type[Warning] | None:
    import importlib

    try:
        category = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return category if isinstance(category, type) and issubclass(category, Warning) else None


def install() -> None:
    """Ignore exactly the known warnings."""
    for module, name, message in KNOWN_WARNINGS:
        category = _category(module, name)
        if category is not None:
            warnings.filterwarnings("ignore", message=message, category=category)


def quiet_loggers() -> None:
    """The known chatty loggers to WARNING (after Kedro has configured logging, which resets them)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
