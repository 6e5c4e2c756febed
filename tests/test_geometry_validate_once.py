"""Public geometry functions validate each input set once and hand the validated pieces to trusting internals
(the deepfool/deepfool_batch split); every registered analysis presents its result through the same
summary()/table()/plot_data() contract the CLI relies on."""

from __future__ import annotations

import importlib
import numbers
import pkgutil

import pytest
import torch
from torch import nn

import georobust.checks as checks
import georobust.geometry as geometry
from georobust import Classifier, plots, registry
from georobust.geometry import (
    boundary_curvature,
    boundary_normals,
    cross_section,
    curvature_profile,
    noise_robustness,
    normal_spectrum,
    subspace_robustness,
    universal_geometry,
)
from georobust.geometry.normals import boundary_points
from georobust.geometry.subspace import subspace_deepfool

D, K = 16, 4


def _model() -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 24), nn.ReLU(), nn.Linear(24, K))
    return Classifier(net, bounds=(0.0, 1.0), name="toy").eval()


def _data(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, D, generator=g)


@pytest.fixture
def toy():
    return _model(), _data(12, 1), _data(10, 2)


class Counter:
    """Counts calls of ``checks.prepare`` (by the identity of the ``x`` given) and prediction passes (forward
    without autograd) of the model on exactly one clean batch."""

    def __init__(self, monkeypatch, model: nn.Module, batches: dict[str, torch.Tensor]):
        self.batches = batches
        self.prepared: list[str] = []
        self.forwards = dict.fromkeys(batches, 0)
        real = checks.prepare

        def counting_prepare(m, x, *args, **kw):
            self.prepared.append(next((k for k, b in batches.items() if b is x), "other"))
            return real(m, x, *args, **kw)

        # every geometry module that looks ``prepare`` up by name, and the module attribute itself
        for info in pkgutil.iter_modules(geometry.__path__):
            mod = importlib.import_module(f"{geometry.__name__}.{info.name}")
            if getattr(mod, "prepare", None) is real:
                monkeypatch.setattr(mod, "prepare", counting_prepare)
        monkeypatch.setattr(checks, "prepare", counting_prepare)
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            return  # a gradient or Hessian-vector product, not a prediction pass
        z = inputs[0]
        for k, b in self.batches.items():
            if z.shape == b.shape and torch.equal(z.detach(), b):
                self.forwards[k] += 1


def _count(monkeypatch, model, batches, fn):
    c = Counter(monkeypatch, model, batches)
    try:
        fn()
    finally:
        c.handle.remove()
    return c


# (name, call, prediction passes on x, on x_eval): the passes are prepare's one prediction plus one DeepFool
# start (its first logits) per DeepFool run on the clean batch; x_eval is predicted once, by prepare
CASES = [
    ("boundary_points", lambda m, x, xe: boundary_points(m, x), 2, None),
    ("boundary_normals", lambda m, x, xe: boundary_normals(m, x), 2, None),
    ("cross_section", lambda m, x, xe: cross_section(m, x, resolution=9), 2, None),
    # the curvature direction's own boundary points: one more DeepFool run
    ("cross_section_curvature", lambda m, x, xe: cross_section(m, x, resolution=9, second="curvature"), 3, None),
    ("curvature_profile", lambda m, x, xe: curvature_profile(m, x, k=2, steps=8), 1, None),
    ("boundary_curvature", lambda m, x, xe: boundary_curvature(m, x, k=2, steps=8), 2, None),
    # the boundary points are those of the smoothed copy (a deep copy: its passes are not the model's)
    ("boundary_curvature_softplus", lambda m, x, xe: boundary_curvature(m, x, k=2, steps=8, softplus_beta=5.0),
     1, None),
    ("subspace_deepfool", lambda m, x, xe: subspace_deepfool(m, x, m=4), 2, None),
    # DeepFool in the full space, then once per ratio
    ("subspace_robustness", lambda m, x, xe: subspace_robustness(m, x, ratios=(0.5, 0.25)), 4, None),
    ("noise_robustness", lambda m, x, xe: noise_robustness(m, x, grid=8, bisection=4), 1, None),
    ("normal_spectrum", lambda m, x, xe: normal_spectrum(m, x, dims=(1, 2)), 2, None),
    ("normal_spectrum_eval", lambda m, x, xe: normal_spectrum(m, x, x_eval=xe, dims=(1, 2)), 2, 1),
    ("universal_geometry", lambda m, x, xe: universal_geometry(m, x, xi=1.0, m_flat=2, m_curved=2,
                                                               lanczos_steps=8), 2, None),
    ("universal_geometry_eval", lambda m, x, xe: universal_geometry(m, x, x_eval=xe, xi=1.0, m_flat=2, m_curved=2,
                                                                    lanczos_steps=8), 2, 1),
]


@pytest.mark.parametrize("name,call,passes_x,passes_eval", CASES, ids=[c[0] for c in CASES])
def test_each_input_set_is_validated_once(monkeypatch, toy, name, call, passes_x, passes_eval):
    model, x, xe = toy
    batches = {"x": x} if passes_eval is None else {"x": x, "x_eval": xe}
    c = _count(monkeypatch, model, batches, lambda: call(model, x, xe))
    assert sorted(c.prepared) == sorted(batches), f"{name}: prepare called on {c.prepared}"
    assert c.forwards["x"] == passes_x, f"{name}: {c.forwards['x']} prediction passes on x"
    if passes_eval is not None:
        assert c.forwards["x_eval"] == passes_eval, f"{name}: {c.forwards['x_eval']} prediction passes on x_eval"


def test_the_counter_sees_a_repeated_validation(monkeypatch, toy):
    """The counter itself: a public function called twice is two validations and two prediction passes."""
    model, x, _ = toy
    c = _count(monkeypatch, model, {"x": x}, lambda: (noise_robustness(model, x, grid=4, bisection=1),
                                                       noise_robustness(model, x, grid=4, bisection=1)))
    assert c.prepared == ["x", "x"] and c.forwards["x"] == 2


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (numbers.Number, str))


ANALYSES = {
    "cross-section": dict(resolution=9),
    "curvature-profile": dict(k=2, steps=8),
    "curvature": dict(k=2, steps=8),
    "subspace": dict(ratios=(0.5, 0.25)),
    "random-noise": dict(grid=8, bisection=4),
    "normals": dict(dims=(1, 2)),
    "universal-geometry": dict(xi=1.0, m_flat=2, m_curved=2, lanczos_steps=8),
    "linearity": dict(max_iter=5),
    "saliency": dict(steps=3),
}


def test_every_analysis_is_covered():
    assert sorted(ANALYSES) == registry.analyses.names()


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_registered_analysis_presents_itself(tmp_path, toy, name):
    """The CLI's contract: ``summary()`` scalars, ``table()`` rows of strings (header first), and the figure
    ``getattr(plots, entry.extra["plot"])(result.plot_data(label), path)``."""
    model, x, _ = toy
    entry = registry.analyses.get(name)
    assert entry.summary and "plot" in entry.extra and "plot_file" in entry.extra
    res = entry.fn(model, x, **ANALYSES[name])
    s = res.summary()
    assert s and all(isinstance(k, str) and _is_scalar(v) for k, v in s.items()), s
    rows = res.table()
    assert len(rows) >= 2 and all(isinstance(c, str) for r in rows for c in r)
    assert all(len(r) == len(rows[0]) for r in rows), rows
    again = type(res).load(res.save(tmp_path / name))  # the summary is saved with the result
    assert again.table() == rows
    if entry.extra["plot"] is None:
        assert entry.extra["plot_file"] is None
        return
    fn = getattr(plots, entry.extra["plot"])
    path = fn(res.plot_data("toy"), tmp_path / entry.extra["plot_file"])
    assert path.exists() and path.stat().st_size > 0
