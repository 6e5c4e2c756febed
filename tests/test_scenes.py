"""The scenes-seg data set: shipped textures only, deterministic per seed, masks aligned with the pasted items."""

import pytest
import torch

import georobust as gr
from georobust.data import scenes
from georobust.errors import OptionError


def test_textures_ship_in_the_wheel(monkeypatch):
    """Only files inside the installed scikit-image package are read (nothing is fetched from the network):
    they exist there, and loading them works with sockets blocked and goes through no downloader."""
    import socket

    def no_network(*a, **k):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    d = scenes.texture_dir()
    for t in scenes.TEXTURES:
        assert (d / t).is_file(), t
    scenes._textures.cache_clear()
    import skimage.data._fetchers as fetchers

    calls = []
    orig = fetchers._fetch
    fetchers._fetch = lambda *a, **k: calls.append(a) or orig(*a, **k)
    try:
        tex = scenes._textures()
    finally:
        fetchers._fetch = orig
    assert not calls and len(tex) == 3 and all(t.ndim == 2 and t.min() >= 0 and t.max() <= 1 for t in tex)


def test_shapes_ranges_and_info():
    x, m = gr.data.load("scenes-seg", "test", n=12)
    assert x.shape == (12, 1, 64, 64) and x.dtype == torch.float32 and m.shape == (12, 64, 64)
    assert m.dtype == torch.int64 and 0 <= float(x.min()) and float(x.max()) <= 1
    info = gr.data.info("scenes-seg")
    assert info.task == "dense" and info.num_classes == len(info.classes) and int(m.max()) < info.num_classes
    assert bool((m > 0).any()) and bool((m == 0).any())
    x2, m2 = gr.data.load("scenes-seg", "test", n=4, size=32)
    assert x2.shape == (4, 1, 32, 32) and m2.shape == (4, 32, 32)


@pytest.mark.slow  # loads Fashion-MNIST train (~7 s)
def test_deterministic_per_seed_and_prefix_stable():
    a = gr.data.load("scenes-seg", "train", n=6, seed=3)
    b = gr.data.load("scenes-seg", "train", n=6, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = gr.data.load("scenes-seg", "train", n=6, seed=4)
    assert not torch.equal(a[0], c[0])
    d = gr.data.load("scenes-seg", "train", n=3, seed=3)  # scene i depends on (seed, split, i) only
    assert torch.equal(a[0][:3], d[0]) and torch.equal(a[1][:3], d[1])
    e = gr.data.load("scenes-seg", "test", n=6, seed=3)
    assert not torch.equal(a[0], e[0])


@pytest.mark.parametrize("index", range(8))
def test_masks_align_with_the_pasted_items_pixel_for_pixel(index):
    """Re-paste the recorded items on the recorded background independently: the scene and its mask are exactly
    the composite — item pixels carry the item's intensity and class, every other pixel the texture and 0."""
    x, m, bg, placements = scenes.render("test", index, size=64, seed=0)
    want_x, want_m = bg.clone(), torch.zeros(64, 64, dtype=torch.long)
    for pl in placements:
        s = pl.image.shape[0]
        on = pl.image >= scenes.ALPHA_THRESHOLD
        for i in range(s):
            for j in range(s):
                if on[i, j]:
                    want_x[pl.top + i, pl.left + j] = pl.image[i, j]
                    want_m[pl.top + i, pl.left + j] = pl.label
    assert torch.equal(x[0], want_x) and torch.equal(m, want_m)
    assert 1 <= len(placements) <= 3 and all(scenes.SCALES[0] <= p.image.shape[0] <= scenes.SCALES[1]
                                              for p in placements)
    xs, ms = gr.data.load("scenes-seg", "test", n=index + 1)
    assert torch.equal(xs[index], x) and torch.equal(ms[index], m)


def test_classes_group_fashion_mnist():
    if not scenes.uses_fashion_mnist():
        pytest.skip("Fashion-MNIST is not installed: the digits fallback is used")
    assert scenes.classes() == ["background", "top", "trouser", "footwear", "bag"]
    assert [scenes.FMNIST_GROUPS[c] for c in (0, 1, 5, 8)] == [1, 2, 3, 4]


def test_bad_options():
    with pytest.raises(OptionError, match="size"):
        gr.data.load("scenes-seg", "test", n=2, size=8)
    with pytest.raises(OptionError, match="n must be"):
        gr.data.load("scenes-seg", "test", n=0)
    with pytest.raises(OptionError, match="option"):
        gr.data.load("scenes-seg", "test", colour=3)


def test_scene_figure(tmp_path):
    x, m = gr.data.load("scenes-seg", "test", n=4)
    from georobust import plots

    p = plots.scenes(x, m, tmp_path / "scenes.png", classes=scenes.classes())
    assert p.stat().st_size > 5000
