"""Defences: one training loop (``fit``, :mod:`.train`), the training objectives it optimises
(:mod:`.objectives`, registered in ``georobust.registry.objectives``), and the defended-model interface
(:mod:`.defended`: detectors, input transformations, BPDA/EOT).

Every submodule not starting with ``_`` is imported here (registering its objectives).
"""

from ..core.autoload import import_submodules
from .defended import BPDA, EOT, Defended, Detector, Projection, Quantize, RandomNoise
from .detectors import LID, DetectorSubnetwork, Features, FeatureSqueezing, Mahalanobis, make_adversarial
from .generative import VAE, DenoisingAutoencoder, fit_autoencoder, fit_vae
from .objectives import (
                         Adversarial,
                         Cure,
                         FastAdversarial,
                         LocalLinearity,
                         Margin,
                         Objective,
                         Standard,
                         inner_max,
                         make_objective,
)
from .projections import (
                          GenerativeProjection,
                          JPEGQuantize,
                          MagNetReformer,
                          MedianSmoothing,
                          ReconstructionDetector,
                          load_defended,
                          save_defended,
)
from .train import History, fit

MODULES = import_submodules(__name__, __path__)

__all__ = ["fit", "History", "Objective", "Standard", "Adversarial", "FastAdversarial", "Cure", "LocalLinearity",
           "Margin", "inner_max", "make_objective",
           "Detector", "Projection", "Quantize", "RandomNoise", "Defended", "BPDA", "EOT",
           "Features", "DetectorSubnetwork", "FeatureSqueezing", "Mahalanobis", "LID", "make_adversarial",
           "DenoisingAutoencoder", "VAE", "fit_autoencoder", "fit_vae", "MagNetReformer", "ReconstructionDetector",
           "GenerativeProjection", "JPEGQuantize", "MedianSmoothing", "save_defended", "load_defended"]
