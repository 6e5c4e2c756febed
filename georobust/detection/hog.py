"""A differentiable torch port of OpenCV's HOG + linear-SVM people detector.

Histograms of oriented gradients (Dalal & Triggs, "Histograms of Oriented Gradients for Human Detection",
CVPR 2005) with the linear SVM that OpenCV ships as ``cv2.HOGDescriptor_getDefaultPeopleDetector()``
(trained on INRIA Person; 64x128 window, 3,780 weights and a bias). The pipeline follows OpenCV 4's
``HOGDescriptor`` with its default parameters step by step, so that descriptors, window scores and
detections agree with ``HOGDescriptor.compute``, ``detect`` and ``detectMultiScale``:

1. **Gamma**: pixel values ``v`` in 0..255 become ``sqrt(v)`` (``gammaCorrection=true``).
2. **Gradient**: centred differences ``[-1, 0, 1]`` in x and y; outside the image the pixels are reflected
   without repeating the edge (OpenCV's ``BORDER_REFLECT_101``). Of a colour image, each pixel keeps the
   channel with the largest gradient magnitude (ties go to the first channel in OpenCV's B, G, R order).
3. **Orientation binning**: 9 unsigned bins over [0, pi); the angle ``a = theta * 9 / pi - 0.5`` splits the
   magnitude linearly between bin ``floor(a)`` and the next one (modulo 9).
4. **Blocks**: 16x16 pixels, stride 8, four 8x8 cells. Each pixel is weighted by a Gaussian of sigma 4 centred
   on the block (``exp(-((i - 8)^2 + (j - 8)^2) / 32)`` at pixel ``(i, j)`` of the block) and split bilinearly
   between the cells whose centres surround it (cell coordinate ``(j + 0.5) / 8 - 0.5``; a pixel beyond the
   outer cell centres goes to the outer cell only).
5. **L2-Hys**: ``h / (||h|| + 0.1 * 36)``, clipped at 0.2, then ``h / (||h|| + 1e-3)``.
6. **Window score**: the SVM weights dotted with the 7x15 blocks of a 64x128 window plus the bias, windows at
   stride 8 (the block stride), computed for all windows at once as a correlation over the block grid.
7. **Multi-scale**: image sizes ``round(W / s) x round(H / s)`` for ``s = 1.05^k`` while the window fits
   (at most 64 levels), bilinear resize as OpenCV's bit-exact ``INTER_LINEAR_EXACT`` on 8-bit images
   (half-pixel centres, no antialiasing, 8-bit fixed-point weights, the result rounded to 8 bits; checked
   equal to ``cv2.resize`` on the video's frames), a hit where the score is ``>= hit_threshold``;
   hits are mapped back as ``(round(x s), round(y s), round(64 s), round(128 s))``.
8. **Grouping**: OpenCV's ``groupRectangles`` (equivalence classes of rectangles within ``eps`` of each other
   in all four sides, class average rounded, classes of at most ``group_threshold`` members dropped, classes
   inside a bigger, more populous one dropped), boxes clipped to the image, the class score being its best
   window score.

Everything from pixels to window scores is differentiable (the rounding to 8 bits, when on, passes the
gradient straight through); the bin index and the chosen colour channel are piecewise constant, exactly as
in OpenCV. The SVM weights were extracted once from OpenCV (:func:`export_people_svm`) into
``hog_people_svm.safetensors``, so OpenCV is not needed at run time.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..errors import InputError, OptionError, WeightsError

log = logging.getLogger(__name__)

SVM_FILE = Path(__file__).with_name("hog_people_svm.safetensors")
WINDOW = (128, 64)          # (height, width) of the detection window
CELL = 8
BLOCK = 16
BLOCK_STRIDE = 8
NBINS = 9
SIGMA = 4.0                 # OpenCV's default winSigma: (16 + 16) / 8
L2HYS = 0.2
BLOCKS_PER_WINDOW = ((WINDOW[0] - BLOCK) // BLOCK_STRIDE + 1, (WINDOW[1] - BLOCK) // BLOCK_STRIDE + 1)  # (15, 7)
BLOCK_LEN = 4 * NBINS       # 36
DESCRIPTOR_LEN = BLOCKS_PER_WINDOW[0] * BLOCKS_PER_WINDOW[1] * BLOCK_LEN  # 3780
MAX_LEVELS = 64             # OpenCV's default nlevels


def export_people_svm(path: str | Path = SVM_FILE) -> Path:
    """Write OpenCV's default people detector (weights in OpenCV's descriptor order, and the bias) to a
    safetensors file. This is how ``hog_people_svm.safetensors`` was made; it needs ``opencv-python-headless<5``."""
    try:
        import cv2
    except ImportError as e:
        raise WeightsError("exporting the SVM needs OpenCV: pip install 'opencv-python-headless<5'") from e
    from safetensors.torch import save_file

    coef = np.asarray(cv2.HOGDescriptor_getDefaultPeopleDetector(), dtype=np.float32).ravel()
    save_file({"weight": torch.from_numpy(coef[:-1].copy()), "bias": torch.from_numpy(coef[-1:].copy())},
              str(path), metadata={"source": f"cv2.HOGDescriptor_getDefaultPeopleDetector() of OpenCV {cv2.__version__}"})
    return Path(path)


@lru_cache(maxsize=1)
def _svm_cpu() -> tuple[torch.Tensor, torch.Tensor]:
    if not SVM_FILE.is_file():
        raise WeightsError(f"the HOG people SVM {SVM_FILE} is missing: reinstall georobust (it ships in the package) "
                           "or regenerate it with georobust.detection.hog.export_people_svm()")
    t = load_file(str(SVM_FILE))
    w, b = t.get("weight"), t.get("bias")
    if w is None or b is None or w.shape != (DESCRIPTOR_LEN,) or b.shape != (1,):
        raise WeightsError(f"{SVM_FILE} must hold 'weight' ({DESCRIPTOR_LEN},) and 'bias' (1,); regenerate it with "
                           "georobust.detection.hog.export_people_svm()")
    return w.float(), b.float()


def load_people_svm() -> tuple[torch.Tensor, float]:
    """OpenCV's default people-detector SVM: the weights ``(3780,)`` in OpenCV's descriptor order and the bias."""
    w, b = _svm_cpu()
    return w.clone(), float(b.item())


def pyramid_scales(height: int, width: int, scale: float = 1.05, nlevels: int = MAX_LEVELS) -> list[float]:
    """The scales of OpenCV's ``detectMultiScale`` pyramid: ``1, scale, scale^2, ...`` (products in double
    precision, as OpenCV) while the resized image ``round(W / s) x round(H / s)`` still holds a 64x128 window."""
    scales, s = [], 1.0
    for _ in range(nlevels):
        if _cvround(width / s) < WINDOW[1] or _cvround(height / s) < WINDOW[0]:
            break
        scales.append(s)
        if scale <= 1:
            break
        s *= scale
    return scales or [1.0]


def _cvround(v: float) -> int:
    return int(np.rint(v))   # round half to even, as cvRound (lrint)


def _safe_sqrt(t: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 (not inf or NaN) at 0."""
    pos = t > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, t, torch.ones_like(t))), torch.zeros_like(t))


# OpenCV's cartToPolar computes angles with a degree-7 odd polynomial of atan on [0, 1] (max error about
# 0.01 degree), not the exact atan2; these are its published minimax coefficients, in degrees.
_ATAN_P = tuple(c * 180.0 / math.pi for c in (0.9997878412794807, -0.3258083974640975, 0.1555786518463281,
                                               -0.04432655554792128))
_DBL_EPS = 2.220446049250313e-16


def _poly_atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The angle of ``(x, y)`` in degrees in [0, 360), by OpenCV's polynomial approximation (so that the bins
    agree with OpenCV's to float rounding); smooth wherever ``(x, y) != 0``."""
    ax, ay = x.abs(), y.abs()
    steep = ay > ax
    c = torch.where(steep, ax, ay) / (torch.where(steep, ay, ax) + _DBL_EPS)
    c2 = c * c
    p1, p3, p5, p7 = _ATAN_P
    a = (((p7 * c2 + p5) * c2 + p3) * c2 + p1) * c
    a = torch.where(steep, 90.0 - a, a)
    a = torch.where(x < 0, 180.0 - a, a)
    return torch.where(y < 0, 360.0 - a, a)


_TINY = 1e-30   # under the square roots of sums of squares: sqrt(0 + tiny) = 1e-15 forward, gradient 0 (not NaN) at 0


def _round_ste(t: torch.Tensor) -> torch.Tensor:
    """Round to integers in the forward pass, identity in the backward pass (straight-through)."""
    return torch.round(t).detach() + (t - t.detach())    # exactly round(t) forward


@lru_cache(maxsize=256)
def _linear_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and 8-bit fixed-point weights (sum 256) of OpenCV's bit-exact bilinear resize along one
    axis: source coordinate ``(d + 0.5) * n_in / n_out - 0.5``, clamped to the image, its fraction rounded to
    1/256."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    s0 = np.floor(src).astype(np.int64)
    frac = np.where(s0 < 0, 0.0, src - s0)
    s0 = np.clip(s0, 0, n_in - 1)
    frac = np.where(s0 >= n_in - 1, 0.0, frac)
    s1 = np.minimum(s0 + 1, n_in - 1)
    c1 = np.rint(frac * 256.0)
    return (torch.from_numpy(s0), torch.from_numpy(s1), torch.from_numpy((256.0 - c1).astype(np.float32)),
            torch.from_numpy(c1.astype(np.float32)))


def _resize_linear_exact(v: torch.Tensor, size: tuple[int, int], quantize: bool) -> torch.Tensor:
    """Bilinear resize of 0..255 images ``(N, C, H, W)`` to ``size`` as OpenCV's ``INTER_LINEAR_EXACT`` does on
    8-bit images: 8-bit fixed-point weights, a horizontal then a vertical pass in integers, and the result
    rounded half up to 8 bits (``quantize``; the gradient passes straight through the rounding). Integer
    inputs stay below 2^24 throughout, so float32 holds every intermediate exactly."""
    dev = v.device
    x0, x1, cx0, cx1 = (t.to(dev) for t in _linear_taps(v.shape[-1], size[1]))
    y0, y1, cy0, cy1 = (t.to(dev) for t in _linear_taps(v.shape[-2], size[0]))
    h = v.index_select(-1, x0) * cx0.to(v.dtype) + v.index_select(-1, x1) * cx1.to(v.dtype)
    out = (h.index_select(-2, y0) * cy0.to(v.dtype)[:, None] + h.index_select(-2, y1) * cy1.to(v.dtype)[:, None])
    if not quantize:
        return out / 65536.0
    return torch.floor((out.detach() + 32768.0) / 65536.0) + (out - out.detach()) / 65536.0


@lru_cache(maxsize=8)
def _cell_kernels_cpu() -> torch.Tensor:
    """(2, 16) per-pixel weights along one axis of a block: Gaussian (one factor of the separable 2-D
    Gaussian) times the bilinear split between the two cells."""
    j = torch.arange(BLOCK, dtype=torch.float64)
    gauss = torch.exp(-((j - BLOCK / 2) ** 2) / (2 * SIGMA ** 2))
    c = (j + 0.5) / CELL - 0.5                                 # continuous cell coordinate
    # tent weights; beyond the outer centres (c < 0, c > 1) only the outer cell gets a share, 1 - |c - k|,
    # which is what OpenCV's HOGCache::init gives those pixels
    split = torch.stack([(1 - (c - k).abs()).clamp(min=0) for k in range(BLOCK // CELL)])
    return (gauss[None] * split).float()


class HOGPeopleDetector(nn.Module):
    """OpenCV's HOG people detector in torch, differentiable from its window scores to the pixels.

    Inputs are float images ``(N, 3, H, W)`` (RGB) or ``(N, 1, H, W)`` in ``[0, 1]``, ``H >= 128`` and
    ``W >= 64``. ``quantize=True`` (default) rounds pixel values to 8 bits before the gradient and after each
    pyramid resize, as OpenCV works on 8-bit images (gradients pass straight through the rounding);
    ``quantize=False`` is the smooth function (use it for finite-difference checks).

    Calling the module runs :meth:`detect` and returns one ``(boxes (M, 4) x1 y1 x2 y2, scores (M,))`` pair per
    image (the ``detection`` task's output). :meth:`window_scores` gives the SVM score of every window of one
    scale, :meth:`level_scores` those of the whole pyramid and :meth:`max_score` the best window score per
    image, all differentiable.
    """

    bounds = (0.0, 1.0)

    def __init__(self, *, quantize: bool = True, scale: float = 1.05, hit_threshold: float = 0.0,
                 group_threshold: int = 2, eps: float = 0.2):
        super().__init__()
        if not (isinstance(scale, (int, float)) and scale > 1):
            raise OptionError(f"scale must be a number > 1 (the pyramid step), got {scale!r}")
        if isinstance(group_threshold, bool) or not isinstance(group_threshold, int) or group_threshold < 0:
            raise OptionError(f"group_threshold must be an integer >= 0, got {group_threshold!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise OptionError(f"eps must be a number >= 0, got {eps!r}")
        self.quantize = bool(quantize)
        self.scale = float(scale)
        self.hit_threshold = float(hit_threshold)
        self.group_threshold = group_threshold
        self.eps = float(eps)
        w, b = _svm_cpu()
        # weights in OpenCV's order (block column, block row, cell column, cell row, bin) -> a correlation
        # kernel (36, 15, 7) over the block grid, channel = cell column * 18 + cell row * 9 + bin
        kernel = w.reshape(BLOCKS_PER_WINDOW[1], BLOCKS_PER_WINDOW[0], BLOCK_LEN).permute(2, 1, 0).contiguous()
        self.register_buffer("svm_kernel", kernel[None], persistent=False)
        self.register_buffer("svm_bias", b.clone(), persistent=False)
        self.register_buffer("gamma_table", torch.from_numpy(np.sqrt(np.arange(256.0)).astype(np.float32)),
                             persistent=False)
        self.register_buffer("cell_kernels", _cell_kernels_cpu().clone(), persistent=False)
        self.eval()

    # ------------------------------------------------------------------ validation
    @staticmethod
    def check_input(x) -> None:
        """Raise :class:`~georobust.errors.InputError` unless ``x`` is a finite float image batch in [0, 1]
        of shape (N, 1 or 3, H >= 128, W >= 64)."""
        if not isinstance(x, torch.Tensor):
            raise InputError(f"frames must be a torch.Tensor (N, 3, H, W), got {type(x).__name__}")
        if not x.is_floating_point():
            raise InputError(f"frames must be float in [0, 1], got dtype {x.dtype}; convert 8-bit frames with "
                             "x.float() / 255")
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise InputError(f"frames must have shape (N, 3, H, W) (RGB) or (N, 1, H, W), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise InputError("no frames: the batch is empty")
        if x.shape[2] < WINDOW[0] or x.shape[3] < WINDOW[1]:
            raise InputError(f"frames of {x.shape[2]}x{x.shape[3]} pixels cannot hold the {WINDOW[1]}x{WINDOW[0]} "
                             "(width x height) detection window; use frames at least 128 high and 64 wide")
        if not torch.isfinite(x.detach()).all():
            raise InputError("frames contain NaN or inf")
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if lo < 0 or hi > 1:
            raise InputError(f"frame values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]; divide 8-bit values by 255")

    # ------------------------------------------------------------------ features
    def _levels255(self, x: torch.Tensor) -> torch.Tensor:
        v = x * 255.0
        return _round_ste(v) if self.quantize else v

    def _gradient(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per pixel gradient magnitude and orientation map ``(N, 9, H, W)`` of 0..255 images ``v``."""
        g = _safe_sqrt(v)                                       # gamma: sqrt of 0..255
        if self.quantize:
            # OpenCV reads sqrt from a table of correctly rounded float32 values; torch's float32 sqrt can be
            # one ulp off, which flips ties in the colour-channel choice. Forward: the table; backward: sqrt.
            idx = v.detach().round().clamp(0, 255).long()
            g = self.gamma_table.to(g.dtype)[idx] + (g - g.detach())
        p = F.pad(g, (1, 1, 1, 1), mode="reflect")              # BORDER_REFLECT_101
        dx = p[:, :, 1:-1, 2:] - p[:, :, 1:-1, :-2]
        dy = p[:, :, 2:, 1:-1] - p[:, :, :-2, 1:-1]
        if g.shape[1] == 3:
            # OpenCV's vectorised choice: R if its squared magnitude is strictly above G's, else G; then that
            # one if strictly above B's, else B (ties go to B, then G)
            m = dx * dx + dy * dy
            mr, mg, mb = m[:, 0:1], m[:, 1:2], m[:, 2:3]
            take_r = mr > mg
            take_b = ~(torch.maximum(mr, mg) > mb)
            take_g = ~take_b & ~take_r
            take_r = ~take_b & take_r
            dx = torch.where(take_b, dx[:, 2:3], torch.where(take_g, dx[:, 1:2], dx[:, 0:1]))
            dy = torch.where(take_b, dy[:, 2:3], torch.where(take_g, dy[:, 1:2], dy[:, 0:1]))
        mag = torch.sqrt(dx * dx + dy * dy + _TINY)
        theta = _poly_atan2(dy, dx)                             # degrees in [0, 360)
        a = torch.remainder(theta, 180.0) * (NBINS / 180.0) - 0.5
        lo = torch.floor(a)
        frac = a - lo
        b0 = torch.remainder(lo, NBINS).long()
        b1 = torch.remainder(b0 + 1, NBINS)
        hi = mag * frac
        orient = torch.zeros(mag.shape[0], NBINS, *mag.shape[2:], dtype=mag.dtype, device=mag.device)
        return orient.scatter_add(1, b0, mag - hi).scatter_add(1, b1, hi)

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-Hys-normalised block histograms ``(N, 36, nby, nbx)`` of images in [0, 1] (no validation,
        no quantisation: pass 0..1 images; channel = cell column * 18 + cell row * 9 + bin)."""
        return self._blocks255(self._levels255(x))

    def _blocks255(self, v: torch.Tensor) -> torch.Tensor:
        orient = self._gradient(v)                               # (N, 9, H, W)
        n, _, h, w = orient.shape
        k = self.cell_kernels.to(orient.dtype)                   # (2, 16)
        o = orient.reshape(n * NBINS, 1, h, w)
        cx = F.conv2d(o, k.view(2, 1, 1, BLOCK), stride=(1, BLOCK_STRIDE))          # (n*9, 2, h, nbx)
        nbx = cx.shape[-1]
        cy = F.conv2d(cx.reshape(n * NBINS * 2, 1, h, nbx), k.view(2, 1, BLOCK, 1),
                      stride=(BLOCK_STRIDE, 1))                                     # (n*9*2, 2, nby, nbx)
        nby = cy.shape[-2]
        hist = cy.reshape(n, NBINS, 2, 2, nby, nbx).permute(0, 2, 3, 1, 4, 5).reshape(n, BLOCK_LEN, nby, nbx)
        # L2-Hys
        norm = torch.sqrt((hist * hist).sum(1, keepdim=True) + _TINY)
        hist = torch.clamp(hist / (norm + 0.1 * BLOCK_LEN), max=L2HYS)
        norm = torch.sqrt((hist * hist).sum(1, keepdim=True) + _TINY)
        return hist / (norm + 1e-3)

    def descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """The 3,780-long descriptor of every 64x128 window at stride 8, in OpenCV's order:
        ``(N, rows, cols, 3780)`` with window ``(r, c)`` at pixel ``(8 r, 8 c)`` — what
        ``HOGDescriptor.compute(img, winStride=(8, 8))`` returns, row by row of windows."""
        self.check_input(x)
        b = self.blocks(x)                                       # (N, 36, nby, nbx)
        wins = b.unfold(2, BLOCKS_PER_WINDOW[0], 1).unfold(3, BLOCKS_PER_WINDOW[1], 1)  # (N, 36, r, c, 15, 7)
        return wins.permute(0, 2, 3, 5, 4, 1).reshape(*wins.shape[:1], *wins.shape[2:4], DESCRIPTOR_LEN)

    def _scores255(self, v: torch.Tensor) -> torch.Tensor:
        b = self._blocks255(v)
        return F.conv2d(b, self.svm_kernel.to(b.dtype))[:, 0] + self.svm_bias.to(b.dtype)

    def window_scores(self, x: torch.Tensor) -> torch.Tensor:
        """SVM score of every 64x128 window at stride 8 of images at their own scale: ``(N, rows, cols)``,
        window ``(r, c)`` at pixel ``(8 r, 8 c)``; OpenCV's ``detect`` weights. Differentiable."""
        self.check_input(x)
        return self._scores255(self._levels255(x))

    def level_scores(self, x: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
        """``(scale, scores (N, rows, cols))`` for every level of the ``detectMultiScale`` pyramid. Differentiable."""
        self.check_input(x)
        v = self._levels255(x)
        h, w = x.shape[-2:]
        out = []
        for s in pyramid_scales(h, w, self.scale):
            size = (_cvround(h / s), _cvround(w / s))
            vs = v if size == (h, w) else _resize_linear_exact(v, size, self.quantize)
            out.append((s, self._scores255(vs)))
        return out

    def max_score(self, x: torch.Tensor) -> torch.Tensor:
        """The best window score over the whole pyramid, per image ``(N,)``: the loss a hiding attack lowers."""
        return torch.stack([sc.flatten(1).amax(1) for _, sc in self.level_scores(x)], 1).amax(1)

    # ------------------------------------------------------------------ detection
    def candidates(self, x: torch.Tensor, hit_threshold: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The raw hits (score ``>= hit_threshold``, default the module's) of every pyramid level, per image:
        rectangles ``(K, 4)`` as OpenCV's ``(x, y, width, height)`` integers in the input's pixels, and their
        scores ``(K,)`` (before grouping)."""
        t = self.hit_threshold if hit_threshold is None else float(hit_threshold)
        with torch.no_grad():
            levels = self.level_scores(x)
        out = []
        for i in range(x.shape[0]):
            rects, weights = [], []
            for s, sc in levels:
                m = sc[i].detach().double().cpu().numpy()
                r, c = np.nonzero(m >= t)
                if r.size == 0:
                    continue
                rects.append(np.stack([np.rint(c * BLOCK_STRIDE * s), np.rint(r * BLOCK_STRIDE * s),
                                       np.full(r.size, _cvround(WINDOW[1] * s)),
                                       np.full(r.size, _cvround(WINDOW[0] * s))], 1).astype(np.int64))
                weights.append(m[r, c])
            out.append((np.concatenate(rects) if rects else np.zeros((0, 4), np.int64),
                        np.concatenate(weights) if weights else np.zeros(0)))
        return out

    def detect(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """OpenCV's ``detectMultiScale`` with this module's settings (defaults: hit threshold 0, scale 1.05,
        window stride 8, no padding, group threshold 2, eps 0.2, no mean-shift): per image ``(boxes (M, 4)
        x1 y1 x2 y2, scores (M,))`` on ``x``'s device, the score of a box being the best window score of its group."""
        h, w = x.shape[-2:]
        out = []
        for rects, weights in self.candidates(x):
            boxes, scores = group_rectangles(rects, weights, self.group_threshold, self.eps)
            boxes = clip_rects(boxes, w, h)
            keep = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
            boxes, scores = boxes[keep], scores[keep]
            xyxy = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]], 1) \
                if len(boxes) else np.zeros((0, 4))
            out.append((torch.as_tensor(xyxy, dtype=torch.float32, device=x.device),
                        torch.as_tensor(scores, dtype=torch.float32, device=x.device)))
        log.debug("HOG: %d frames, %s boxes", x.shape[0], [len(b) for b, _ in out])
        return out

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.detect(x)


def group_rectangles(rects: np.ndarray, weights: np.ndarray, group_threshold: int = 2,
                     eps: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's ``groupRectangles`` as ``HOGDescriptor`` uses it (weights kept), on ``(x, y, w, h)`` integer
    rectangles: two rectangles are similar when each of their four sides differs by at most
    ``eps * (min(w1, w2) + min(h1, h2)) / 2``; classes are the transitive closure; each class becomes its
    average rectangle (rounded half to even) with its best weight; a class of at most ``group_threshold``
    members is dropped, and so is one lying inside another kept class (widened by ``eps`` of its size) that
    has more than ``max(3, n)`` members (or any, when this class has fewer than 3)."""
    rects = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if group_threshold <= 0 or len(rects) == 0:
        return rects.copy(), weights.copy()
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    x, y, w, h = rects.T
    delta = eps * (np.minimum(w[:, None], w[None]) + np.minimum(h[:, None], h[None])) * 0.5
    similar = ((np.abs(x[:, None] - x[None]) <= delta) & (np.abs(y[:, None] - y[None]) <= delta)
               & (np.abs((x + w)[:, None] - (x + w)[None]) <= delta)
               & (np.abs((y + h)[:, None] - (y + h)[None]) <= delta))
    ncls, labels = connected_components(csr_matrix(similar), directed=False)
    count = np.bincount(labels, minlength=ncls)
    mean = np.stack([np.bincount(labels, rects[:, k].astype(np.float64), ncls) for k in range(4)], 1) / count[:, None]
    avg = np.rint(mean).astype(np.int64)
    best = np.full(ncls, -np.inf)
    np.maximum.at(best, labels, weights)
    keep_r, keep_w = [], []
    for i in range(ncls):
        n1 = count[i]
        if n1 <= group_threshold:
            continue
        r1 = avg[i]
        inside = False
        for j in range(ncls):
            n2 = count[j]
            if j == i or n2 <= group_threshold:
                continue
            r2 = avg[j]
            dx, dy = _cvround(r2[2] * eps), _cvround(r2[3] * eps)
            if (r1[0] >= r2[0] - dx and r1[1] >= r2[1] - dy and r1[0] + r1[2] <= r2[0] + r2[2] + dx
                    and r1[1] + r1[3] <= r2[1] + r2[3] + dy and (n2 > max(3, n1) or n1 < 3)):
                inside = True
                break
        if not inside:
            keep_r.append(r1)
            keep_w.append(best[i])
    if not keep_r:
        return np.zeros((0, 4), np.int64), np.zeros(0)
    return np.stack(keep_r), np.asarray(keep_w)


def clip_rects(rects: np.ndarray, width: int, height: int) -> np.ndarray:
    """Intersect ``(x, y, w, h)`` rectangles with the image (OpenCV's ``clipObjects``); empty ones get size 0."""
    rects = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    x1 = np.clip(rects[:, 0], 0, width)
    y1 = np.clip(rects[:, 1], 0, height)
    x2 = np.clip(rects[:, 0] + rects[:, 2], 0, width)
    y2 = np.clip(rects[:, 1] + rects[:, 3], 0, height)
    return np.stack([x1, y1, np.maximum(x2 - x1, 0), np.maximum(y2 - y1, 0)], 1)


__all__ = ["HOGPeopleDetector", "group_rectangles", "clip_rects", "load_people_svm", "pyramid_scales",
           "export_people_svm", "WINDOW", "DESCRIPTOR_LEN"]
