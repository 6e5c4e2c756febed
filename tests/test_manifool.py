"""ManiFool (Kanbak, Moosavi-Dezfooli & Frossard, CVPR 2018): the analytic centre-of-mass case, verified
results on a shipped model, the back-off, analytic vs numerical Jacobian, and bad input refused before work."""

import math

import pytest
import torch
from conftest import needs_fmnist
from torch import nn

from georobust import Classifier, registry
from georobust.attacks.manifool import invariance_score, manifool
from georobust.core import transforms as T
from georobust.errors import InputError, OptionError


class CentreOfMass(nn.Module):
    """Two classes decided by the horizontal centre of mass ``c`` (centred pixels) of the image alone:
    class 1 iff ``c > a``. A translation by ``(tx, ty)`` of an image that stays inside the frame moves ``c`` by
    exactly ``tx`` (bilinear interpolation preserves mass and first moment), rotations about the centre move
    a centred blob's ``c`` not at all: the minimal fooling transformation is the translation ``(a − c₀, 0)``."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        w = x.shape[-1]
        xs = torch.arange(w, dtype=x.dtype, device=x.device) - (w - 1) / 2
        c = (x.sum((1, 2)) * xs).sum(1) / x.sum((1, 2, 3))
        return torch.stack([self.a - c, c - self.a], 1) * 4


def blobs(centres, size=28, sigma=2.5):
    p = T.pixel_coordinates(size, size, dtype=torch.float32)
    return torch.stack([torch.exp(-((p[..., 0] - cx) ** 2 + (p[..., 1] - cy) ** 2) / (2 * sigma ** 2))
                        for cx, cy in centres])[:, None]


def com_model(a=3.0):
    return Classifier(CentreOfMass(a), bounds=(0.0, 1.0), input_shape=(1, 28, 28)).eval()


@pytest.mark.parametrize("transform", ["translation", "rotation-translation", "similarity"])
def test_centre_of_mass_minimal_translation(transform):
    a = 3.0
    if transform == "translation":
        centres = [(0.0, 0.0), (0.0, 1.5), (-1.0, -2.0), (0.5, 0.0)]
    else:
        # a rotation about the centre moves an off-centre round blob almost as a translation does (at the same
        # image cost per unit of c), so (tx, angle) would not be identifiable: blobs on the horizontal axis
        centres = [(0.0, 0.0), (-1.0, 0.0), (0.5, 0.0)]
    x = blobs(centres)
    res = manifool(com_model(a), x, transform=transform)
    assert res.success.all()
    names = res.params["parameter_names"]
    assert names[:2] == ["tx", "ty"]
    for i, (cx, cy) in enumerate(centres):
        theta = res.params["theta"][i]
        need = a - cx
        if transform == "translation":
            # the fooling translation is within 10% of the analytic minimal one, (a − c₀, 0)
            assert need * (1 - 1e-3) <= theta[0] <= 1.1 * need, (transform, i, theta)
            assert abs(theta[1]) < 0.1 * need
        # where the transformation moves the blob's centre: the effective translation of the blob, at least to
        # the boundary (fooled) and at most 10% past it, and not up or down. (A round blob is invariant under a
        # rotation about its own centre, so for the sets with a rotation θ itself is not unique: the blob's
        # motion is.)
        moved = T.matrix(transform, torch.tensor([theta], dtype=torch.float64))[0] @ torch.tensor(
            [cx, cy, 1.0], dtype=torch.float64)
        assert need * (1 - 1e-3) <= float(moved[0]) - cx <= 1.1 * need, (transform, i, theta)
        assert abs(float(moved[1]) - cy) < 0.1 * need
    # the size is the geodesic distance along the straight path of the reported θ
    th = torch.tensor(res.params["theta"], dtype=torch.float64)
    gd = T.geodesic_distance(x.double(), transform, th)
    assert torch.allclose(res.size.double(), gd, rtol=1e-6)
    # and it is within 10% of the geodesic distance of the analytic minimal translation
    tmin = torch.tensor([[a - cx, 0.0] for cx, _ in centres], dtype=torch.float64)
    dmin = T.geodesic_distance(x.double(), "translation", tmin)
    assert torch.all(res.size.double() >= dmin * (1 - 1e-3)) and torch.all(res.size.double() <= 1.1 * dmin)


def test_numerical_jacobian_agrees_with_analytic():
    x = blobs([(0.0, 0.0), (-1.0, 0.0)])
    clf = com_model(2.0)
    ra = manifool(clf, x, transform="rotation-translation")
    rn = manifool(clf, x, transform="rotation-translation", jacobian="numerical")
    assert ra.success.all() and rn.success.all()
    for ta, tn in zip(ra.params["theta"], rn.params["theta"]):
        assert math.isclose(ta[0], tn[0], rel_tol=0.02)
    assert torch.allclose(ra.size, rn.size, rtol=0.02)


def test_registered_spatial_and_robust_accuracy():
    entry = registry.attacks.get("manifool")
    assert entry.threat == "spatial"
    x = blobs([(0.0, 0.0), (1.0, 0.0)])
    res = manifool(com_model(3.0), x, y=torch.tensor([0, 0]), transform="translation")
    assert res.threat == "spatial"
    s = res.size.double()
    ra = res.robust_accuracy([0.0, float(s.min()) - 1e-6, float(s.max()) + 1e-6])
    assert ra == [1.0, 1.0, 0.0]
    assert math.isclose(invariance_score(res), float(s.mean()), rel_tol=1e-12)


def test_misclassified_clean_input_has_size_zero_and_is_left_out_of_the_score():
    x = blobs([(0.0, 0.0), (4.0, 0.0)])          # the second is already class 1
    res = manifool(com_model(3.0), x, y=torch.tensor([0, 0]), transform="translation")
    assert res.success.all()
    assert float(res.size[1]) == 0.0 and float(res.size[0]) > 0
    assert math.isclose(invariance_score(res), float(res.size[0]))


@needs_fmnist
@pytest.mark.slow
def test_verified_on_lenet_and_backoff_shrinks():
    from georobust import data, pretrained

    x, y = data.load("fashion-mnist", "test")
    x, y = x[:8], y[:8]
    clf = pretrained("lenet-fmnist")
    res = manifool(clf, x, y, transform="rotation-translation", candidates=2)
    assert res.success.float().mean() >= 0.75
    ok = res.success.nonzero().flatten().tolist()
    with torch.no_grad():
        adv_pred = clf(res.x_adv).argmax(1)
    assert torch.equal(adv_pred != res.y, res.success)   # verified: re-run agrees
    for i in ok:
        th = torch.tensor([res.params["theta"][i]], dtype=torch.float64)
        # the adversarial image is the original transformed by exp(θ) (logm round-off only)
        assert (T.transform(x[i:i + 1].double(), "rotation-translation", th).float() - res.x_adv[i:i + 1]).abs().max() < 1e-4
    # the back-off only shortens the same path: with it every size is at most the size without it
    res0 = manifool(clf, x, y, transform="rotation-translation", candidates=2, backoff_steps=0)
    both = res.success & res0.success
    assert both.any()
    assert torch.all(res.size[both] <= res0.size[both] * (1 + 1e-6))
    assert 0 < invariance_score(res) < invariance_score(res0)


def test_bad_input_refused_before_any_work():
    inner = CentreOfMass(3.0)
    clf = Classifier(inner, bounds=(0.0, 1.0)).eval()
    x = blobs([(0.0, 0.0)])
    cases = [
        (OptionError, "transformation set", dict(transform="shear")),
        (OptionError, "padding", dict(padding="constant")),
        (OptionError, "Jacobian method", dict(jacobian="exact")),
        (OptionError, "momentum", dict(momentum=1.0)),
        (OptionError, "momentum", dict(momentum=-0.1)),
        (OptionError, "max_iter", dict(max_iter=0)),
        (OptionError, "candidates", dict(candidates=0)),
        (OptionError, "step", dict(step=0.0)),
    ]
    for exc, msg, kw in cases:
        with pytest.raises(exc, match=msg):
            manifool(clf, x, **kw)
    with pytest.raises(InputError, match="flat"):
        manifool(clf, x.flatten(1))
    nan = x.clone()
    nan[0, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        manifool(clf, nan)
    assert inner.calls == 0
    with pytest.raises(InputError):   # labels are checked against the number of classes: one probe pass
        manifool(clf, x, y=torch.tensor([5]))


def test_unfoolable_sample_fails_and_result_roundtrips(tmp_path):
    from georobust.results import AttackResult

    # a rotation about the centre leaves a centred blob's centre of mass where it is: it cannot be fooled; an
    # off-centre blob (c₀ = −9) is fooled by turning its centre past c = 3 (about 110°)
    x = blobs([(0.0, 0.0), (-9.0, 0.0)])
    res = manifool(com_model(3.0), x, transform="rotation", max_iter=40)
    assert res.success.tolist() == [False, True]
    assert math.isinf(float(res.size[0])) and res.params["theta"][0] is None
    angle = res.params["theta"][1][0]
    moved = -9.0 * math.cos(angle)        # the x-coordinate of the blob's centre after the rotation
    assert 3.0 * (1 - 1e-3) <= moved <= 3.3
    back = AttackResult.load(res.save(tmp_path / "mf"))
    assert back.threat == "spatial" and torch.equal(back.size, res.size) and back.params["theta"] == res.params["theta"]
