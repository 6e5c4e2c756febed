"""Name registries: every method registers itself where it is defined, and the CLI, the evaluation suite and
the data/model loaders find it by name. Adding a method, a data set or an architecture is one new module
(or function) that calls ``register``: no list of imports to keep in step.

A registry knows the *package* its members live in (``"georobust.attacks"``, ...) and imports it by name on
the first lookup; no module here imports a method package, so the registry sits below everything that
registers in it (no import cycle).

Each :class:`Entry` carries what the rest of the package dispatches on, never on a method's name:

* ``threat``: the threat model of an attack (:mod:`georobust.core.threat`): how its perturbation's size is
  measured and how robust accuracy is read from its result;
* ``task``: what the model outputs and how success is judged (:mod:`georobust.core.tasks`);
* ``access``: what an attack needs of the model: ``"gradient"`` (white-box), ``"scores"`` (score-based:
  logits only, e.g. Square, SPSA) or ``"labels"`` (decision-based); the cascade's alarms compare the kinds;
* ``chunking``: how the CLI may split a run into chunks to show progress (``"position"``: each sample's
  answer is independent of the others and of the chunking; ``"remaining"``: the attack draws randomness per
  batch, so chunks are taken over the samples still to do; ``None``: run whole);
* ``norms``: the norms an attack or objective supports.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .core.options import bind_options, keyword_options
from .core.threat import ThreatModel, threat_model
from .errors import OptionError, unknown_name

CHUNKING = (None, "position", "remaining")
ACCESS = ("gradient", "scores", "labels")


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Callable[..., Any]
    threat: str | None = None
    norms: tuple[str, ...] = ()
    summary: str = ""
    task: str = "classification"
    chunking: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    access: str = "gradient"

    @property
    def threat_model(self) -> ThreatModel | None:
        """The :class:`~georobust.core.threat.ThreatModel` of an attack (``None`` for other entries)."""
        return None if self.threat is None else threat_model(self.threat)

    def options(self) -> dict[str, inspect.Parameter]:
        """The options of the entry by name: keyword-only parameters of a function, or the parameters of a
        class's ``__init__``."""
        return keyword_options(self.fn)

    def check_options(self, opts: dict[str, Any]) -> dict[str, Any]:
        """Check option names (an unknown one is an error with a suggestion); return them with string values
        converted to the type of each option's default."""
        return bind_options(self.name, self.options(), opts)


class Registry:
    """Named entries of one kind, loaded from ``package`` on first use."""

    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self.package = package
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, threat: str | None = None, norms: tuple[str, ...] = (), summary: str = "",
                 task: str = "classification", chunking: str | None = None, aliases: tuple[str, ...] = (),
                 access: str = "gradient", **extra):
        """Decorator registering ``fn`` under ``name`` (and ``aliases``)."""
        if access not in ACCESS:
            raise OptionError(f"access must be one of {ACCESS}, got {access!r}")
        if chunking not in CHUNKING:
            raise OptionError(f"chunking must be one of {CHUNKING}, got {chunking!r}")
        if "kind" in extra:
            raise OptionError("registry entries have no 'kind': give threat= (attacks) instead")
        if threat is not None:
            threat_model(threat)  # an unknown threat model is a programming error, caught at import

        def deco(fn):
            if name in self._entries and self._entries[name].fn is not fn:
                raise OptionError(f"{self.kind} {name!r} is registered twice")
            doc = summary or (inspect.getdoc(fn) or "").split("\n")[0]
            self._entries[name] = Entry(name, fn, threat, tuple(norms), doc, task, chunking, dict(extra), access)
            for a in aliases:
                self._aliases[a] = name
            return fn

        return deco

    def canonical(self, name: str) -> str:
        self._load()
        return self._aliases.get(name, name)

    def get(self, name: str) -> Entry:
        name = self.canonical(name)
        if name not in self._entries:
            raise unknown_name(self.kind, name, self._entries)
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return self.canonical(name) in self._entries

    def _load(self) -> None:
        if self.package is not None:
            importlib.import_module(self.package)  # importing the package registers its members


attacks = Registry("attack", "georobust.attacks")
objectives = Registry("objective", "georobust.defenses")
analyses = Registry("analysis", "georobust.geometry")
datasets = Registry("data set", "georobust.data")
architectures = Registry("architecture", "georobust.models.zoo")
