"""georobust — a geometric toolkit for the adversarial robustness of PyTorch classifiers.

Everything is a function of ``(model, inputs, labels) -> result``: attack a model, measure the geometry
of its decision boundary, or train it to be robust.
"""

from . import data, errors, geometry, registry
from .attacks import (
    adversarial_patch,
    apgd_ce,
    apgd_dlr,
    apgd_t,
    deepfool,
    fab,
    fab_t,
    fgsm,
    hopskipjump,
    houdini,
    lbfgs,
    manifool,
    pgd,
    qfool,
    sparsefool,
    spatial_grid,
    spsa,
    square,
    stadv,
    universal_perturbation,
)
from .checks import predict
from .defenses import fit
from .evaluation import accuracy, cascade, evaluate
from .models import Classifier, build, load_model, pretrained, save_weights
from .results import AttackResult

__version__ = "0.1.0"

__all__ = ["Classifier", "AttackResult", "build", "load_model", "pretrained", "save_weights", "predict",
           "accuracy", "evaluate", "cascade", "fit", "apgd_ce", "apgd_dlr", "apgd_t", "fab", "fab_t", "spsa", "square",
           "deepfool", "fgsm", "hopskipjump", "lbfgs", "pgd", "qfool", "sparsefool",
           "universal_perturbation", "manifool", "stadv", "spatial_grid", "adversarial_patch", "houdini", "data", "errors", "geometry", "registry", "__version__"]
