"""Attacks, one module per method; each registers itself in ``georobust.registry.attacks`` (``@attack``).

Every submodule not starting with ``_`` is imported here, so a new attack is one new file.
"""

from ..core.autoload import import_submodules
from .apgd import apgd, apgd_ce, apgd_dlr, apgd_t
from .deepfool import deepfool
from .fab import fab, fab_t
from .fgsm import fgsm
from .hopskipjump import hopskipjump
from .lbfgs import lbfgs
from .pgd import pgd
from .qfool import qfool
from .sparsefool import sparsefool
from .spsa import spsa
from .square import square
from .universal import UniversalResult, universal_perturbation

MODULES = import_submodules(__name__, __path__)

__all__ = ["apgd", "apgd_ce", "apgd_dlr", "apgd_t", "deepfool", "fab", "fab_t", "fgsm", "hopskipjump", "lbfgs", "pgd",
           "qfool", "sparsefool", "spsa", "square", "universal_perturbation", "UniversalResult"]
