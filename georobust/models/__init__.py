"""Models: the ``Classifier`` wrapper, the zoo of architectures, safe loading and shipped weights."""

from .classifier import Classifier, as_classifier
from .io import check_weights_path, load_model, load_weights, manifest, pretrained, save_weights
from .zoo import build

__all__ = ["Classifier", "as_classifier", "build", "load_model", "load_weights",
           "save_weights", "check_weights_path", "pretrained", "manifest"]
