"""Thys, Van Ranst & Goedemé ("Fooling automated surveillance cameras: adversarial patches to attack person
detection", CVPR workshops 2019) at small scale: a patch that hides people from a person detector, on OpenCV's
surveillance video vtest.avi (Debian opencv-doc).

People are the HOG/OpenCV detector's boxes on the clean frames (``hog_boxes(engine="opencv")``, cached in
``georobust/detection/vtest_hog_boxes.json``). Two detectors: the HOG + linear-SVM people detector (the torch port
for the optimisation; OpenCV's ``detectMultiScale`` for the evaluation, on the patched frames rounded to 8 bits,
which the port matches box for box) and the shipped CNN (``georobust/detection/cnn_people.safetensors``). For
each detector a patch is optimised on ``--n-train`` training frames (0-599), then on ``--n-test`` held-out
frames (600-794) every person carries (a) nothing, (b) a uniform-noise patch of the same size (the paper's
baseline), (c) a plain grey patch (not in the paper: it separates occlusion from adversarial content), (d) the
patch made on the HOG detector, (e) the one made on the CNN (d/e: white-box on its own detector, transfer on the
other), at the fixed evaluation placement (centred on the box, 0.2 x its diagonal). A person is found when a
detection of the patched frame overlaps their box at IoU >= 0.5 (recomputed from boxes, never from the loss).

    python repro/surveillance_patch.py --threads 1       # writes repro/results/surveillance_patch.{md,json,png}
    python repro/surveillance_patch.py --replot          # the figure again, from the saved results
    python repro/surveillance_patch.py --quick           # seconds: 4 + 4 frames, 2 steps
    python repro/surveillance_patch.py --train-cnn       # retrain the shipped CNN detector (minutes)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import parser
from safetensors.torch import load_file, save_file

from georobust import plots
from georobust.attacks.detector_patch import detector_patch, evaluate_detector_patch, patch_frames, random_patch
from georobust.attacks.detector_patch import recall as recall_of
from georobust.data import video
from georobust.detection import HOGPeopleDetector
from georobust.detection.cnn import (
    AP_SCORE_THRESHOLD,
    HOG_BOXES_FILE,
    WEIGHTS_FILE,
    average_precision,
    downscale,
    load_cnn_people,
    train_cnn_detector,
)

#: Thys et al., Table 1 (INRIA test set, YOLOv2): AP of the person class
CONDITIONS = ("none", "grey", "noise", "hog", "cnn")
PAPER = {"clean": 1.0, "random noise patch": 0.877, "objectness patch (OBJ)": 0.255}


def people(start: int = 0, stop: int = video.NUM_FRAMES) -> list[torch.Tensor]:
    """The HOG/OpenCV boxes of every frame (read from the cache in the package, computed when it is missing)."""
    return video.hog_boxes(0, video.NUM_FRAMES, 1, engine="opencv", cache=HOG_BOXES_FILE)[start:stop]


class OpenCVHOG:
    """OpenCV's ``detectMultiScale`` behind the detector protocol's ``detect``: frames in [0, 1] are rounded
    to 8 bits (what a camera records) and converted to BGR."""

    def __init__(self):
        import cv2

        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def detect(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for f in x:
            bgr = np.ascontiguousarray((f.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
                                       .permute(1, 2, 0).numpy()[..., ::-1])
            r, w = self.hog.detectMultiScale(bgr)
            r = torch.as_tensor(np.asarray(r, dtype=np.float32).reshape(-1, 4))
            out.append((torch.cat([r[:, :2], r[:, :2] + r[:, 2:]], 1),
                        torch.as_tensor(np.asarray(w, dtype=np.float32).reshape(-1))))
        return out


def frame_indices(lo: int, hi: int, n: int) -> list[int]:
    step = max((hi - lo) // n, 1)
    return list(range(lo, hi, step))[:n]


def load_frames(idx: list[int]) -> torch.Tensor:
    step = idx[1] - idx[0] if len(idx) > 1 else 1
    return video.frames(idx[0], idx[-1] + 1, step)


def train_cnn(a) -> dict:
    """Train the CNN detector on frames 0-599 and measure its AP on 600-794 against the HOG boxes."""
    t0 = time.perf_counter()
    boxes = people()
    x = torch.cat([downscale(video.frames(s, min(s + 100, video.NUM_FRAMES))) for s in range(0, video.NUM_FRAMES, 100)])
    model, hist = train_cnn_detector(x[:600], boxes[:600], frame_size=video.SHAPE[1:], epochs=a.epochs,
                                     seed=a.seed, time_limit=a.time_limit, stop_epoch=a.stop_epoch)
    train_s = time.perf_counter() - t0
    info = measure_ap(model, x, boxes)
    info.update({"history": hist, "seconds": train_s, "threads": a.threads,
                 "command": f"python repro/surveillance_patch.py --train-cnn --epochs {a.epochs} --stop-epoch "
                            f"{len(hist)} --threads {a.threads} --seed {a.seed}",
                 "data": "vtest.avi frames 0-599 (train), 600-794 (test); labels: OpenCV HOG detectMultiScale boxes"})
    model.save(a.weights, info)
    print(json.dumps({k: v for k, v in info.items() if k != "history"}, indent=1))
    return info


def measure_ap(model, x_small: torch.Tensor, boxes: list[torch.Tensor]) -> dict:
    """AP at IoU 0.5 against the HOG boxes (detections down to AP_SCORE_THRESHOLD) on the test frames (all, and
    every 10th: the subset the tests recompute) and the training frames; recall at detect's threshold."""
    scale = torch.tensor([video.WIDTH / x_small.shape[-1], video.HEIGHT / x_small.shape[-2]] * 2)
    keep = model.score_threshold
    model.score_threshold = AP_SCORE_THRESHOLD
    dets = []
    with torch.no_grad():
        for s in range(0, video.NUM_FRAMES, 50):
            dets += [(b * scale, sc) for b, sc in model.detect(x_small[s:min(s + 50, video.NUM_FRAMES)])]
    model.score_threshold = keep
    at = [(b[sc >= keep], sc[sc >= keep]) for b, sc in dets[600:]]
    found, total = recall_of(at, boxes[600:])
    return {"ap50_test": average_precision(dets[600:], boxes[600:]),
            "ap50_test_every10": average_precision(dets[600::10], boxes[600::10]),
            "ap50_train": average_precision(dets[:600], boxes[:600]), "ap_score_threshold": AP_SCORE_THRESHOLD,
            "recall50_test_at_threshold": found / total, "score_threshold": keep,
            "n_test_frames": video.NUM_FRAMES - 600, "n_test_people": total}


def table(res: dict) -> str:
    s = res["settings"]
    lines = [f"Thys et al. (CVPRW 2019) at our scale, vtest.avi: patch optimised on {s['n_train']} training frames "
             f"({s['train_people']} people) with {s['steps_hog']} Adam steps (HOG) / {s['steps_cnn']} (CNN) of "
             f"{s['batch']} frames, lr {s['lr']:g}, patch {s['patch_size']}² px placed at 0.2 x the box diagonal "
             f"(EOT: jitter, ±20° rotation, brightness/contrast/noise 0.1), NPS 0.01 + TV 2.5; evaluated on "
             f"{s['n_test']} held-out frames ({s['test_people']} people). People: OpenCV HOG boxes on the clean "
             f"frames; found = a detection at IoU >= 0.5. `{s['command']}`, {res['seconds']:.0f} s on "
             f"{s['threads']} thread(s) of a shared CPU"
             + (f" (evaluation only; the patches are those of `{s['patches_from']['command']}`, "
                f"{s['patches_from']['seconds']:.0f} s)" if "patches_from" in s else "") + ".", "",
             "| detector | no patch | grey patch | random-noise patch | patch made on HOG | patch made on CNN |",
             "|---|---|---|---|---|---|"]
    for det in ("hog", "cnn"):
        r = res["recall"][det]
        cells = [f"{r[k]['recall']:.3f} ({r[k]['found']}/{r[k]['total']})" for k in CONDITIONS]
        lines.append(f"| {det.upper()} | " + " | ".join(cells) + " |")
    lines += ["", "Recall of people, white-box on the diagonal (HOG patch on HOG, CNN patch on CNN), transfer off it. "
              "Thys et al. (INRIA test set, YOLOv2, AP of the person class): "
              + ", ".join(f"{k} {v:.1%}" for k, v in PAPER.items()) + " (their patch was trained for many epochs on "
              "the INRIA training set and covers a larger share of the person)."]
    for det in ("hog", "cnn"):
        h = res["training"][det]
        lines.append(f"- {det.upper()} patch: detection loss {h['first_detection']:.3f} -> {h['last_detection']:.3f} "
                     f"(mean of the first / last 5 steps), {h['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def figure(res: dict, patches: dict, out: Path, quick: bool, margin: int = 40) -> Path:
    """Clean and patched versions of one held-out frame per detector, cut to the people (plus ``margin``
    pixels), with the saved boxes; the patches beside them."""
    fig = res["figure"]
    i = fig["frame"]
    x = video.frames(i, i + 1)
    boxes = [torch.tensor(fig["people"], dtype=torch.float32).reshape(-1, 4)]
    s = res["settings"]
    if len(boxes[0]):
        x1, y1 = (max(int(v) - margin, 0) for v in boxes[0][:, :2].amin(0).tolist())
        x2 = min(int(boxes[0][:, 2].max()) + margin, video.WIDTH)
        y2 = min(int(boxes[0][:, 3].max()) + margin, video.HEIGHT)
    else:
        x1, y1, x2, y2 = 0, 0, video.WIDTH, video.HEIGHT
    shift = torch.tensor([x1, y1, x1, y1], dtype=torch.float32)

    def cut(img, dets):
        return img[:, y1:y2, x1:x2], torch.tensor(dets, dtype=torch.float32).reshape(-1, 4) - shift

    rows = []
    for det in ("hog", "cnn"):
        img, d = cut(x[0], fig["detections"][det]["none"])
        panels = [{"title": "clean", "image": img, "people": boxes[0] - shift, "detections": d}]
        for k, name in (("noise", "random patch"), (det, f"{det.upper()} patch")):
            img, d = cut(patch_frames(x, boxes, patches[k], mask=s["mask"])[0], fig["detections"][det][k])
            panels.append({"title": name, "image": img, "people": boxes[0] - shift, "detections": d})
        rows.append({"name": det.upper(), "panels": panels, "patch": patches[det]})
    r = res["recall"]
    return plots.surveillance_patch(
        rows, out / ("surveillance_patch_quick.png" if quick else "surveillance_patch.png"),
        title=f"held-out frame {i} (cut to its people); recall over {s['n_test']} held-out frames: HOG "
              f"{r['hog']['none']['recall']:.2f} -> {r['hog']['hog']['recall']:.2f}, CNN {r['cnn']['none']['recall']:.2f}"
              f" -> {r['cnn']['cnn']['recall']:.2f}\n(dashed: people; green: found at IoU >= 0.5; orange: other "
              "detections)")


def run(a) -> dict:
    t0 = time.perf_counter()
    all_boxes = people()
    tr_idx = frame_indices(0, 600, a.n_train)
    te_idx = frame_indices(600, video.NUM_FRAMES, a.n_test)
    x_tr, x_te = load_frames(tr_idx), load_frames(te_idx)
    b_tr, b_te = [all_boxes[i] for i in tr_idx], [all_boxes[i] for i in te_idx]
    hog, cnn = HOGPeopleDetector(), load_cnn_people(a.weights)
    evaluators = {"hog": OpenCVHOG(), "cnn": cnn}
    patches = {"noise": random_patch(a.patch_size, seed=a.seed + 1), "grey": torch.full((3, a.patch_size,
                                                                                         a.patch_size), 0.5)}
    training = {}
    saved = None
    if a.reuse_patches:  # evaluate the patches of the saved run again (e.g. with a new baseline)
        saved = json.loads(a.reuse_patches.with_suffix(".json").read_text())
        training = saved["training"]
        kept = load_file(str(a.reuse_patches.with_name(a.reuse_patches.stem + "_patches.safetensors")))
        patches.update({k: kept[k] for k in ("hog", "cnn")})
    kw = dict(patch_size=a.patch_size, batch_size=a.batch, lr=a.lr, seed=a.seed, mask=a.mask)
    for name, det, steps in (("cnn", cnn, a.steps_cnn), ("hog", hog, a.steps_hog)):
        if saved is not None:
            continue
        r = detector_patch(det, x_tr, b_tr, steps=steps, **kw)
        patches[name] = r.patch
        d = [h["detection"] for h in r.loss_history]
        training[name] = {"first_detection": float(np.mean(d[:5])), "last_detection": float(np.mean(d[-5:])),
                          "seconds": r.seconds, "loss_history": r.loss_history}
        print(f"{name} patch: {r.seconds:.0f} s, detection loss {training[name]['first_detection']:.3f} -> "
              f"{training[name]['last_detection']:.3f}", flush=True)
    recall = {"hog": {}, "cnn": {}}
    fig_det = {"hog": {}, "cnn": {}}
    for k in CONDITIONS:
        xp = x_te if k == "none" else patch_frames(x_te, b_te, patches[k], mask=a.mask)
        for det, ev in evaluators.items():
            e = evaluate_detector_patch(ev, xp, b_te, None)
            recall[det][k] = {"found": e["found"], "total": e["total"], "recall": e["recall"],
                              "mean_detections": e["mean_detections"]}
            fig_det[det][k] = e["detections"][a.figure_frame][0].tolist()
            print(f"{det} detector, {k}: recall {e['recall']:.3f} ({e['found']}/{e['total']})", flush=True)
    cmd = "python repro/surveillance_patch.py" + (" --quick" if a.quick else "") + f" --threads {a.threads}" + (
        f" --reuse-patches {a.reuse_patches}" if a.reuse_patches else "")
    res = {"settings": {"n_train": len(tr_idx), "n_test": len(te_idx), "train_frames": tr_idx, "test_frames": te_idx,
                        "train_people": sum(len(b) for b in b_tr), "test_people": sum(len(b) for b in b_te),
                        "steps_hog": a.steps_hog, "steps_cnn": a.steps_cnn, "batch": a.batch, "lr": a.lr,
                        "patch_size": a.patch_size, "mask": a.mask, "seed": a.seed, "threads": a.threads,
                        "command": cmd},
           "recall": recall, "training": training, "paper_thys_2019_inria_yolov2_ap": PAPER,
           "figure": {"frame": te_idx[a.figure_frame], "people": b_te[a.figure_frame].tolist(), "detections": fig_det},
           "seconds": time.perf_counter() - t0}
    if saved is not None:
        res["settings"]["patches_from"] = {"command": saved["settings"].get("patches_from", {}).get(
            "command", saved["settings"]["command"]), "seconds": saved["settings"].get("patches_from", {}).get(
            "seconds", saved["seconds"])}
    return res, patches


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--n-train", type=int, default=40)
    ap.add_argument("--n-test", type=int, default=40)
    ap.add_argument("--steps-hog", type=int, default=80)
    ap.add_argument("--steps-cnn", type=int, default=200)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--mask", default="square")
    ap.add_argument("--figure-frame", type=int, default=0, help="which held-out frame the figure shows")
    ap.add_argument("--weights", type=Path, default=WEIGHTS_FILE)
    ap.add_argument("--replot", action="store_true", help="redraw the figure from the saved results")
    ap.add_argument("--reuse-patches", type=Path, default=None,
                    help="a saved result (.json); evaluate its patches again instead of optimising new ones")
    ap.add_argument("--train-cnn", action="store_true", help="train the CNN detector and write --weights")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--time-limit", type=float, default=600.0, help="CNN training: stop after the epoch past this")
    ap.add_argument("--stop-epoch", type=int, default=None, help="CNN training: stop after this epoch")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.train_cnn:
        return train_cnn(a)
    stem = "surveillance_patch_quick" if a.quick else "surveillance_patch"
    if a.quick:
        a.n_train, a.n_test, a.steps_hog, a.steps_cnn, a.batch, a.patch_size = 4, 4, 2, 2, 1, 32
    a.out.mkdir(parents=True, exist_ok=True)
    jpath, ppath = a.out / f"{stem}.json", a.out / f"{stem}_patches.safetensors"
    if a.replot:
        res = json.loads(jpath.read_text())
        patches = load_file(str(ppath))
    else:
        res, patches = run(a)
        save_file({k: v.contiguous() for k, v in patches.items()}, str(ppath))
        jpath.write_text(json.dumps(res, indent=1) + "\n")
        text = table(res)
        (a.out / f"{stem}.md").write_text(text)
        print(text)
    figure(res, patches, a.out, a.quick)
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
