"""OpenCV's sample surveillance video ``vtest.avi`` (795 colour frames of 768x576, a pedestrian area seen from
above), as Debian's ``opencv-doc`` package ships it in ``/usr/share/doc/opencv-doc/examples/data/``.

Decoding needs OpenCV (``pip install 'opencv-python-headless<5'``), imported only when frames are read.
The file is searched in ``$GEOROBUST_DATA`` (the folder itself or its ``opencv/`` sub-folder), then where
Debian puts it. Frames come back as float32 RGB tensors ``(N, 3, 576, 768)`` in [0, 1] (the 8-bit values
divided by 255); ``frames_bgr`` gives OpenCV's own ``uint8`` BGR arrays, for running OpenCV beside the port.

As a data set (``georobust.data.load("vtest", split)``) the ``train`` split is frames 0-599 and ``test``
frames 600-794; the video has no annotations, so the labels are the frame indices. A frame takes 5.3 MB as
float32: select frames with ``start``/``stop``/``step`` (``frames``) or ``n``/``step`` (``load``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, InputError

FILENAME = "vtest.avi"
SYSTEM_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
NUM_FRAMES = 795
HEIGHT, WIDTH = 576, 768
SHAPE = (3, HEIGHT, WIDTH)
SPLITS = {"train": (0, 600), "test": (600, NUM_FRAMES)}
HOW_TO = ("install Debian's opencv-doc package (`apt-get install -y opencv-doc` as root, or `make video`), "
          "or put vtest.avi in $GEOROBUST_DATA")
CV2_HOW_TO = "decoding the video needs OpenCV: pip install 'opencv-python-headless<5'"


def search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("GEOROBUST_DATA"):
        root = Path(os.environ["GEOROBUST_DATA"])
        dirs += [root, root / "opencv"]
    dirs.append(SYSTEM_DIR)
    return dirs


def find() -> Path | None:
    """The path of ``vtest.avi``, or None when absent."""
    for d in search_dirs():
        if (d / FILENAME).is_file():
            return d / FILENAME
    return None


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise DataError(CV2_HOW_TO) from e
    return cv2


def available() -> bool:
    """Whether the video file is here and OpenCV can be imported to decode it."""
    if find() is None:
        return False
    try:
        _cv2()
    except DataError:
        return False
    return True


def path() -> Path:
    """The path of ``vtest.avi``; :class:`~georobust.errors.DataError` naming ``opencv-doc`` when absent."""
    p = find()
    if p is None:
        where = ", ".join(str(d / FILENAME) for d in search_dirs())
        raise DataError(f"the surveillance video {FILENAME} is not here (looked for {where}): {HOW_TO}")
    return p


def _check_range(start, stop, step) -> range:
    for name, v in (("start", start), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{name} must be an integer, got {v!r}")
    if stop is None:
        stop = NUM_FRAMES
    if isinstance(stop, bool) or not isinstance(stop, int):
        raise InputError(f"stop must be an integer or None, got {stop!r}")
    if step < 1:
        raise InputError(f"step must be >= 1, got {step}")
    if not 0 <= start < stop <= NUM_FRAMES:
        raise InputError(f"frames must satisfy 0 <= start < stop <= {NUM_FRAMES}, got start={start}, stop={stop}")
    return range(start, stop, step)


def frames_bgr(start: int = 0, stop: int | None = None, step: int = 1) -> np.ndarray:
    """Frames ``start, start + step, ... < stop`` as OpenCV decodes them: ``uint8`` BGR, ``(N, 576, 768, 3)``."""
    idx = _check_range(start, stop, step)
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path()))
    if not cap.isOpened():
        raise DataError(f"OpenCV cannot open {path()}: the file may be damaged; reinstall opencv-doc")
    try:
        # read from the first frame (seeking in this MPEG-4 v3 stream is not frame-exact); skipped frames are
        # only grabbed, not converted
        out, wanted = [], set(idx)
        last = idx[-1]
        for i in range(last + 1):
            ok = cap.grab()
            if ok and i in wanted:
                ok, f = cap.retrieve()
                out.append(f)
            if not ok:
                raise DataError(f"{path()} ended after {i} frames; expected {NUM_FRAMES}: reinstall opencv-doc")
    finally:
        cap.release()
    arr = np.stack(out)
    if arr.shape[1:] != (HEIGHT, WIDTH, 3):
        raise DataError(f"{path()} has frames of shape {arr.shape[1:]}, expected {(HEIGHT, WIDTH, 3)}")
    return arr


def to_tensor(bgr: np.ndarray) -> torch.Tensor:
    """``uint8`` BGR frames ``(N, H, W, 3)`` -> float32 RGB ``(N, 3, H, W)`` in [0, 1]."""
    if not isinstance(bgr, np.ndarray) or bgr.dtype != np.uint8 or bgr.ndim != 4 or bgr.shape[-1] != 3:
        raise InputError(f"expected uint8 BGR frames (N, H, W, 3), got "
                         f"{getattr(bgr, 'dtype', type(bgr).__name__)} {getattr(bgr, 'shape', '')}")
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def frames(start: int = 0, stop: int | None = None, step: int = 1) -> torch.Tensor:
    """Frames ``start, start + step, ... < stop`` as float32 RGB tensors ``(N, 3, 576, 768)`` in [0, 1]."""
    return to_tensor(frames_bgr(start, stop, step))


def load(split: str, n: int | None = None, step: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The data-set view: frames of ``split`` (train 0-599, test 600-794) every ``step``, at most ``n`` of
    them; labels are the frame indices (int64)."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r} of vtest: use one of {sorted(SPLITS)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InputError(f"n must be a positive integer or None, got {n!r}")
    lo, hi = SPLITS[split]
    idx = range(lo, hi, step)
    if n is not None:
        idx = idx[:n]
    x = frames(idx.start, idx[-1] + 1, step)
    return x, torch.as_tensor(list(idx), dtype=torch.int64)


def hog_boxes(start: int = 0, stop: int = 600, step: int = 1, *, engine: str = "port", batch: int = 4,
              cache: str | Path | None = None) -> list[torch.Tensor]:
    """Pseudo ground truth for training a detector on the video (issue 15, item 2): the HOG people detector's
    boxes ``(M_i, 4)`` (x1, y1, x2, y2, float32) on frames ``start, start + step, ... < stop`` (default: the
    train split, frames 0-599).

    ``engine="port"`` runs :class:`georobust.detection.HOGPeopleDetector` (torch; agrees with OpenCV, see
    ``benchmarks/hog.py --agreement``); ``engine="opencv"`` runs ``cv2.HOGDescriptor.detectMultiScale`` with
    its defaults (several times faster on a CPU). ``cache``: a JSON file; when it holds the boxes of the same
    frames and engine they are read from it, otherwise they are computed and written there (atomically).
    """
    import json

    from ..storage import atomic_write_text

    if engine not in ("port", "opencv"):
        raise InputError(f"engine must be 'port' or 'opencv', got {engine!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive integer, got {batch!r}")
    idx = _check_range(start, stop, step)
    key = {"engine": engine, "start": idx.start, "stop": idx.stop, "step": idx.step}
    if cache is not None and Path(cache).is_file():
        try:
            saved = json.loads(Path(cache).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read the box cache {cache}: {e}; delete it to recompute") from e
        if saved.get("key") == key:
            return [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in saved["boxes"]]
    bgr = frames_bgr(idx.start, idx.stop, idx.step)
    out: list[torch.Tensor] = []
    if engine == "opencv":
        cv2 = _cv2()
        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        for f in bgr:
            r, _ = hog.detectMultiScale(f)
            r = torch.as_tensor(np.asarray(r, dtype=np.float32).reshape(-1, 4))
            out.append(torch.cat([r[:, :2], r[:, :2] + r[:, 2:]], 1))
    else:
        from ..detection import HOGPeopleDetector

        det = HOGPeopleDetector()
        for i in range(0, len(bgr), batch):
            out += [b.cpu() for b, _ in det.detect(to_tensor(bgr[i:i + batch]))]
    if cache is not None:
        atomic_write_text(cache, json.dumps({"key": key, "boxes": [b.tolist() for b in out]}))
    return out


__all__ = ["frames", "frames_bgr", "to_tensor", "load", "hog_boxes", "available", "find", "path", "NUM_FRAMES",
           "SHAPE", "SPLITS"]
