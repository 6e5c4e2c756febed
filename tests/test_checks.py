"""Validation: every bad input is refused with a georobust error before any work."""

from __future__ import annotations

import pytest
import torch
from conftest import make_affine
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from georobust import Classifier, fgsm
from georobust.checks import BOUNDS_TOL, check_labels, check_model, check_norm, check_x, prepare
from georobust.errors import InputError, ModelError, OptionError


def test_wrong_type_dtype_rank_empty():
    with pytest.raises(InputError, match="torch.Tensor"):
        check_x([[0.1, 0.2]])
    with pytest.raises(InputError, match="floating"):
        check_x(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(InputError, match="batch"):
        check_x(torch.zeros(3))
    with pytest.raises(InputError, match="empty"):
        check_x(torch.zeros(0, 3))


def test_nan_inf_rejected():
    x = torch.rand(4, 5)
    x[2, 1] = float("nan")
    with pytest.raises(InputError, match="NaN or inf in 1 sample"):
        check_x(x)
    x[2, 1] = float("inf")
    with pytest.raises(InputError, match="NaN or inf"):
        check_x(x)


def test_bounds_roundoff_tolerated_real_violation_rejected():
    x = torch.rand(4, 5)
    x[0, 0] = 1.0 + BOUNDS_TOL / 2
    x[1, 1] = -BOUNDS_TOL / 2
    out = check_x(x)
    assert float(out.max()) == 1.0 and float(out.min()) == 0.0
    x[0, 0] = 1.01
    with pytest.raises(InputError, match="outside the model's bounds"):
        check_x(x)
    # normalised inputs (a common mistake) are caught
    with pytest.raises(InputError, match="mean/std"):
        check_x((torch.rand(4, 5) - 0.5) / 0.2)


def test_labels():
    with pytest.raises(InputError, match="integer"):
        check_labels(torch.zeros(3), 3, 10)
    with pytest.raises(InputError, match="match"):
        check_labels(torch.zeros(2, dtype=torch.long), 3, 10)
    with pytest.raises(InputError, match=r"outside \[0, 10\)"):
        check_labels(torch.tensor([0, 10, 1]), 3, 10)
    with pytest.raises(InputError, match="outside"):
        check_labels(torch.tensor([0, -1, 1]), 3, 10)
    with pytest.raises(InputError, match=r"shape \(N,\)"):
        check_labels(torch.zeros(3, 1, dtype=torch.long), 3, 10)
    assert check_labels(torch.tensor([1, 2], dtype=torch.int32), 2, 10).dtype == torch.int64


def test_model_training_mode_refused():
    m = make_affine()
    m.train()
    with pytest.raises(ModelError, match="training mode"):
        check_model(m, torch.rand(2, 20))
    m.eval()
    clf, k = check_model(m, torch.rand(2, 20))
    assert k == 5 and clf is m


def test_model_output_shape_and_softmax_count():
    class Bad(nn.Module):
        def forward(self, x):
            return x.sum(1)

    with pytest.raises(ModelError, match=r"logits of shape \(N, K\)"):
        check_model(Bad().eval(), torch.rand(3, 4))

    class One(nn.Module):
        def forward(self, x):
            return x[:, :1]

    with pytest.raises(ModelError, match="K >= 2"):
        check_model(One().eval(), torch.rand(3, 4))
    with pytest.raises(ModelError, match="nn.Module"):
        check_model(lambda x: x, torch.rand(3, 4))


def test_nan_logits_refused():
    class NaNNet(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3), float("nan"))

    with pytest.raises(ModelError, match="NaN"):
        check_model(NaNNet().eval(), torch.rand(2, 4))


def test_norm_and_options():
    assert check_norm(2) == "2" and check_norm("l2") == "2" and check_norm(float("inf")) == "inf"
    assert check_norm("Linf") == "inf"
    with pytest.raises(OptionError, match="not supported"):
        check_norm(3)
    clf = make_affine()
    with pytest.raises(OptionError, match="eps must be"):
        fgsm(clf, torch.rand(2, 20), eps=-1.0)


def test_bounds_declared_by_classifier():
    m = Classifier(make_affine().module, bounds=(-1, 1)).eval()
    x = torch.rand(3, 20) * 2 - 1
    p = prepare(m, x)
    y, k, pred = p.y, p.num_classes, p.pred
    assert torch.equal(y, pred) and k == 5
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        prepare(m, x * 3)


@settings(max_examples=40, deadline=None)
@given(st.floats(-3, 3), st.floats(-3, 3))
def test_check_x_property(a, b):
    """Either the input is accepted and the result lies inside the bounds, or an InputError is raised."""
    x = torch.tensor([[a, b]], dtype=torch.float32)
    try:
        out = check_x(x)
    except InputError:
        assert min(a, b) < -BOUNDS_TOL or max(a, b) > 1 + BOUNDS_TOL
    else:
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
