"""One way from a parameter block to a typed options object: :class:`Options`.

A dataclass that mixes in :class:`Options` is built from a mapping (a Kedro parameter block) by
``from_params(params, where)``, which refuses, naming the dotted key (``where`` is the block's own path,
e.g. ``map_scenes`` or ``train_stage1.train``):

- a block that is not a mapping;
- an unknown key, with the closest valid one and all of them:
  ``unknown key 'overlapp' in map_scenes; did you mean 'overlap'? valid: checkpoints, tta, ...``;
- a missing key: ``conf/base`` states every key of every block, so a block without one was not merged
  with it; only keys a class lists in ``optional_keys`` may be left out (the field's default applies:
  keys of blocks that are null in ``conf/base``, such as ``data_prep.holdout_groups.pattern``);
- a value of the wrong type, read from the field's annotation: ``int``, ``float`` (an int is accepted),
  ``bool`` (an int is not), ``str``, ``list[...]``, ``dict[...]``, ``X | None``, ``Literal[...]`` choices,
  ``Any``, and another :class:`Options` class (a nested block, built the same way with its dotted path);
- a value out of range: the class's :meth:`Options.check` hook (run by the dataclass's ``__init__``, so
  Python callers get it too) raises ``ValueError("overlap must be in [0, 1), got 1.5")``, its message
  starting with the key, and ``from_params`` names it ``map_scenes.overlap must be in [0, 1), got 1.5``.

Fields listed in ``internal_keys`` are set from Python only (a parameter block may not name them).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

_NONE = type(None)


class OptionsError(ValueError):
    """A parameter block that cannot be used; the message names the dotted key and what is wrong."""


class Options:
    """Mix into a dataclass to build it from a parameter block with :meth:`from_params`."""

    # Parameter keys a block may leave out (the field's default applies); all others are needed.
    optional_keys: ClassVar[tuple[str, ...]] = ()
    # Fields a parameter block may not set (Python callers may).
    internal_keys: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Range checks across fields; raise ``ValueError`` whose message starts with the key."""

    @classmethod
    def param_keys(cls) -> list[str]:
        """The keys a parameter block of this class holds, in the order the class states them."""
        return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in cls.internal_keys]

    @classmethod
    def from_params(cls, params: Any, where: str):
        """The options of the block ``params`` found at ``where`` (a dotted path), checked as above."""
        if not isinstance(params, Mapping):
            raise OptionsError(f"{where} must be a mapping of {', '.join(cls.param_keys())}; got {params!r}")
        keys = cls.param_keys()
        _refuse_unknown(params, keys, where)
        missing = [k for k in keys if k not in params and k not in cls.optional_keys]
        if missing:
            raise OptionsError(
                f"{where} is missing key(s) {', '.join(map(repr, missing))}: conf/base states every key "
                "(an environment or --params overrides single keys of it)"
            )
        hints = typing.get_type_hints(cls)
        values = {k: _typed(hints[k], params[k], f"{where}.{k}") for k in keys if k in params}
        try:
            return cls(**values)
        except OptionsError:
            raise
        except ValueError as err:  # from check(): "<key> must be ..." -> "<where>.<key> must be ..."
            raise OptionsError(_dotted(where, str(err), keys)) from None


def _refuse_unknown(params: Mapping, keys: list[str], where: str) -> None:
    unknown = [str(k) for k in params if k not in keys]
    if not unknown:
        return
    close = {k: difflib.get_close_matches(k, keys, n=1) for k in unknown}
    if len(unknown) == 1:
        key = unknown[0]
        guess = f" did you mean '{close[key][0]}'?" if close[key] else ""
        raise OptionsError(f"unknown key '{key}' in {where};{guess} valid: {', '.join(keys)}")
    named = ", ".join(f"'{k}'" + (f" (did you mean '{close[k][0]}'?)" if close[k] else "") for k in unknown)
    raise OptionsError(f"unknown keys {named} in {where}; valid: {', '.join(keys)}")


def _dotted(where: str, message: str, keys: list[str]) -> str:
    head = message.split(" ", 1)[0].split(".", 1)[0].split("[", 1)[0]
    return f"{where}.{message}" if head in keys else f"{where}: {message}"


def _typed(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (a nested Options block built); else OptionsError."""
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, Options):
        return tp.from_params(value, where)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return _union(args, value, where)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise OptionsError(f"{where} must be one of {', '.join(map(_show, args))}, got {value!r}")
    if not _is(tp if origin is None else origin, value):
        raise OptionsError(f"{where} must be {_describe(tp)}, got {value!r}")
    if origin is list and args:
        return [_typed(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and len(args) == 2:
        return {k: _typed(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return value


def _union(args: tuple, value: Any, where: str) -> Any:
    if value is None and _NONE in args:
        return None
    for arg in args:
        nested = isinstance(arg, type) and issubclass(arg, Options)
        if nested and isinstance(value, Mapping):
            return arg.from_params(value, where)  # its own message names the nested key
        if arg is not _NONE and _fits(arg, value):
            return _typed(arg, value, where)
    raise OptionsError(f"{where} must be {' or '.join(_describe(a) for a in args)}, got {value!r}")


def _fits(tp: Any, value: Any) -> bool:
    try:
        _typed(tp, value, "")
    except OptionsError:
        return False
    return True


def _is(tp: Any, value: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if tp is dict:
        return isinstance(value, Mapping)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    origin = get_origin(tp) or tp
    if get_origin(tp) is Literal:
        return " or ".join(map(_show, get_args(tp)))
    if isinstance(tp, type) and issubclass(tp, Options):
        return f"a mapping of {', '.join(tp.param_keys())}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", _NONE: "null"}
    names |= {list: "a list", tuple: "a list", dict: "a mapping"}
    return names.get(origin, getattr(origin, "__name__", str(origin)))


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, str) else repr(value)
