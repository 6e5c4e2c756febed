"""How a geometry result presents itself, so the CLI can show any registered analysis without knowing its name.

Every result class of :mod:`georobust.geometry` derives from :class:`Report` and has

* ``summary() -> dict``: scalars (numbers, strings, ``None``) — saved with the result and printed;
* ``table() -> list[list[str]]``: the rows of its table, the header row first (default: the summary as
  ``metric | value``);
* ``plot_data(label) -> Any``: the first argument of the figure function named by the analysis's registry
  entry (``extra["plot"]``, a function of :mod:`georobust.plots` called as ``fn(plot_data(label), path)``);
  by default ``{label: self}``, the form the plots that compare several models take.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def fmt(v: Any) -> str:
    """A table cell: floats to 4 significant digits, NaN as ``—``."""
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.4g}"
    return "—" if v is None else str(v)


def median(t: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """The median of ``t[mask]`` as a float (NaN when nothing is selected)."""
    if mask is not None:
        t = t[mask]
    return float(t.median()) if t.numel() else float("nan")


class Report:
    """The presentation interface of a geometry result (see the module docstring); subclasses define
    ``summary()``."""

    def table(self) -> list[list[str]]:
        return [["metric", "value"]] + [[k, fmt(v)] for k, v in self.summary().items()]

    def plot_data(self, label: str) -> Any:
        return {label: self}
