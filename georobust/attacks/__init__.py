"""Attacks, one module per method; each registers itself in ``georobust.registry.attacks`` (``@attack``).

Every submodule not starting with ``_`` is imported here, so a new attack is one new file.
"""

from ..core.autoload import import_submodules
from .apgd import apgd, apgd_ce, apgd_dlr, apgd_t
from .deepfool import deepfool
from .fab import fab, fab_t
from .fgsm import fgsm
from .hopskipjump import hopskipjump
from .houdini import dense_pgd, houdini
from .lbfgs import lbfgs
from .manifool import invariance_score, manifool
from .patch import PatchResult, adversarial_patch, evaluate_patch
from .pgd import pgd
from .qfool import qfool
from .sparsefool import sparsefool
from .spatial_grid import spatial_grid, spatial_worst_of_k
from .spsa import spsa
from .square import square
from .stadv import stadv
from .universal import UniversalResult, universal_perturbation

MODULES = import_submodules(__name__, __path__)

__all__ = ["apgd", "apgd_ce", "apgd_dlr", "apgd_t", "deepfool", "fab", "fab_t", "fgsm", "hopskipjump", "lbfgs", "pgd",
           "qfool", "sparsefool", "spsa", "square", "universal_perturbation", "UniversalResult",
           "manifool", "invariance_score", "stadv", "spatial_grid", "spatial_worst_of_k",
           "adversarial_patch", "evaluate_patch", "PatchResult", "houdini", "dense_pgd"]
