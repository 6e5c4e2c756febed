"""Bad input caught before any work (issue 10, section 3, library side): shapes, dtypes, probability outputs,
iteration counts and sizes, the folder data set's options, factory models from the current folder."""

from __future__ import annotations

import json
import logging
import math
import sys

import numpy as np
import pytest
import torch
from conftest import needs_fmnist
from torch import nn

import georobust as gr
from georobust import Classifier, data
from georobust.errors import InputError, ModelError, OptionError
from georobust.models import zoo


class Counting(nn.Module):
    """Counts forward passes of the wrapped module: "before any work" means none, or only the probe."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.module(x)


@pytest.fixture(scope="module")
def lenet():
    return gr.pretrained("lenet-fmnist")


@pytest.fixture(scope="module")
def fmnist_like():
    """Inputs of Fashion-MNIST's shape (the shape checks need no data files)."""
    return torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _counted(clf: Classifier) -> tuple[Classifier, Counting]:
    c = Counting(clf.module)
    return Classifier(c, bounds=clf.bounds, name=clf.name, input_shape=clf.input_shape).eval(), c


# ---- 1. shapes ------------------------------------------------------------------------------------------
def test_zoo_models_know_their_input_shape(lenet, mlp_digits, tmp_path):
    assert lenet.input_shape == (1, 28, 28)
    assert mlp_digits.input_shape == (1, 8, 8)
    # a model written by save_weights is loaded back with its shape
    net = Classifier(zoo.build("mlp", (1, 8, 8), 10, seed=0), name="m").eval()
    gr.save_weights(net, tmp_path / "m.safetensors", arch="mlp", input_shape=(1, 8, 8), num_classes=10)
    assert gr.load_model(str(tmp_path / "m.safetensors")).input_shape == (1, 8, 8)


def test_unbatched_sample_refused_before_any_work(lenet, fmnist_like):
    clf, c = _counted(lenet)
    with pytest.raises(InputError) as e:
        gr.deepfool(clf, fmnist_like[0])  # (1, 28, 28): one image without the batch dimension
    msg = str(e.value)
    assert "(N, 1, 28, 28)" in msg and "(1, 28, 28)" in msg and "unsqueeze(0)" in msg
    assert c.calls == 0


def test_flattened_inputs_refused_with_the_reshape(lenet, fmnist_like):
    clf, c = _counted(lenet)
    with pytest.raises(InputError) as e:
        gr.pgd(clf, fmnist_like.flatten(1), eps=0.1)
    msg = str(e.value)
    assert "(N, 1, 28, 28)" in msg and "(4, 784)" in msg and "reshape(-1, 1, 28, 28)" in msg
    assert c.calls == 0


def test_other_data_set_shape_refused(lenet, mlp_digits, digits_test, fmnist_like):
    x, _ = digits_test
    with pytest.raises(InputError, match=r"expects inputs of shape \(N, 1, 28, 28\).*\(540, 1, 8, 8\)"):
        gr.deepfool(lenet, x)
    with pytest.raises(InputError, match=r"expects inputs of shape \(N, 1, 8, 8\).*\(4, 1, 28, 28\)"):
        gr.fgsm(mlp_digits, fmnist_like, eps=0.1)
    # the geometry tools validate the same way
    from georobust.geometry import curvature_profile

    with pytest.raises(InputError, match=r"\(N, 1, 28, 28\)"):
        curvature_profile(lenet, x[:2], k=2)


def test_mean_std_of_other_channel_count(lenet, fmnist_like):
    clf = Classifier(lenet.module, mean=[0.5] * 3, std=[0.2] * 3).eval()
    with pytest.raises(ModelError) as e:
        gr.deepfool(clf, fmnist_like)
    assert "mean has 3 values" in str(e.value) and "1 channel" in str(e.value)
    # per-feature statistics on flat inputs: one value per feature
    flat = Classifier(nn.Linear(5, 3), mean=[0.5] * 4).eval()
    with pytest.raises(ModelError, match="mean has 4 values .* 5 feature"):
        gr.deepfool(flat, torch.rand(2, 5))


def test_unknown_shape_model_failure_is_a_model_error(lenet, fmnist_like):
    """A plain module knows no shape: its failure in the first probe pass becomes one ModelError quoting the
    input shape and torch's message, and no attack work is done after it."""
    c = Counting(lenet.module).eval()
    with pytest.raises(ModelError) as e:
        gr.deepfool(c, fmnist_like.flatten(1))
    msg = str(e.value)
    assert "(4, 784)" in msg and "conv2d" in msg and "\n" not in msg
    assert c.calls == 1  # the probe only
    with pytest.raises(ModelError, match=r"unsqueeze\(0\)"):
        gr.deepfool(Counting(lenet.module).eval(), fmnist_like[0])


# ---- 2. dtype policy ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_float_dtypes_are_converted_to_the_models(mlp_digits, digits_test, dtype, caplog):
    x, y = digits_test
    x, y = x[:12], y[:12]
    xd = x.to(dtype)
    ref_x = xd.float()  # what the float32 model computes on: exact for float64 data, rounded for float16
    with caplog.at_level(logging.INFO, logger="georobust.checks"):
        got = gr.deepfool(mlp_digits, xd)
    assert any("converting x to float32" in r.getMessage() for r in caplog.records)
    ref = gr.deepfool(mlp_digits, ref_x)
    assert got.x.dtype == torch.float32 and torch.equal(got.x, ref_x)
    assert torch.equal(got.x_adv, ref.x_adv) and torch.equal(got.success, ref.success)
    g2 = gr.pgd(mlp_digits, xd, y, eps=0.1, steps=3, seed=0)
    r2 = gr.pgd(mlp_digits, ref_x, y, eps=0.1, steps=3, seed=0)
    assert torch.equal(g2.x_adv, r2.x_adv)


def test_curvature_profile_with_float64_inputs(mlp_digits, digits_test):
    from georobust.geometry import curvature_profile

    x, y = digits_test
    a = curvature_profile(mlp_digits, x[:3].double(), y[:3], k=2)
    b = curvature_profile(mlp_digits, x[:3], y[:3], k=2)
    assert torch.equal(a.values, b.values)


def test_float64_model_computes_in_float64(digits_test):
    """The geometry tools use float64 models on purpose; float32 or float64 inputs then run in float64."""
    from georobust.geometry import curvature_profile

    m64 = gr.pretrained("mlp-digits").double()
    x, y = digits_test
    x, y = x[:6], y[:6]
    for xin in (x, x.double()):
        r = gr.deepfool(m64, xin)
        assert r.x.dtype == torch.float64 and r.x_adv.dtype == torch.float64
        assert bool(r.success.all())  # verified by re-running the float64 model
        assert gr.lbfgs(m64, xin[:2], max_iter=5, search_steps=2).x_adv.dtype == torch.float64
    prof = curvature_profile(m64, x[:2], y[:2], k=2)
    assert prof.values.dtype == torch.float64


def test_non_float_inputs_still_refused(mlp_digits):
    with pytest.raises(InputError, match="floating"):
        gr.deepfool(mlp_digits, torch.zeros(2, 1, 8, 8, dtype=torch.int64))


# ---- 3. probabilities -----------------------------------------------------------------------------------
def _softmax_model(clf: Classifier, **kw) -> Classifier:
    return Classifier(nn.Sequential(clf.module, nn.Softmax(dim=1)), bounds=clf.bounds, name="softmaxed",
                      input_shape=clf.input_shape, **kw).eval()


def test_probability_outputs_warned_everywhere(mlp_digits, digits_test, tmp_path, caplog):
    x, y = digits_test
    x, y = x[:20], y[:20]
    sm = _softmax_model(mlp_digits)
    with caplog.at_level(logging.WARNING, logger="georobust.checks"):
        r = gr.deepfool(sm, x)
    assert any("look like probabilities" in rec.getMessage() and rec.levelno == logging.WARNING
               for rec in caplog.records)
    assert len(r.warnings) == 1 and "logits='log'" in r.warnings[0]
    assert r.summary()["warnings"] == r.warnings
    r.save(tmp_path / "res")
    assert gr.AttackResult.load(tmp_path / "res").warnings == r.warnings
    assert json.loads((tmp_path / "res.json").read_text())["fields"]["warnings"] == r.warnings
    # every attack made with it carries the warning; a logits model carries none
    assert gr.pgd(sm, x, y, eps=0.1, steps=2).warnings == r.warnings
    assert gr.fgsm(sm, x, y, eps=0.1).warnings == r.warnings
    clean = gr.deepfool(mlp_digits, x)
    assert clean.warnings == [] and "warnings" not in clean.summary()
    # log-probabilities are logits up to a constant: not flagged
    lsm = Classifier(nn.Sequential(mlp_digits.module, nn.LogSoftmax(dim=1)), name="logsoftmax").eval()
    assert gr.deepfool(lsm, x).warnings == []

    from georobust.evaluation.suite import evaluate, save_evaluation

    ev, res = evaluate(sm, x, y, attacks=["deepfool"], norm="2", eps=[0.5])
    assert ev.warnings == r.warnings
    save_evaluation(ev, res, tmp_path / "ev")
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["warnings"] == r.warnings
    ev_ok, _ = evaluate(mlp_digits, x, y, attacks=["deepfool"], norm="2", eps=[0.5])
    assert ev_ok.warnings == []


def test_logits_log_option_validated_and_loaded(mlp_digits):
    with pytest.raises(ModelError, match="logits must be None"):
        Classifier(mlp_digits.module, logits="softmax")
    with pytest.raises(ModelError, match="logits must be None"):
        gr.load_model("zoo:mlp-digits", logits="exp")
    assert gr.load_model("zoo:mlp-digits", logits="log").logits == "log"
    assert gr.load_model("zoo:mlp-digits").logits is None
    # probabilities that underflowed to 0 give a finite log (clamped at the smallest normal float)
    clf = Classifier(nn.Identity(), logits="log").eval()
    out = clf(torch.tensor([[1.0, 0.0]]))
    assert torch.isfinite(out).all() and out[0, 1] == math.log(torch.finfo(torch.float32).tiny)


@needs_fmnist
def test_softmax_lenet_fixed_by_logits_log(lenet):
    """The issue's case: lenet-fmnist with a Softmax appended. DeepFool on it is silently wrong (a median L2
    ~25x too large) — now warned about; with ``logits="log"`` the classifier returns
    ``log softmax(z) = z − logsumexp(z)``, whose logit *differences* equal the plain model's, so DeepFool
    takes the same steps: the results agree up to float32 round-off. That round-off is ``O(S·eps)`` in each
    logit difference (``S`` ≤ ~70 the logit spread here, eps = 1.2e-7), i.e. ~1e-5 absolute against
    differences of order 1 and gradients of norm ~10: about 1e-6 of ‖r‖ per step. 1e-4 relative leaves a
    margin of ~100x (measured: 2e-6 at worst per sample)."""
    x, _ = data.load("fashion-mnist", "test", limit=100)
    plain = gr.deepfool(lenet, x)
    sm = gr.deepfool(_softmax_model(lenet), x)
    fixed = gr.deepfool(_softmax_model(lenet, logits="log"), x)
    assert sm.warnings and not plain.warnings and not fixed.warnings
    m_plain, m_sm, m_fixed = (float(r.l2.median()) for r in (plain, sm, fixed))
    assert m_sm > 5 * m_plain  # the silent failure the warning is about
    assert abs(m_fixed - m_plain) <= 1e-4 * m_plain
    assert bool(fixed.success.all()) and bool(plain.success.all())


# ---- 4. counts and sizes --------------------------------------------------------------------------------
@pytest.mark.parametrize("attack, opts", [
    ("pgd", {"eps": 0.1, "steps": 0}),
    ("pgd", {"eps": 0.1, "restarts": 0}),
    ("deepfool", {"max_iter": 0}),
    ("fgsm", {"search_steps": 0}),
    ("lbfgs", {"max_iter": 0}),
    ("lbfgs", {"search_steps": 0}),
    ("sparsefool", {"max_iter": 0}),
    ("sparsefool", {"deepfool_iter": 0}),
    ("hopskipjump", {"max_evals": 0}),
    ("universal", {"max_passes": 0, "xi": 0.1}),
    ("universal", {"max_iter": 0, "xi": 0.1}),
])
def test_zero_iterations_refused_before_any_work(mlp_digits, digits_test, attack, opts):
    """One rule: every iteration count of an attack is an integer >= 1."""
    x, _ = digits_test
    clf, c = _counted(mlp_digits)
    fn = {"universal": gr.attacks.universal.universal_perturbation}.get(attack) or getattr(gr, attack)
    with pytest.raises(OptionError, match=next(iter(k for k in opts if k not in ("eps", "xi")))):
        fn(clf, x[:4], **opts)
    assert c.calls == 0


def test_curvature_sizes_beyond_the_dimension_refused(mlp_digits, digits_test):
    from georobust.geometry import boundary_curvature, curvature_profile, hessian_eigs
    from georobust.geometry.hessian import loss_fn

    x, y = digits_test
    clf, c = _counted(mlp_digits)
    with pytest.raises(OptionError, match="k = 10000 exceeds the input dimension d = 64"):
        curvature_profile(clf, x[:2], k=10000)
    with pytest.raises(OptionError, match="k = 64 exceeds .* d − 1 = 63"):
        boundary_curvature(clf, x[:2], k=64)
    assert c.calls <= 4  # validation only: per call, the probe pass and the clean prediction
    with pytest.raises(OptionError, match="k = 65 eigenpairs .* dimension 64"):
        hessian_eigs(loss_fn(mlp_digits, y[:2]), x[:2], k=65)
    assert curvature_profile(mlp_digits, x[:2], y[:2], k=64).k == 64  # the largest possible k is kept


def test_normal_spectrum_dims_beyond_the_normals_refused(mlp_digits, digits_test):
    from georobust.geometry import normal_spectrum

    x, _ = digits_test
    clf, c = _counted(mlp_digits)
    with pytest.raises(OptionError, match=r"dims \[50\] exceed min\(N, d\) = 20"):
        normal_spectrum(clf, x[:20], dims=(1, 50))
    with pytest.raises(OptionError, match="each of dims"):
        normal_spectrum(clf, x[:20], dims=(0, 5))
    with pytest.raises(OptionError, match="dims is empty"):
        normal_spectrum(clf, x[:20], dims=())
    assert c.calls == 0
    ns = normal_spectrum(mlp_digits, x[:20], dims=(1, 20), seed=0)
    assert ns.dims == [1, 20] or ns.n_normals < 20


def test_universal_geometry_sizes_refused(mlp_digits, digits_test):
    from georobust.geometry import universal_geometry

    x, _ = digits_test
    with pytest.raises(OptionError, match="m_flat = 30 exceeds min"):
        universal_geometry(mlp_digits, x[:10], xi=1.0, m_flat=30)
    with pytest.raises(OptionError, match="m_curved = 65 exceeds the input dimension d = 64"):
        universal_geometry(mlp_digits, x[:100], xi=1.0, m_curved=65)


# ---- 5. data options ------------------------------------------------------------------------------------
def _png_folder(root, mode: str, shape=(10, 12)):
    from PIL import Image

    g = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            a = (g.random(shape + ((3,) if mode == "RGB" else ())) * 255).astype(np.uint8)
            im = Image.fromarray(a, "RGB" if mode == "RGB" else "L")
            if mode == "P":
                im = im.convert("P")  # palette of greys
            im.save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize("mode, channels", [("L", 1), ("P", 1), ("RGB", 3)])
def test_folder_channels_inferred(tmp_path, mode, channels):
    root = _png_folder(tmp_path, mode)
    x, y = data.load("folder", root=str(root))
    assert tuple(x.shape) == (4, channels, 10, 12) and y.tolist() == [0, 0, 1, 1]
    x3, _ = data.load("folder", root=root, channels=3)
    assert x3.shape[1] == 3
    if channels == 1:
        assert torch.equal(x3[:, 0], x[:, 0]) and torch.equal(x3[:, 2], x[:, 0])


def test_folder_size_and_string_options(tmp_path):
    root = _png_folder(tmp_path, "L")
    assert tuple(data.load("folder", root=root, size=16)[0].shape) == (4, 1, 16, 16)  # int: square
    assert tuple(data.load("folder", root=root, size=(6, 8))[0].shape) == (4, 1, 6, 8)
    # the CLI's -D key=value gives strings
    x, _ = data.load("folder", root=str(root), size="6x8", channels="3")
    assert tuple(x.shape) == (4, 3, 6, 8)
    assert data.info("folder", root=str(root)).classes == ["cat", "dog"]
    for bad, match in [({"size": "big"}, "image size"), ({"size": 0}, "image size"), ({"channels": 2}, "1 .* or 3"),
                       ({"chanels": 1}, "Did you mean 'channels'.*Known: channels, root, size")]:
        with pytest.raises(OptionError, match=match):
            data.load("folder", root=root, **bad)
    with pytest.raises(OptionError, match="needs root"):
        data.load("folder", size=16)  # was a TypeError


@pytest.mark.parametrize("name", ["digits", "fashion-mnist", "spheres", "folder"])
def test_every_data_set_validates_its_options(name):
    with pytest.raises(OptionError, match="unknown option of data set"):
        data.load(name, bogus="1")
    assert data.check_options(name, {}) == {}


def test_spheres_options_from_strings():
    x, y = data.load("spheres", dim="6", n="10", r_outer="1.5", seed="1")
    assert tuple(x.shape) == (10, 6)
    assert torch.equal(x, data.load("spheres", dim=6, n=10, r_outer=1.5, seed=1)[0])
    with pytest.raises(OptionError, match="dim must be an integer"):
        data.load("spheres", dim="six")


# ---- 6. factory models from the current folder ----------------------------------------------------------
def test_factory_from_the_current_folder(tmp_path, monkeypatch):
    mod = "h2_inputs_factory_models"
    (tmp_path / f"{mod}.py").write_text(
        "import torch\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    before = list(sys.path)
    try:
        clf = gr.load_model(f"{mod}:make")
        assert clf(torch.rand(2, 4)).shape == (2, 3) and not clf.training
        assert sys.path == before  # the folder was on the path for that import only
        with pytest.raises(ModelError, match="has no attribute 'nothere'"):
            gr.load_model(f"{mod}:nothere")
        with pytest.raises(ModelError, match=r"no module 'h2_missing_models' in the current folder .*PYTHONPATH"):
            gr.load_model("h2_missing_models:make")
    finally:
        sys.modules.pop(mod, None)


def test_cli_factory_from_the_current_folder(tmp_path):
    """``georobust attack deepfool --model mymodels:make`` run in the folder that holds ``mymodels.py``, with no
    PYTHONPATH: the model is found (it used to need ``PYTHONPATH=.``)."""
    import os
    import subprocess

    (tmp_path / "h2_cli_models.py").write_text(
        "import torch\n\ndef make():\n    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", COLUMNS="200")
    cmd = [sys.executable, "-m", "georobust.cli", "attack", "deepfool", "--data", "digits", "--limit", "4"]
    p = subprocess.run(cmd + ["--model", "h2_cli_models:make"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    bad = subprocess.run(cmd + ["--model", "h2_no_such_models:make"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "current folder" in bad.stderr and "Traceback" not in bad.stderr


def test_subspace_ratio_below_one_dimension_refused(mlp_digits, digits_test):
    """A ratio whose m = ratio·d rounds to 0 used to be lifted to m = 1 silently (and reported as the ratio)."""
    from georobust.geometry import subspace_robustness

    x, _ = digits_test
    clf, c = _counted(mlp_digits)
    with pytest.raises(OptionError, match=r"subspace ratio 0\.001 gives m = 0\.064 < 1 dimension on inputs of d = 64"):
        subspace_robustness(clf, x[:3], ratios=(0.25, 0.001))
    assert c.calls <= 2  # validation only: the probe pass and the clean prediction


def test_fit_refuses_other_shapes_and_converts_dtypes(digits_test):
    """fit validates like the attacks: a data set of another shape is refused before training (``train --init
    zoo:mlp-digits`` on 28×28 data), and float64 data is converted to the model's float32."""
    from georobust.defenses import fit

    model = gr.pretrained("mlp-digits")
    model.train()
    y = torch.zeros(8, dtype=torch.long)
    with pytest.raises(InputError, match=r"\(N, 1, 8, 8\).*\(8, 1, 28, 28\)"):
        fit(model, (torch.rand(8, 1, 28, 28), y), epochs=1)
    with pytest.raises(InputError, match="eval_data x"):
        fit(model, (digits_test[0][:8], y), epochs=1, eval_data=(torch.rand(8, 1, 28, 28), y))
    before = [p.detach().clone() for p in model.parameters()]
    hist = fit(model, (digits_test[0][:8].double(), digits_test[1][:8]), epochs=1, batch_size=8)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert hist.last["epoch"] == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
