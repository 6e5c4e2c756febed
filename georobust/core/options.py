"""The one option parser: ``key=value`` text (the command line's ``-o``/``-O``/``-D``) and keyword options
checked against a function's signature and converted to the type of each option's default.

Used by the registries (an attack's or objective's options), ``make_objective`` and the CLI, so an option
means the same thing whichever door it comes through.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import OptionError, unknown_name

_EMPTY = inspect.Parameter.empty


def parse_value(text: str) -> Any:
    """A value written on the command line: JSON (``0.1``, ``[1, 2]``, ``"s"``, ``true``) where it parses,
    ``none``/``null``/``true``/``false`` in any case, else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.strip().lower()
        if low in ("none", "null"):
            return None
        if low in ("true", "false"):
            return low == "true"
        return text


def parse_assignments(items: Iterable[str] | None, what: str = "option") -> dict[str, Any]:
    """``["a=1", "b-c=x"]`` → ``{"a": 1, "b_c": "x"}`` (dashes in keys become underscores); a key given twice
    or an item without ``=`` is an :class:`~georobust.errors.OptionError`."""
    out: dict[str, Any] = {}
    for o in items or []:
        if "=" not in o:
            raise OptionError(f"{what} {o!r} must look like key=value")
        k, v = o.split("=", 1)
        k = k.strip().replace("-", "_")
        if k in out:
            raise OptionError(f"{what} {k!r} is given twice; give it once")
        out[k] = parse_value(v.strip())
    return out


def coerce(key: str, value: Any, default: Any = _EMPTY) -> Any:
    """Convert an option given as a string to the type of its ``default`` (``"0.1"`` → 0.1, ``"true"`` →
    True, ``"none"`` → None); non-strings and string defaults pass through. Without a typed default the
    string is read by :func:`parse_value`."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    low = value.strip().lower()
    if default is _EMPTY or default is None:
        return parse_value(value.strip())
    if isinstance(default, bool):
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise OptionError(f"option {key} expects true/false, got {value!r}")
    if low in ("none", "null"):
        return None
    if not isinstance(default, (int, float)):
        return parse_value(value.strip())
    try:
        if isinstance(default, int):
            return int(low)
        v = float(low)
        return v if math.isfinite(v) else value
    except ValueError:
        if key == "norm":
            return value
        raise OptionError(f"option {key} expects a number, got {value!r}") from None


def keyword_options(fn: Callable[..., Any], *, keyword_only: bool = True) -> dict[str, inspect.Parameter]:
    """The options of ``fn`` by name: its keyword-only parameters (or, for a class or ``keyword_only=False``,
    every named parameter but ``self``)."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = inspect.signature(target).parameters
    kinds = (inspect.Parameter.KEYWORD_ONLY,) if keyword_only and not inspect.isclass(fn) else (
        inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {n: p for n, p in params.items() if p.kind in kinds and n != "self"}


def bind_options(what: str, known: Mapping[str, inspect.Parameter], options: Mapping[str, Any]) -> dict[str, Any]:
    """Check every option name against ``known`` (an unknown one is an error with a suggestion) and coerce
    string values to the type of the option's default."""
    out = {}
    for k, v in options.items():
        if k not in known:
            raise unknown_name(f"option of {what}", k, known or {"(none)"})
        out[k] = coerce(k, v, known[k].default)
    return out
