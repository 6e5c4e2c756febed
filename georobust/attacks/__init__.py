"""Attacks, one module per method; each registers itself in ``georobust.registry.attacks``.

Every submodule not starting with ``_`` is imported here, so a new attack is one new file.
"""

from .._autoload import import_submodules
from .fgsm import fgsm

MODULES = import_submodules(__name__, __path__)

__all__ = ["fgsm"]
