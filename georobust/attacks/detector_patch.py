"""A patch that hides people from a person detector (Thys, Van Ranst & Goedemé, "Fooling automated surveillance
cameras: adversarial patches to attack person detection", CVPR workshops 2019).

One patch is optimised for all people of the training frames. Every step (expectation over transformation)::

    F ← batch_size training frames, drawn at random; B ← their people's boxes
    A ← one placement per box (core.placement.box_placements): the patch's side relative_size · √(w² + h²) of
        the box, centred on the box moved down by offset · h (the torso), jittered by up to ± jitter · side,
        rotated by up to ± rotation degrees, brightness ± brightness, contrast 1 ± contrast, per-pixel noise
    X ← the frames with the patch pasted on every person (core.placement.apply_patch, clamped into [0, 1])
    loss ← mean over people of  max score(X, person)  +  nps_weight · NPS(patch)  +  tv_weight · TV(patch)
    patch ← clamp(Adam step, [0, 1])

**The detector protocol.** A detector is any module with ``detect(x) -> [(boxes (M, 4), scores (M,))]`` (for
evaluation) and a differentiable score, read per person by :func:`person_scores`:

- a ``box_scores(x, boxes, image_index) -> (M,)`` method when it has one (the CNN of
  :mod:`georobust.detection.cnn`: the best objectness of the grid cells overlapping the person — the paper's
  "objectness" loss);
- otherwise ``max_score(x) -> (N,)`` on a crop of the frame around the person (the box grown by ``margin`` of
  its size on each side, at least the detector's window): for the HOG people detector, the best SVM score of
  every window of the pyramid that fits in the crop, i.e. the windows that overlap the person — the HOG
  analogue of the paper's objectness.

**NPS** (non-printability score, Sharif et al., CCS 2016, as Thys et al.'s code computes it): the mean over
the patch's pixels of the distance to the nearest colour of a printable palette (:data:`DEFAULT_PALETTE`, a
stand-in: 27 colours of a 3-level grid inside the gamut, not a measured printer profile; pass your printer's).
**TV** (total variation, as their code): the mean absolute difference between neighbouring pixels, across and
down, summed. The paper's weights are the defaults: NPS 0.01, TV 2.5.

Evaluation (:func:`evaluate_detector_patch`) never reads the loss: the patch is pasted on each person of
held-out frames at a fixed placement (box centre moved by ``offset``, no jitter, rotation or lighting), the
detector is re-run, and a person counts as *found* when a detection overlaps their box with IoU ``>= iou``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..core.placement import Placements, apply_patch, box_placements
from ..detection.cnn import box_iou
from ..errors import InputError, OptionError

log = logging.getLogger(__name__)

#: 27 printable colours: every combination of 0.15, 0.5 and 0.85 per RGB channel (a gamut a colour printer
#: reaches on paper; a stand-in for a measured palette)
DEFAULT_PALETTE = torch.tensor([[r, g, b] for r in (0.15, 0.5, 0.85) for g in (0.15, 0.5, 0.85)
                                for b in (0.15, 0.5, 0.85)])


def nps(patch: torch.Tensor, palette: torch.Tensor | None = None) -> torch.Tensor:
    """Non-printability score of ``patch`` ``(3, h, w)``: the mean over pixels of the Euclidean distance (RGB) to
    the nearest palette colour ``(K, 3)``; 0 for a patch made of palette colours only. Differentiable."""
    pal = (DEFAULT_PALETTE if palette is None else palette).to(patch.device, patch.dtype)
    if pal.ndim != 2 or pal.shape[1] != patch.shape[0]:
        raise InputError(f"the palette must be (K, {patch.shape[0]}) colours, got {tuple(pal.shape)}")
    d = ((patch[None] - pal[:, :, None, None]) ** 2).sum(1)            # (K, h, w)
    return torch.sqrt(d.amin(0) + 1e-12).mean()


def total_variation(patch: torch.Tensor) -> torch.Tensor:
    """``mean |p[:, i, j+1] - p[:, i, j]| + mean |p[:, i+1, j] - p[:, i, j]|`` over channels and positions;
    0 for a constant patch. Differentiable."""
    dx = (patch[:, :, 1:] - patch[:, :, :-1]).abs().mean()
    dy = (patch[:, 1:, :] - patch[:, :-1, :]).abs().mean()
    return dx + dy


def _window(detector) -> tuple[int, int]:
    """(height, width): the smallest crop the detector's ``max_score`` accepts."""
    from ..detection.hog import WINDOW, HOGPeopleDetector

    return WINDOW if isinstance(detector, HOGPeopleDetector) else (16, 16)


def crop_regions(boxes: torch.Tensor, image_size: tuple[int, int], *, margin: float = 0.15,
                 min_size: tuple[int, int] = (128, 64)) -> torch.Tensor:
    """``(M, 4)`` long ``(x1, y1, x2, y2)``: each box grown by ``margin`` of its width/height on every side, at
    least ``min_size`` (H, W), shifted (not shrunk) to lie inside the image."""
    h, w = image_size
    b = boxes.detach().to(torch.float64).cpu()
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    cw = torch.clamp(torch.maximum(bw * (1 + 2 * margin), torch.tensor(float(min_size[1]))), max=w)
    ch = torch.clamp(torch.maximum(bh * (1 + 2 * margin), torch.tensor(float(min_size[0]))), max=h)
    cw, ch = torch.ceil(cw), torch.ceil(ch)
    x1 = torch.round((b[:, 0] + b[:, 2]) / 2 - cw / 2).clamp(min=0)
    y1 = torch.round((b[:, 1] + b[:, 3]) / 2 - ch / 2).clamp(min=0)
    x1 = torch.minimum(x1, w - cw)
    y1 = torch.minimum(y1, h - ch)
    return torch.stack([x1, y1, x1 + cw, y1 + ch], 1).long()


def person_scores(detector, x: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor, *,
                  margin: float = 0.15) -> torch.Tensor:
    """``(M,)`` the detector's differentiable score of person ``k`` (box ``boxes[k]`` on frame
    ``image_index[k]``): ``detector.box_scores`` when it has it, else ``detector.max_score`` of a crop around the
    box (see the module docstring)."""
    if hasattr(detector, "box_scores"):
        return detector.box_scores(x, boxes, image_index)
    if not hasattr(detector, "max_score"):
        raise InputError(f"{type(detector).__name__} has neither box_scores nor max_score: a detector patch needs "
                         "a differentiable score")
    regions = crop_regions(boxes, tuple(x.shape[-2:]), margin=margin, min_size=_window(detector))
    out = []
    for k, (x1, y1, x2, y2) in enumerate(regions.tolist()):
        out.append(detector.max_score(x[int(image_index[k]):int(image_index[k]) + 1, :, y1:y2, x1:x2])[0])
    return torch.stack(out) if out else x.new_zeros(0)


def _flatten(boxes: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    b = [bb.reshape(-1, 4).to(device=device, dtype=torch.float32) for bb in boxes]
    idx = torch.cat([torch.full((len(bb),), i, dtype=torch.long, device=device) for i, bb in enumerate(b)]) \
        if b else torch.zeros(0, dtype=torch.long, device=device)
    return (torch.cat(b) if b else torch.zeros(0, 4, device=device)), idx


def _check_frames_boxes(frames, boxes) -> None:
    if not isinstance(frames, torch.Tensor) or not frames.is_floating_point() or frames.ndim != 4 \
            or frames.shape[1] != 3:
        got = f"{tuple(frames.shape)} {frames.dtype}" if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise InputError(f"frames must be float RGB images (N, 3, H, W) in [0, 1], got {got}; convert 8-bit "
                         "frames with x.float() / 255")
    if not torch.isfinite(frames).all() or float(frames.min()) < 0 or float(frames.max()) > 1:
        raise InputError("frame values must be finite and lie in [0, 1]")
    if not isinstance(boxes, (list, tuple)) or len(boxes) != frames.shape[0]:
        raise InputError(f"boxes must be a list with one (M, 4) tensor per frame ({frames.shape[0]}), got "
                         f"{len(boxes) if isinstance(boxes, (list, tuple)) else type(boxes).__name__}")
    for i, b in enumerate(boxes):
        if not isinstance(b, torch.Tensor) or not b.is_floating_point() or b.reshape(-1).numel() % 4:
            raise InputError(f"boxes[{i}] must be a float tensor (M, 4) of (x1, y1, x2, y2)")
        b = b.reshape(-1, 4)
        if len(b) and (not torch.isfinite(b).all() or bool((b[:, 2:] <= b[:, :2]).any())):
            raise InputError(f"boxes[{i}] must be finite with x2 > x1 and y2 > y1")


def _working_size(detector, frames: torch.Tensor, boxes: list[torch.Tensor]):
    """A detector that declares ``input_size`` (H, W) resizes every frame to it first: optimise at that size
    (frames resized once, bilinear with antialiasing, boxes scaled alike; the patch is then pasted at the size
    the network sees). Others work on the frames as they are. Returns (frames, boxes, scale factor)."""
    size = getattr(detector, "input_size", None)
    if size is None or tuple(frames.shape[-2:]) == tuple(size):
        return frames, boxes, 1.0
    h, w = frames.shape[-2:]
    sy, sx = size[0] / h, size[1] / w
    small = F.interpolate(frames, size=tuple(size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    scale = torch.tensor([sx, sy, sx, sy])
    return small, [b.reshape(-1, 4) * scale.to(b.device, b.dtype) for b in boxes], (sx + sy) / 2


def _patched_scores(detector, x: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor, patch: torch.Tensor,
                    pl: Placements, *, mask: str, margin: float, generator=None) -> torch.Tensor:
    """``(M,)``: each person's score with the patch pasted at ``pl``. With ``box_scores``: every patch pasted on
    the whole frames, then scored. Otherwise each person's crop (:func:`crop_regions`) is cut first and only that
    person's patch pasted on it (a crop is a fraction of the frame: pasting on whole frames would cost more than
    the detector), then ``max_score`` of the crop."""
    if hasattr(detector, "box_scores"):
        patched, _ = apply_patch(x, patch, pl, mask=mask, image_index=image_index, bounds=(0.0, 1.0),
                                 generator=generator)
        return detector.box_scores(patched, boxes, image_index)
    wh, ww = _window(detector)
    ps = min(patch.shape[-1], *x.shape[-2:])
    regions = crop_regions(boxes, tuple(x.shape[-2:]), margin=margin, min_size=(max(wh, ps), max(ww, ps)))
    out = []
    for k, (x1, y1, x2, y2) in enumerate(regions.tolist()):
        i = int(image_index[k])
        plk = pl[k:k + 1]
        plk.center = plk.center - torch.tensor([[x1, y1]], dtype=plk.center.dtype, device=plk.center.device)
        crop, _ = apply_patch(x[i:i + 1, :, y1:y2, x1:x2], patch, plk, mask=mask, bounds=(0.0, 1.0),
                              generator=generator)
        out.append(detector.max_score(crop)[0])
    return torch.stack(out)


@dataclass
class DetectorPatchResult:
    """A detector patch: the patch ``(3, s, s)`` in [0, 1], the loss terms per step, the options and the time."""

    patch: torch.Tensor
    loss_history: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"loss_history": self.loss_history, "params": self.params, "seconds": self.seconds}


def detector_patch(detector, frames: torch.Tensor, boxes: list[torch.Tensor], *, patch_size: int = 64,
                   steps: int = 100, batch_size: int = 4, lr: float = 0.03, relative_size: float = 0.2,
                   offset: float = 0.0, jitter: float = 0.1, rotation: float = 20.0, brightness: float = 0.1,
                   contrast: float = 0.1, noise: float = 0.1, nps_weight: float = 0.01, tv_weight: float = 2.5,
                   palette: torch.Tensor | None = None, mask: str = "square", init: str = "grey",
                   margin: float = 0.15, seed: int = 0) -> DetectorPatchResult:
    """Optimise a patch that hides the people ``boxes`` (per frame ``(M_i, 4)``, pixels) of ``frames``
    ``(N, 3, H, W)`` from ``detector`` (Thys et al. 2019; the module docstring gives the loop and the
    detector protocol). Frames without people are never drawn. ``init``: ``"grey"`` (0.5) or ``"random"``
    (uniform). Each step draws its frames and placements from a generator seeded by ``(seed, step)``."""
    _check_frames_boxes(frames, boxes)
    for name, v in (("patch_size", patch_size), ("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise OptionError(f"{name} must be a positive integer, got {v!r}")
    if patch_size > min(frames.shape[-2:]):
        raise InputError(f"the patch ({patch_size} pixels) is larger than the frames {tuple(frames.shape[-2:])}")
    for name, v in (("lr", lr), ("nps_weight", nps_weight), ("tv_weight", tv_weight)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise OptionError(f"{name} must be a finite number >= 0, got {v!r}")
    if init not in ("grey", "random"):
        raise OptionError(f"init must be 'grey' or 'random', got {init!r}")
    if getattr(detector, "training", False):
        raise InputError("the detector is in training mode: call detector.eval() first (batch norm would use the "
                         "patched batch's statistics)")
    dev = frames.device
    with_people = [i for i, b in enumerate(boxes) if b.reshape(-1, 4).shape[0] > 0]
    if not with_people:
        raise InputError("no frame has a person box: nothing to hide")
    frames, boxes, ratio = _working_size(detector, frames, boxes)
    g0 = torch.Generator(device="cpu").manual_seed(seed)
    patch = torch.full((3, patch_size, patch_size), 0.5) if init == "grey" else torch.rand(
        3, patch_size, patch_size, generator=g0)
    patch = patch.to(dev).requires_grad_(True)
    opt = torch.optim.Adam([patch], lr=lr)
    history = []
    t0 = time.perf_counter()
    for step in range(steps):
        g = torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
        pick = torch.randperm(len(with_people), generator=g)[:batch_size]
        fidx = [with_people[int(i)] for i in pick]
        bb, idx = _flatten([boxes[i] for i in fidx], dev)
        pl = box_placements(bb, relative_size=relative_size, offset=offset, jitter=jitter, rotation=rotation,
                            brightness=brightness, contrast=contrast, noise=noise, generator=g)
        det = _patched_scores(detector, frames[fidx], bb, idx, patch, pl, mask=mask, margin=margin,
                              generator=g).mean()
        p_nps = nps(patch, palette)
        p_tv = total_variation(patch)
        loss = det + nps_weight * p_nps + tv_weight * p_tv
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            patch.clamp_(0.0, 1.0)
        history.append({"loss": float(loss.detach()), "detection": float(det.detach()),
                        "nps": float(p_nps.detach()), "tv": float(p_tv.detach())})
        if step % 10 == 0 or step == steps - 1:
            log.info("detector patch step %d/%d: loss %.4f (detection %.4f, nps %.4f, tv %.4f)", step + 1, steps,
                     *history[-1].values())
    params = {"patch_size": patch_size, "steps": steps, "batch_size": batch_size, "lr": lr,
              "relative_size": relative_size, "offset": offset, "jitter": jitter, "rotation": rotation,
              "brightness": brightness, "contrast": contrast, "noise": noise, "nps_weight": nps_weight,
              "tv_weight": tv_weight, "mask": mask, "init": init, "margin": margin, "seed": seed,
              "n_frames": len(with_people), "detector": type(detector).__name__, "working_scale": ratio}
    return DetectorPatchResult(patch.detach(), history, params, time.perf_counter() - t0)


def fixed_placements(boxes: torch.Tensor, *, relative_size: float = 0.2, offset: float = 0.0) -> Placements:
    """The evaluation placement: the patch centred on each box moved down by ``offset`` of its height, upright,
    no lighting change or noise."""
    return box_placements(boxes, relative_size=relative_size, offset=offset)


def patch_frames(frames: torch.Tensor, boxes: list[torch.Tensor], patch: torch.Tensor, *,
                 relative_size: float = 0.2, offset: float = 0.0, mask: str = "square") -> torch.Tensor:
    """``frames`` with ``patch`` pasted on every box at its :func:`fixed_placements` (clamped into [0, 1]), in
    box order. Each copy is pasted on the sub-image its square can reach (its circumscribed box plus 2 pixels),
    (at least the patch's pixels a side), which gives the pixels :func:`~georobust.core.placement.apply_patch`
    gives on the whole frame at a fraction of the cost."""
    _check_frames_boxes(frames, boxes)
    bb, idx = _flatten(boxes, frames.device)
    out = frames.clone()
    if bb.shape[0] == 0:
        return out
    pl = fixed_placements(bb, relative_size=relative_size, offset=offset)
    h, w = frames.shape[-2:]
    p = patch.to(frames.device, frames.dtype)
    for k in range(len(pl)):
        r = float(pl.side[k]) * math.sqrt(2) / 2 + 2
        cx, cy = (float(v) for v in pl.center[k])
        x1, y1 = max(int(math.floor(cx - r)), 0), max(int(math.floor(cy - r)), 0)
        x2, y2 = min(int(math.ceil(cx + r)), w), min(int(math.ceil(cy + r)), h)
        if x2 <= x1 or y2 <= y1:
            continue
        # apply_patch refuses an image smaller than the patch's pixels: widen the sub-image (inside the frame)
        need = min(p.shape[-1], h, w)
        if x2 - x1 < need:
            x1 = max(min(x1, w - need), 0)
            x2 = x1 + need
        if y2 - y1 < need:
            y1 = max(min(y1, h - need), 0)
            y2 = y1 + need
        plk = pl[k:k + 1]
        plk.center = plk.center - torch.tensor([[x1, y1]], dtype=plk.center.dtype, device=plk.center.device)
        i = int(idx[k])
        sub, _ = apply_patch(out[i:i + 1, :, y1:y2, x1:x2], p, plk, mask=mask, bounds=(0.0, 1.0))
        out[i, :, y1:y2, x1:x2] = sub[0]
    return out


def recall(detections: list[tuple[torch.Tensor, torch.Tensor]], people: list[torch.Tensor], *,
           iou: float = 0.5) -> tuple[int, int]:
    """``(found, total)``: the people (boxes per frame) that some detection of their frame overlaps with IoU
    ``>= iou`` (a detection may find several people: recall only asks whether each person is still seen)."""
    if len(detections) != len(people):
        raise InputError(f"{len(detections)} frames of detections but {len(people)} of people")
    found = total = 0
    for (b, _), p in zip(detections, people):
        p = p.reshape(-1, 4)
        total += p.shape[0]
        if p.shape[0] and b.shape[0]:
            found += int((box_iou(p.detach().cpu(), b.detach().cpu()).amax(1) >= iou).sum())
    return found, total


def evaluate_detector_patch(detector, frames: torch.Tensor, boxes: list[torch.Tensor], patch: torch.Tensor | None,
                            *, relative_size: float = 0.2, offset: float = 0.0, mask: str = "square",
                            iou: float = 0.5, batch: int = 4) -> dict:
    """Recall of the people ``boxes`` on ``frames`` when each carries ``patch`` (``None``: no patch), the
    detector re-run on the patched frames (``detector.detect``). Returns ``found``, ``total``, ``recall``, the
    per-frame detections and the patched frames' mean number of detections."""
    _check_frames_boxes(frames, boxes)
    dets = []
    for i in range(0, frames.shape[0], batch):
        xb = frames[i:i + batch]
        if patch is not None:
            xb = patch_frames(xb, list(boxes[i:i + batch]), patch, relative_size=relative_size, offset=offset,
                              mask=mask)
        with torch.no_grad():
            dets += [(b.cpu(), s.cpu()) for b, s in detector.detect(xb)]
    found, total = recall(dets, boxes, iou=iou)
    return {"found": found, "total": total, "recall": found / total if total else float("nan"),
            "detections": dets, "mean_detections": sum(len(b) for b, _ in dets) / max(len(dets), 1)}


def random_patch(patch_size: int, seed: int = 0, device=None) -> torch.Tensor:
    """The baseline: a uniform-noise patch ``(3, s, s)`` in [0, 1] (seeded)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    p = torch.rand(3, patch_size, patch_size, generator=g)
    return p if device is None else p.to(device)


__all__ = ["detector_patch", "evaluate_detector_patch", "patch_frames", "person_scores", "crop_regions", "recall",
           "nps", "total_variation", "random_patch", "fixed_placements", "DetectorPatchResult", "DEFAULT_PALETTE"]
