"""A small one-class CNN person detector in the style of YOLO (Redmon et al., "You only look once", CVPR 2016;
Redmon & Farhadi, "YOLO9000", CVPR 2017), trained on OpenCV's sample surveillance video (issue 15, item 2) to
give the detector patch of Thys, Van Ranst & Goedemé (CVPRW 2019) a deep target, as in their paper.

**Input.** Frames ``(N, 3, H, W)`` in [0, 1] of any size; the network resizes them (bilinear with antialiasing,
differentiable) to ``INPUT_SIZE = 144 x 192`` (height x width), a quarter of vtest.avi's 576 x 768 in each
direction. Why that size: the HOG detector's people in this video are 64 x 128 to 217 x 434 pixels (median
71 x 142), so at a quarter most are about 18 x 35 pixels — still several cells of the stride-8 grid tall — while
one frame costs 67 M multiply-adds, so training on 600 frames fits about ten minutes of one (loaded) CPU thread;
256 x 192 would cost 1.8 times as much per frame (not tried).

**Network.** Six 3x3 convolutions with batch norm and leaky ReLU (16, 32, 32, 64, 64, 64 channels; strides 2, 2,
1, 2, 1, 1; the last dilated by 2: a receptive field of 71 pixels, a whole person with context), then a 1x1 head giving,
per cell of the ``18 x 24`` grid (8 pixels of the network's input, 32 of the video's), five numbers: the
objectness logit ``o``, the box centre offset in the cell ``(sigmoid(tx), sigmoid(ty))`` and the box size
``(anchor_w exp(tw), anchor_h exp(th))`` (one anchor, ``anchor`` (w, h) in pixels of the network input: the median HOG
box of the training frames).

**Output.** ``detect(x)`` (also ``forward``) returns, per image, ``(boxes (M, 4) x1 y1 x2 y2 in x's pixels,
scores (M,))``: the cells with ``sigmoid(o) >= score_threshold``, greedy non-maximum suppression at
``nms_iou``. The differentiable scores an attack lowers: :meth:`cell_scores` (sigmoid objectness per cell),
:meth:`max_score` (per image) and :meth:`box_scores` (the best cell overlapping each given box).

**Training** (:func:`train_cnn_detector`): a cell is responsible for a box when the box centre falls in it;
loss = the binary cross-entropy of the objectness summed over all cells (responsible cells positive, weighted
``pos_weight``) per responsible cell + 5 x the mean squared error of ``(sigmoid(tx), sigmoid(ty), tw, th)`` on
responsible cells, Adam, horizontal flips and brightness/contrast
jitter. The labels are the HOG detector's boxes (``georobust.data.video.hog_boxes(engine="opencv")``): a
pseudo ground truth, so AP measures agreement with HOG, not with people.

**AP** (:func:`average_precision`): detections of all images ranked by score; a detection is a true positive
when its best-overlapping not yet matched ground-truth box of the same image has IoU ``>= iou`` (PASCAL VOC);
AP = the area under the precision-recall curve with all-point interpolation (precision made monotone from the
right, summed over the recall steps; VOC 2010 onwards).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, OptionError, WeightsError
from ..storage import atomic_write_text, read_safetensors, write_safetensors

log = logging.getLogger(__name__)

INPUT_SIZE = (144, 192)         # (height, width) the network sees
STRIDE = 8                      # pixels of the network input per grid cell
WIDTHS = (16, 32, 32, 64, 64, 64)
STRIDES = (2, 2, 1, 2, 1, 1)
DILATIONS = (1, 1, 1, 1, 1, 2)
WEIGHTS_FILE = Path(__file__).with_name("cnn_people.safetensors")
AP_SCORE_THRESHOLD = 0.05       # detections kept when AP is measured (PASCAL VOC practice; detect's default is 0.5)
#: the training labels: OpenCV HOG ``detectMultiScale`` boxes of all 795 frames of vtest.avi (the cache of
#: ``georobust.data.video.hog_boxes(0, 795, engine="opencv", cache=HOG_BOXES_FILE)``)
HOG_BOXES_FILE = Path(__file__).with_name("vtest_hog_boxes.json")


def _check_frames(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"frames must be a torch.Tensor (N, 3, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"frames must be float in [0, 1], got dtype {x.dtype}; convert 8-bit frames with "
                         "x.float() / 255")
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"frames must have shape (N, 3, H, W) (RGB), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError("no frames: the batch is empty")
    if x.shape[2] < 16 or x.shape[3] < 16:
        raise InputError(f"frames of {x.shape[2]}x{x.shape[3]} pixels are too small; use frames at least 16x16")
    if not torch.isfinite(x.detach()).all():
        raise InputError("frames contain NaN or inf")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < 0 or hi > 1:
        raise InputError(f"frame values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]; divide 8-bit values by 255")


def _check_boxes(boxes, name: str = "boxes") -> torch.Tensor:
    if not isinstance(boxes, torch.Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
        got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise InputError(f"{name} must be a floating-point tensor (M, 4) of (x1, y1, x2, y2), got {got}")
    if not torch.isfinite(boxes).all() or bool((boxes[:, 2:] < boxes[:, :2]).any()):
        raise InputError(f"{name} must be finite with x2 >= x1 and y2 >= y1")
    return boxes


# ------------------------------------------------------------------------------------------------ box maths
def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(M, K)`` intersection over union of boxes ``a (M, 4)`` and ``b (K, 4)``, ``(x1, y1, x2, y2)``
    (continuous coordinates: a box's area is ``(x2 - x1)(y2 - y1)``; 0 where both areas are 0)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-300), torch.zeros_like(union))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first (a box is dropped when its IoU
    with a kept, better-scoring box exceeds ``iou``)."""
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    ious = box_iou(boxes[order], boxes[order])
    keep = []
    dropped = torch.zeros(order.numel(), dtype=torch.bool)
    for i in range(order.numel()):
        if dropped[i]:
            continue
        keep.append(i)
        dropped |= ious[i].cpu() > iou
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def average_precision(detections: list[tuple[torch.Tensor, torch.Tensor]], ground_truth: list[torch.Tensor], *,
                      iou: float = 0.5) -> float:
    """PASCAL VOC average precision (all-point interpolation) of per-image ``(boxes (M, 4), scores (M,))``
    against per-image ground-truth boxes ``(K, 4)``.

    All detections are ranked by score (ties: the earlier image, then the earlier detection); each, in turn, is
    a true positive when the unmatched ground-truth box of its image it overlaps most has IoU ``>= iou`` (that
    box is then matched), else a false positive. Precision ``p_k`` and recall ``r_k`` after the k-th detection;
    AP = ``sum_k (r_k - r_{k-1}) * max_{j >= k} p_j``. With no ground-truth box at all, AP is ``nan``.
    """
    if len(detections) != len(ground_truth):
        raise InputError(f"{len(detections)} images of detections but {len(ground_truth)} of ground truth")
    if not (isinstance(iou, (int, float)) and 0 < iou <= 1):
        raise OptionError(f"iou must be in (0, 1], got {iou!r}")
    n_gt = sum(int(g.shape[0]) for g in ground_truth)
    rows = []  # (score, image, detection)
    for i, (b, s) in enumerate(detections):
        _check_boxes(b, "detected boxes")
        if s.shape != (b.shape[0],):
            raise InputError(f"image {i}: {b.shape[0]} boxes but scores of shape {tuple(s.shape)}")
        rows += [(float(s[j]), i, j) for j in range(b.shape[0])]
    if n_gt == 0:
        return float("nan")
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    matched = [torch.zeros(int(g.shape[0]), dtype=torch.bool) for g in ground_truth]
    ious = [box_iou(detections[i][0].detach().cpu(), _check_boxes(g, "ground-truth boxes").detach().cpu())
            for i, g in enumerate(ground_truth)]
    tp = []
    for _, i, j in rows:
        if ground_truth[i].shape[0] == 0:
            tp.append(False)
            continue
        o = ious[i][j].clone()
        o[matched[i]] = -1.0
        k = int(torch.argmax(o))
        hit = bool(o[k] >= iou)
        if hit:
            matched[i][k] = True
        tp.append(hit)
    if not tp:
        return 0.0
    tps = torch.tensor(tp, dtype=torch.float64)
    ctp = torch.cumsum(tps, 0)
    precision = ctp / torch.arange(1, len(tp) + 1, dtype=torch.float64)
    recall = ctp / n_gt
    # make precision monotone from the right, then sum over the recall steps
    precision = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0])
    prev = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
    return float(((recall - prev) * precision).sum())


# ------------------------------------------------------------------------------------------------ the network
class CNNPeopleDetector(nn.Module):
    """The one-class grid detector (see the module docstring). ``anchor``: ``(w, h)`` of the one anchor box in
    pixels of the network input; ``score_threshold`` and ``nms_iou`` are used by :meth:`detect`."""

    bounds = (0.0, 1.0)
    input_size = INPUT_SIZE  #: frames are resized to this (H, W) first (an attack may work at this size)

    def __init__(self, *, anchor: tuple[float, float] = (20.0, 40.0), score_threshold: float = 0.5,
                 nms_iou: float = 0.4):
        super().__init__()
        if not (0 < score_threshold < 1):
            raise OptionError(f"score_threshold must be in (0, 1), got {score_threshold!r}")
        if not (0 < nms_iou <= 1):
            raise OptionError(f"nms_iou must be in (0, 1], got {nms_iou!r}")
        layers, c = [], 3
        for w, s, d in zip(WIDTHS, STRIDES, DILATIONS):
            layers += [nn.Conv2d(c, w, 3, s, padding=d, dilation=d, bias=False), nn.BatchNorm2d(w),
                       nn.LeakyReLU(0.1)]
            c = w
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 5, 1)
        self.register_buffer("anchor", torch.tensor([float(anchor[0]), float(anchor[1])]))
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        with torch.no_grad():  # start with a low objectness everywhere (most cells are background)
            self.head.bias.zero_()
            self.head.bias[0] = -4.0
        self.eval()

    check_input = staticmethod(_check_frames)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The head's output ``(N, 5, 18, 24)`` for frames already validated (resized here, differentiable)."""
        if tuple(x.shape[-2:]) != INPUT_SIZE:
            x = F.interpolate(x, size=INPUT_SIZE, mode="bilinear", align_corners=False, antialias=True)
        return self.head(self.backbone(x))

    def cell_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid objectness of every grid cell ``(N, 18, 24)``; differentiable."""
        self.check_input(x)
        return torch.sigmoid(self.raw(x)[:, 0])

    def max_score(self, x: torch.Tensor) -> torch.Tensor:
        """The best objectness per image ``(N,)``: the loss a hiding attack lowers."""
        return self.cell_scores(x).flatten(1).amax(1)

    def cell_boxes(self, x_shape: tuple[int, int], out: torch.Tensor) -> torch.Tensor:
        """``(N, 18, 24, 4)`` the box of every cell, ``(x1, y1, x2, y2)`` in pixels of an input of size
        ``x_shape`` (H, W), from the head's output ``out``."""
        gh, gw = out.shape[-2:]
        dev, dt = out.device, out.dtype
        gy, gx = torch.meshgrid(torch.arange(gh, device=dev, dtype=dt), torch.arange(gw, device=dev, dtype=dt),
                                indexing="ij")
        cx = (gx + torch.sigmoid(out[:, 1])) * STRIDE
        cy = (gy + torch.sigmoid(out[:, 2])) * STRIDE
        w = self.anchor[0].to(dt) * torch.exp(out[:, 3].clamp(max=4))
        h = self.anchor[1].to(dt) * torch.exp(out[:, 4].clamp(max=4))
        sy, sx = x_shape[0] / INPUT_SIZE[0], x_shape[1] / INPUT_SIZE[1]
        return torch.stack([(cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy], -1)

    def box_scores(self, x: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """``(M,)``: for box ``k`` (``(x1, y1, x2, y2)`` in ``x``'s pixels, on image ``image_index[k]``) the best
        objectness of the cells whose area overlaps it (every cell that could report that person); differentiable."""
        self.check_input(x)
        _check_boxes(boxes)
        s = torch.sigmoid(self.raw(x)[:, 0])
        gh, gw = s.shape[-2:]
        h, w = x.shape[-2:]
        cw, ch = w / gw, h / gh  # a cell in x's pixels
        dev = s.device
        xs = torch.arange(gw, device=dev, dtype=torch.float64) * cw
        ys = torch.arange(gh, device=dev, dtype=torch.float64) * ch
        b = boxes.detach().to(dev, torch.float64)
        inx = (xs[None] < b[:, 2:3]) & (xs[None] + cw > b[:, 0:1])      # (M, gw)
        iny = (ys[None] < b[:, 3:4]) & (ys[None] + ch > b[:, 1:2])      # (M, gh)
        m = iny[:, :, None] & inx[:, None, :]                            # (M, gh, gw)
        sk = s[image_index.to(dev)]
        return torch.where(m, sk, torch.zeros_like(sk)).flatten(1).amax(1)

    @torch.no_grad()
    def detect(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image ``(boxes (M, 4) x1 y1 x2 y2 in x's pixels, scores (M,))``: cells with objectness
        ``>= score_threshold`` after non-maximum suppression, on ``x``'s device."""
        self.check_input(x)
        out = self.raw(x)
        scores = torch.sigmoid(out[:, 0])
        boxes = self.cell_boxes(tuple(x.shape[-2:]), out)
        h, w = x.shape[-2:]
        res = []
        for i in range(x.shape[0]):
            keep = scores[i] >= self.score_threshold
            b, s = boxes[i][keep], scores[i][keep]
            b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], 1)
            k = nms(b, s, self.nms_iou)
            res.append((b[k].float(), s[k].float()))
        return res

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.detect(x)

    # ------------------------------------------------------------------------------------------------ weights
    def config(self) -> dict:
        return {"anchor": [float(v) for v in self.anchor.tolist()], "score_threshold": self.score_threshold,
                "nms_iou": self.nms_iou}

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """Weights to ``path`` (safetensors, the configuration in its metadata) and ``meta`` (with the
        configuration) to the ``.json`` beside it."""
        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        write_safetensors(path, state, {"config": json.dumps(self.config())}, what="the detector")
        info = dict(meta or {})
        info["config"] = self.config()
        atomic_write_text(path.with_suffix(".json"), json.dumps(info, indent=1) + "\n")
        return path


def load_cnn_people(path: str | Path | None = None, *, device=None) -> CNNPeopleDetector:
    """The shipped detector (``cnn_people.safetensors`` beside this module) or the one saved at ``path``, in
    eval mode; :class:`~georobust.errors.WeightsError` when the file is missing or does not fit."""
    path = Path(path) if path is not None else WEIGHTS_FILE
    if not path.is_file():
        raise WeightsError(f"no detector weights at {path}: train them with repro/surveillance_patch.py "
                           "--train-cnn, or reinstall georobust (the wheel ships cnn_people.safetensors)")
    state, meta = read_safetensors(path, what="detector weights")
    try:
        cfg = json.loads(meta.get("config", "{}"))
        det = CNNPeopleDetector(**{k: (tuple(v) if k == "anchor" else v) for k, v in cfg.items()})
        det.load_state_dict(state)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise WeightsError(f"cannot load the CNN people detector from {path}: {e}") from e
    det.eval()
    return det.to(device) if device is not None else det


# ------------------------------------------------------------------------------------------------ training
def _targets(boxes: list[torch.Tensor], scale: tuple[float, float], anchor: torch.Tensor, grid: tuple[int, int]):
    """Per image: objectness ``(gh, gw)`` and regression targets ``(4, gh, gw)`` from boxes in frame pixels
    (``scale`` = frame pixels per network-input pixel, (sx, sy))."""
    gh, gw = grid
    n = len(boxes)
    obj = torch.zeros(n, gh, gw)
    reg = torch.zeros(n, 4, gh, gw)
    for i, b in enumerate(boxes):
        for x1, y1, x2, y2 in b.tolist():
            cx, cy = (x1 + x2) / 2 / scale[0] / STRIDE, (y1 + y2) / 2 / scale[1] / STRIDE
            gx, gy = min(int(cx), gw - 1), min(int(cy), gh - 1)
            w, h = (x2 - x1) / scale[0], (y2 - y1) / scale[1]
            obj[i, gy, gx] = 1.0
            reg[i, :, gy, gx] = torch.tensor([cx - gx, cy - gy, math.log(w / float(anchor[0])),
                                              math.log(h / float(anchor[1]))])
    return obj, reg


def train_cnn_detector(frames: torch.Tensor, boxes: list[torch.Tensor], *, frame_size: tuple[int, int],
                       epochs: int = 30, batch_size: int = 16, lr: float = 3e-3, seed: int = 0,
                       pos_weight: float = 4.0, time_limit: float | None = None,
                       stop_epoch: int | None = None) -> tuple[CNNPeopleDetector, list]:
    """Train a :class:`CNNPeopleDetector` on ``frames`` ``(N, 3, 144, 192)`` (already at the network's input
    size, float in [0, 1] or uint8) with ``boxes`` (per frame, ``(M, 4)`` in pixels of the original frames of
    size ``frame_size`` (H, W)). Returns the model (eval mode) and the per-epoch history (mean loss, seconds).

    The anchor is the median box size of the training boxes. Each step: a random batch, each frame flipped
    left-right with probability 1/2 (its boxes too) and its contrast and brightness jittered by +-20% / +-0.1.
    Adam with a cosine learning-rate decay over ``epochs``; ``time_limit`` (seconds) stops after the epoch that
    passes it, ``stop_epoch`` after that epoch (the schedule unchanged: how a time-limited run is reproduced)."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or tuple(frames.shape[1:]) != (3, *INPUT_SIZE):
        got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise InputError(f"training frames must be (N, 3, {INPUT_SIZE[0]}, {INPUT_SIZE[1]}) (resize them first), "
                         f"got {got}")
    if len(boxes) != frames.shape[0]:
        raise InputError(f"{frames.shape[0]} frames but {len(boxes)} box lists")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise OptionError(f"{name} must be a positive integer, got {v!r}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    fh, fw = frame_size
    sx, sy = fw / INPUT_SIZE[1], fh / INPUT_SIZE[0]
    allb = torch.cat([b.reshape(-1, 4) for b in boxes])
    if allb.shape[0] == 0:
        raise InputError("no boxes at all in the training frames: nothing to learn")
    anchor = (float(((allb[:, 2] - allb[:, 0]) / sx).median()), float(((allb[:, 3] - allb[:, 1]) / sy).median()))
    dev = frames.device
    model = CNNPeopleDetector(anchor=anchor).to(dev)
    grid = (INPUT_SIZE[0] // STRIDE, INPUT_SIZE[1] // STRIDE)
    flipped = [torch.stack([fw - b[:, 2], b[:, 1], fw - b[:, 0], b[:, 3]], 1) if len(b) else b for b in boxes]
    obj, reg = (t.to(dev) for t in _targets(boxes, (sx, sy), model.anchor.cpu(), grid))
    obj_f, reg_f = (t.to(dev) for t in _targets(flipped, (sx, sy), model.anchor.cpu(), grid))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = frames.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    pw = torch.tensor(pos_weight, device=dev)
    history = []
    t0 = time.perf_counter()
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g).to(dev)
        total = 0.0
        for k in range(steps_per_epoch):
            idx = perm[k * batch_size:(k + 1) * batch_size]
            xb = frames[idx].float()
            if frames.dtype == torch.uint8:
                xb = xb / 255.0
            flip = (torch.rand(len(idx), generator=g) < 0.5).to(dev)
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            c = 1 + 0.4 * (torch.rand(len(idx), 1, 1, 1, generator=g).to(dev) - 0.5)
            br = 0.2 * (torch.rand(len(idx), 1, 1, 1, generator=g).to(dev) - 0.5)
            xb = ((xb - 0.5) * c + 0.5 + br).clamp(0, 1)
            to = torch.where(flip[:, None, None], obj_f[idx], obj[idx])
            tr = torch.where(flip[:, None, None, None], reg_f[idx], reg[idx])
            out = model.head(model.backbone(xb))
            pos = to > 0
            npos = max(float(pos.sum()), 1.0)
            l_obj = F.binary_cross_entropy_with_logits(out[:, 0], to, pos_weight=pw, reduction="sum") / npos
            if bool(pos.any()):
                pred = torch.stack([torch.sigmoid(out[:, 1]), torch.sigmoid(out[:, 2]), out[:, 3], out[:, 4]], 1)
                l_box = ((pred - tr) ** 2).sum(1)[pos].mean()
            else:
                l_box = out.sum() * 0
            loss = l_obj + 5.0 * l_box
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append({"epoch": ep + 1, "loss": total / n, "seconds": time.perf_counter() - t0})
        log.info("cnn detector epoch %d: loss %.4f (%.0f s)", ep + 1, total / n, time.perf_counter() - t0)
        if (time_limit is not None and time.perf_counter() - t0 > time_limit) or ep + 1 == stop_epoch:
            break
    model.eval()
    return model, history


def downscale(frames: torch.Tensor) -> torch.Tensor:
    """Frames ``(N, 3, H, W)`` in [0, 1] -> the network's input size ``(N, 3, 144, 192)``, as :meth:`raw` does."""
    _check_frames(frames)
    return F.interpolate(frames, size=INPUT_SIZE, mode="bilinear", align_corners=False, antialias=True)


__all__ = ["CNNPeopleDetector", "load_cnn_people", "train_cnn_detector", "average_precision", "box_iou", "nms",
           "downscale", "AP_SCORE_THRESHOLD", "INPUT_SIZE", "STRIDE", "WEIGHTS_FILE", "HOG_BOXES_FILE"]
