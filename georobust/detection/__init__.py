"""Detectors: models that return, per input image, a set of boxes with scores (the ``detection`` task of
:mod:`georobust.core.tasks`). Layer 2 ("names and models"), beside :mod:`georobust.models`: nothing here
imports attacks, geometry or defences.

- :mod:`.hog` — a differentiable torch port of OpenCV's HOG + linear-SVM people detector (Dalal & Triggs,
  CVPR 2005; ``cv2.HOGDescriptor_getDefaultPeopleDetector``), agreeing with OpenCV's ``compute``,
  ``detect`` and ``detectMultiScale``.
- :mod:`.cnn` — a small one-class YOLO-style grid detector trained on vtest.avi with the HOG boxes as labels
  (``load_cnn_people()`` loads the shipped ``cnn_people.safetensors``), and PASCAL VOC ``average_precision``.
"""

from .cnn import CNNPeopleDetector, average_precision, box_iou, load_cnn_people, train_cnn_detector
from .hog import HOGPeopleDetector, group_rectangles, load_people_svm, pyramid_scales

__all__ = ["HOGPeopleDetector", "group_rectangles", "load_people_svm", "pyramid_scales", "CNNPeopleDetector",
           "average_precision", "box_iou", "load_cnn_people", "train_cnn_detector"]
