"""Attacks, one module per method; each registers itself in ``georobust.registry.attacks``.

Every submodule not starting with ``_`` is imported here, so a new attack is one new file.
"""

from ..core.autoload import import_submodules
from .deepfool import deepfool
from .fgsm import fgsm
from .hopskipjump import hopskipjump
from .lbfgs import lbfgs
from .pgd import pgd
from .qfool import qfool
from .sparsefool import sparsefool
from .universal import UniversalResult, universal_perturbation

MODULES = import_submodules(__name__, __path__)

__all__ = ["deepfool", "fgsm", "hopskipjump", "lbfgs", "pgd", "qfool", "sparsefool", "universal_perturbation",
           "UniversalResult"]
