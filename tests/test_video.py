"""georobust.data.video: OpenCV's vtest.avi (Debian opencv-doc) as float RGB tensors; clear errors when the file
or OpenCV is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from georobust import data
from georobust.data import video
from georobust.errors import DataError, InputError, OptionError

needs_video = pytest.mark.skipif(not video.available(), reason="vtest.avi absent: apt-get install -y opencv-doc "
                                 "(Debian) or make video")


def test_info_and_splits():
    i = data.info("vtest")
    assert i.task == "detection" and i.shape == (3, 576, 768) and i.sizes == {"train": 600, "test": 195}
    assert data.info("vtest", n=5, step=2).sizes == {"train": 5, "test": 5}
    assert data.info("vtest", step=10).sizes == {"train": 60, "test": 20}


def test_missing_file_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.delenv("GEOROBUST_DATA", raising=False)
    monkeypatch.setattr(video, "SYSTEM_DIR", tmp_path)
    assert video.find() is None and not video.available()
    with pytest.raises(DataError, match="opencv-doc"):
        video.path()
    with pytest.raises(DataError, match="opencv-doc"):
        data.load("vtest", "test", n=1)


def test_georobust_data_is_searched_first(monkeypatch, tmp_path):
    (tmp_path / "opencv").mkdir()
    (tmp_path / "opencv" / "vtest.avi").write_bytes(b"")
    monkeypatch.setenv("GEOROBUST_DATA", str(tmp_path))
    assert video.find() == tmp_path / "opencv" / "vtest.avi"


def test_missing_opencv_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)     # import cv2 -> ImportError
    with pytest.raises(DataError, match=r"opencv-python-headless<5"):
        video._cv2()


@pytest.mark.parametrize("kw", [dict(start=-1), dict(start=5, stop=5), dict(stop=796), dict(step=0),
                                dict(start=1.5)])
def test_bad_ranges_raise_before_reading(kw, monkeypatch, tmp_path):
    monkeypatch.setattr(video, "SYSTEM_DIR", tmp_path)   # no file: the range check must come first
    monkeypatch.delenv("GEOROBUST_DATA", raising=False)
    with pytest.raises(InputError):
        video.frames(**kw)


def test_bad_options_raise():
    with pytest.raises(OptionError):
        data.load("vtest", "test", fps=3)
    with pytest.raises(InputError):
        video.load("val")
    with pytest.raises(InputError, match="uint8"):
        video.to_tensor(np.zeros((1, 4, 4, 3), np.float32))


def test_to_tensor_is_rgb_over_255():
    bgr = np.arange(2 * 2 * 3 * 2, dtype=np.uint8).reshape(2, 2, 3, 2).transpose(0, 1, 3, 2).copy()  # (2,2,2,3)
    t = video.to_tensor(bgr)
    assert t.shape == (2, 3, 2, 2) and t.dtype == torch.float32
    for c_rgb, c_bgr in ((0, 2), (1, 1), (2, 0)):
        assert torch.equal(t[:, c_rgb] * 255, torch.from_numpy(bgr[..., c_bgr]).float())


@needs_video
def test_frames_are_the_decoded_video():
    import cv2
    cap = cv2.VideoCapture(str(video.path()))
    ref = [cap.read()[1] for _ in range(3)]
    cap.release()
    x = video.frames(0, 3)
    assert x.shape == (3, 3, 576, 768) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    for i in range(3):
        assert torch.equal(torch.round(x[i] * 255).to(torch.uint8), torch.from_numpy(ref[i][..., ::-1].copy()).permute(2, 0, 1))


@needs_video
def test_split_labels_are_frame_indices():
    x, y = data.load("vtest", "test", n=2, step=3)
    assert y.tolist() == [600, 603] and x.shape == (2, 3, 576, 768)
    assert torch.equal(x, video.frames(600, 604, 3))
    # frames far into the stream come out in order (no seeking): 794 is the last
    last = video.frames_bgr(793, 795)
    assert last.shape == (2, 576, 768, 3) and not np.array_equal(last[0], last[1])


def test_hog_boxes_bad_options_raise_before_reading(monkeypatch, tmp_path):
    monkeypatch.setattr(video, "SYSTEM_DIR", tmp_path)
    monkeypatch.delenv("GEOROBUST_DATA", raising=False)
    with pytest.raises(InputError, match="engine"):
        video.hog_boxes(engine="yolo")
    with pytest.raises(InputError, match="batch"):
        video.hog_boxes(batch=0)
    with pytest.raises(DataError, match="opencv-doc"):
        video.hog_boxes(0, 1)


@needs_video
@pytest.mark.slow
def test_hog_boxes_port_agrees_with_opencv_and_caches(tmp_path):
    cache = tmp_path / "boxes.json"
    ours = video.hog_boxes(0, 2, engine="port", cache=cache)
    ref = video.hog_boxes(0, 2, engine="opencv")
    assert len(ours) == len(ref) == 2 and sum(len(b) for b in ref) >= 2
    from georobust.core.tasks import box_iou

    for a, b in zip(ours, ref):       # the same people, each box matched at IoU >= 0.9 both ways
        assert len(a) == len(b)
        if len(a):
            iou = box_iou(a, b)
            assert (iou.amax(1) >= 0.9).all() and (iou.amax(0) >= 0.9).all()
    assert cache.is_file()
    again = video.hog_boxes(0, 2, engine="port", cache=cache)   # read back, not recomputed
    assert all(torch.equal(a, b) for a, b in zip(ours, again))
