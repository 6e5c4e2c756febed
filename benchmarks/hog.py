"""Benchmark: georobust's torch port of OpenCV's HOG people detector beside OpenCV itself, in one process.

Speed (default): on frames of vtest.avi (Debian opencv-doc; generated 768x576 scenes when it is absent), per
frame, the seconds and frames per second of (a) OpenCV's ``HOGDescriptor.detectMultiScale`` (defaults: hit
threshold 0, stride 8, scale 1.05, group threshold 2), (b) the port's detection (the same pyramid, scores and
grouping) and (c) one attack step of the port: the best window score over the whole pyramid and its gradient
with respect to the pixels (forward + backward). Both use ``--threads`` CPU threads; wall and CPU seconds of
the process are reported (with one thread on a shared machine, the CPU time is the quiet single-core time).

Agreement (``--agreement``): on every ``--step``-th frame of the video (all 795 by default), the port's boxes
against ``detectMultiScale``'s at IoU 0.5: recall (OpenCV's boxes the port finds), precision (the port's boxes
OpenCV has) and the fraction of frames with exactly the same boxes.

    python benchmarks/hog.py                    # speed, 20 frames
    python benchmarks/hog.py --agreement        # the whole video (about 1 s per frame per thread)
    python benchmarks/hog.py --quick            # seconds: 1 half-size frame, and agreement on 2 frames
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import numpy as np
import torch

from georobust.data import video
from georobust.detection import HOGPeopleDetector

print = partial(print, flush=True)  # noqa: A001 - progress shows in logs


def _frames(n: int, step: int, half: bool, start: int = 0) -> tuple[np.ndarray, str]:
    if video.available():
        bgr = video.frames_bgr(start, min(video.NUM_FRAMES, start + n * step), step)[:n]
        src = f"vtest.avi frames {start}..{start + (len(bgr) - 1) * step} step {step}"
    else:
        rng = np.random.default_rng(0)
        bgr = rng.integers(0, 256, (n, video.HEIGHT, video.WIDTH, 3), dtype=np.uint8)
        src = "generated noise frames (vtest.avi absent: apt-get install opencv-doc)"
    if half:
        import cv2
        bgr = np.stack([cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2), interpolation=cv2.INTER_AREA) for f in bgr])
    return bgr, src


def _boxes_cv(hog, f) -> np.ndarray:
    r, _ = hog.detectMultiScale(f)
    r = np.asarray(r, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([r[:, :2], r[:, :2] + r[:, 2:]], 1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def speed(bgr: np.ndarray, det: HOGPeopleDetector, hog) -> dict:
    x = video.to_tensor(bgr)
    det.detect(x[:1])                       # warm-up, not timed
    hog.detectMultiScale(bgr[0])
    def timed(fn):
        """(wall seconds, CPU seconds of this process) per frame; on a shared machine the CPU time is what
        the run would take alone on one core (both libraries run single-threaded with --threads 1)."""
        t, c = time.perf_counter(), time.process_time()
        for i in range(len(bgr)):
            fn(i)
        return (time.perf_counter() - t) / len(bgr), (time.process_time() - c) / len(bgr)

    def step(i):
        xi = x[i:i + 1].clone().requires_grad_(True)
        det.max_score(xi).sum().backward()

    t_cv, c_cv = timed(lambda i: hog.detectMultiScale(bgr[i]))
    t_det, c_det = timed(lambda i: det.detect(x[i:i + 1]))
    t_step, c_step = timed(step)
    return {"frames": len(bgr), "size": f"{bgr.shape[2]}x{bgr.shape[1]}", "opencv_s": t_cv,
            "port_detect_s": t_det, "port_attack_step_s": t_step, "opencv_cpu_s": c_cv, "port_detect_cpu_s": c_det,
            "port_attack_step_cpu_s": c_step, "opencv_fps": 1 / t_cv, "port_detect_fps": 1 / t_det,
            "port_attack_step_fps": 1 / t_step}


def agreement(bgr: np.ndarray, det: HOGPeopleDetector, hog, log_every: int = 50) -> dict:
    found = matched = n_cv = n_port = same = 0
    t0 = time.perf_counter()
    for k, f in enumerate(bgr):
        ref = _boxes_cv(hog, f)
        (b, _), = det.detect(video.to_tensor(f[None]))
        ours = b.double().numpy()
        n_cv, n_port = n_cv + len(ref), n_port + len(ours)
        if len(ref) and len(ours):
            iou = _iou(ref, ours)
            found += int((iou.max(1) >= 0.5).sum())
            matched += int((iou.max(0) >= 0.5).sum())
        same += int(sorted(map(tuple, ref.tolist())) == sorted(map(tuple, ours.tolist())))
        if log_every and (k + 1) % log_every == 0:
            print(f"  {k + 1}/{len(bgr)} frames, {time.perf_counter() - t0:.0f} s: recall {found / max(n_cv, 1):.4f} "
                  f"({found}/{n_cv}) precision {matched / max(n_port, 1):.4f} ({matched}/{n_port}) "
                  f"identical {same}/{k + 1}")
    return {"frames": len(bgr), "opencv_boxes": n_cv, "port_boxes": n_port,
            "recall": found / max(n_cv, 1), "precision": matched / max(n_port, 1),
            "identical_frames": same / len(bgr), "seconds": time.perf_counter() - t0}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 half-size frame for speed, 2 frames for agreement")
    ap.add_argument("--agreement", action="store_true", help="recall/precision vs detectMultiScale on the video")
    ap.add_argument("--frames", type=int, default=None, help="frames (speed: 20; agreement: all)")
    ap.add_argument("--step", type=int, default=1, help="take every step-th frame")
    ap.add_argument("--start", type=int, default=0, help="agreement: first frame (to split the video over runs)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of torch and OpenCV")
    ap.add_argument("--save", default=None, help="write the numbers to this JSON file")
    a = ap.parse_args(argv)
    import cv2

    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    det = HOGPeopleDetector()
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    out: dict = {"threads": a.threads, "torch": torch.__version__, "opencv": cv2.__version__}
    if a.agreement or a.quick:
        if not video.available():
            print("agreement needs vtest.avi: apt-get install -y opencv-doc (Debian) or make video; skipped")
        else:
            n = 2 if a.quick else (a.frames or len(range(a.start, video.NUM_FRAMES, a.step)))
            step = 350 if a.quick else a.step
            bgr, src = _frames(n, step, half=False, start=0 if a.quick else a.start)
            print(f"agreement on {src}")
            out["agreement"] = agreement(bgr, det, hog)
            out["agreement"]["source"] = src
            r = out["agreement"]
            print(f"agreement: {r['frames']} frames, recall {r['recall']:.4f}, precision {r['precision']:.4f}, "
                  f"identical boxes on {100 * r['identical_frames']:.1f}% of frames ({r['opencv_boxes']} OpenCV "
                  f"boxes, {r['port_boxes']} port boxes), {r['seconds']:.0f} s")
    if not a.agreement or a.quick:
        n = 1 if a.quick else (a.frames or 20)
        bgr, src = _frames(n, 1 if a.quick else max(1, video.NUM_FRAMES // n), half=a.quick)
        out["speed"] = s = speed(bgr, det, hog)
        s["source"] = src
        print(f"speed on {src}, {s['size']}, {a.threads} thread(s):")
        for name, k in (("OpenCV detectMultiScale", "opencv"), ("port detect", "port_detect"),
                        ("port attack step (f+b)", "port_attack_step")):
            print(f"  {name:24s} {s[k + '_s']:.3f} s/frame wall ({s[k + '_fps']:.2f} fps), "
                  f"{s[k + '_cpu_s']:.3f} s/frame CPU ({1 / s[k + '_cpu_s']:.2f} fps)")
    if a.save:
        with open(a.save, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
