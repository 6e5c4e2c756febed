"""Exception types raised by georobust, in one place.

Every error says what was wrong and how to fix it. All derive from :class:`GeorobustError`, so a caller
(and the CLI) can catch them together; each also derives from the closest built-in type.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GeorobustError(Exception):
    """Base class of every georobust error."""


class InputError(GeorobustError, ValueError):
    """Inputs or labels are malformed: wrong shape, dtype, bounds, NaN/inf, labels out of range."""


class ModelError(GeorobustError, ValueError):
    """The model cannot be used as given: training mode, wrong output shape, wrong device."""


class OptionError(GeorobustError, ValueError):
    """An option has an invalid value, or an unknown name was asked for (attack, data set, model)."""


class DataError(GeorobustError, OSError):
    """A data set is missing or its files are corrupt."""


class WeightsError(GeorobustError, OSError):
    """Model weights are missing, unsafe, or do not match their recorded checksum."""


class CheckpointError(GeorobustError, OSError):
    """A checkpoint cannot be resumed (missing, corrupt, or made with other settings)."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> OptionError:
    """An :class:`OptionError` for an unknown ``name`` of ``kind``, listing the close matches."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return OptionError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(known)}.")


class OutputError(GeorobustError, OSError):
    """An output location cannot be written (checked before any work), or would overwrite earlier work."""


class ResultFileError(GeorobustError, OSError):
    """A saved result (``.json`` + ``.safetensors`` pair) is missing, truncated, corrupt, or its two files do
    not belong together."""
