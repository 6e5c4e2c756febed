"""Name registries: attacks, analyses and training objectives register themselves here, so the CLI and the
evaluation suite find them by name. Adding a method means one new module that calls ``register``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import OptionError, unknown_name


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Callable[..., Any]
    kind: str  # "minimal", "bounded", "black-box", "universal", "analysis", "objective", ...
    norms: tuple[str, ...] = ()
    summary: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, inspect.Parameter]:
        """Keyword-only options of the function, by name."""
        sig = inspect.signature(self.fn)
        return {n: p for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def check_options(self, opts: dict[str, Any]) -> None:
        known = self.options()
        for key in opts:
            if key not in known:
                raise unknown_name(f"option of {self.name}", key, known)


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, kind: str, norms: tuple[str, ...] = (), summary: str = "", **extra):
        def deco(fn):
            if name in self._entries and self._entries[name].fn is not fn:
                raise OptionError(f"{self.kind} {name!r} is registered twice")
            doc = summary or (inspect.getdoc(fn) or "").split("\n")[0]
            self._entries[name] = Entry(name, fn, kind, tuple(norms), doc, dict(extra))
            return fn

        return deco

    def get(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            raise unknown_name(self.kind, name, self._entries)
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def _load(self) -> None:
        # importing the packages registers their members
        if self.kind == "attack":
            import georobust.attacks  # noqa: F401
        elif self.kind == "objective":
            import georobust.defenses  # noqa: F401
        elif self.kind == "analysis":
            import georobust.geometry  # noqa: F401


attacks = Registry("attack")
objectives = Registry("objective")
analyses = Registry("analysis")
