"""Result dataclasses. Each saves itself as ``<path>.json`` (scalars, parameters, summary) beside
``<path>.safetensors`` (tensors), and loads back without unpickling anything."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .checks import check_norm
from .errors import InputError

_TENSOR = "tensor"


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    return stem.with_suffix(".json"), stem.with_suffix(".safetensors")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(a) for a in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(a) for k, a in v.items()}
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return v


class _Saveable:
    """save/load for dataclasses whose tensor fields go to safetensors and the rest to JSON."""

    def save(self, path: str | Path) -> Path:
        jpath, tpath = _paths(path)
        jpath.parent.mkdir(parents=True, exist_ok=True)
        tensors, meta = {}, {"type": type(self).__name__, "fields": {}}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                tensors[f.name] = v.detach().cpu().contiguous()
                meta["fields"][f.name] = _TENSOR
            else:
                meta["fields"][f.name] = _jsonable(v)
        if hasattr(self, "summary"):
            meta["summary"] = _jsonable(self.summary())
        save_file(tensors, str(tpath))
        jpath.write_text(json.dumps(meta, indent=2))
        return jpath

    @classmethod
    def load(cls, path: str | Path):
        jpath, tpath = _paths(path)
        meta = json.loads(jpath.read_text())
        if meta.get("type") != cls.__name__:
            raise InputError(f"{jpath} holds a {meta.get('type')}, not a {cls.__name__}")
        tensors = load_file(str(tpath)) if tpath.exists() else {}
        kw = {}
        for name, v in meta["fields"].items():
            kw[name] = tensors[name] if v == _TENSOR else v
        return cls(**kw)


@dataclass
class AttackResult(_Saveable):
    """What an attack returns.

    ``success`` is *verified*: it is recomputed by running the model on ``x_adv`` (``label_adv``), never
    taken from the attack's own bookkeeping. For an untargeted attack success means
    ``label_adv != y``; for a targeted one ``label_adv == target``. A sample the model already
    misclassifies counts as a success with a zero perturbation. Failed samples stay in the result
    (``x_adv`` is then the attack's last iterate, or ``x``) and count as robust.
    """

    attack: str
    x: torch.Tensor
    x_adv: torch.Tensor
    y: torch.Tensor
    label_clean: torch.Tensor
    label_adv: torch.Tensor
    success: torch.Tensor
    iterations: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    target: torch.Tensor | None = None
    elapsed: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    minimal: bool = False  # minimal-perturbation attack: its norms give a whole robustness curve
    # black-box attacks: (N, C) best L2 norm within params["checkpoints"][c] queries (inf: none found yet)
    history: torch.Tensor | None = None

    # ---- derived quantities -------------------------------------------------------------------------
    @property
    def perturbation(self) -> torch.Tensor:
        return self.x_adv - self.x

    def norms(self, norm: Any = 2) -> torch.Tensor:
        """Per-sample norm of the perturbation (``0``, ``1``, ``2`` or ``inf``)."""
        n = check_norm(norm, ("0", "1", "2", "inf"))
        r = self.perturbation.flatten(1).double()
        if n == "0":
            return (r != 0).sum(1).double()
        if n == "1":
            return r.abs().sum(1)
        if n == "2":
            return r.norm(dim=1)
        return r.abs().amax(1)

    @property
    def l0(self) -> torch.Tensor:
        return self.norms(0)

    @property
    def l1(self) -> torch.Tensor:
        return self.norms(1)

    @property
    def l2(self) -> torch.Tensor:
        return self.norms(2)

    @property
    def linf(self) -> torch.Tensor:
        return self.norms("inf")

    @property
    def rho(self) -> torch.Tensor:
        """Per-sample ``‖r‖₂ / ‖x‖₂`` (DeepFool's ρ_adv is its mean over successful samples)."""
        return self.l2 / self.x.flatten(1).double().norm(dim=1).clamp_min(1e-12)

    @property
    def rho_inf(self) -> torch.Tensor:
        return self.linf / self.x.flatten(1).double().abs().amax(1).clamp_min(1e-12)

    @property
    def success_rate(self) -> float:
        return float(self.success.double().mean())

    def robust_accuracy(self, eps_list, norm: Any = 2) -> list[float]:
        """Fraction of samples that are correctly classified and not fooled within ``eps`` in ``norm``.

        For a minimal-perturbation attack one run gives the whole curve. A failed sample counts as
        robust at every eps, so the curve is an upper bound on the true robust accuracy.
        """
        nrm = self.norms(norm)
        correct = self.label_clean == self.y
        out = []
        for eps in eps_list:
            fooled = self.success & (nrm <= float(eps) + 1e-7) | ~correct
            out.append(float((~fooled).double().mean()))
        return out

    def summary(self) -> dict[str, Any]:
        s = self.success
        n_ok = int(s.sum())
        def med(t):
            return float(t[s].median()) if n_ok else float("nan")
        def mean(t):
            return float(t[s].mean()) if n_ok else float("nan")
        out = {
            "attack": self.attack,
            "n": int(s.numel()),
            "clean_accuracy": float((self.label_clean == self.y).double().mean()),
            "success_rate": self.success_rate,
            "median_l2": med(self.l2),
            "mean_l2": mean(self.l2),
            "median_linf": med(self.linf),
            "mean_linf": mean(self.linf),
            "rho": mean(self.rho),
            "rho_inf": mean(self.rho_inf),
            "elapsed": self.elapsed,
        }
        if self.iterations is not None:
            out["mean_iterations"] = float(self.iterations.double().mean())
        if self.queries is not None:
            out["mean_queries"] = float(self.queries.double().mean())
        return out

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"AttackResult({self.attack}: n={s['n']}, success={s['success_rate']:.3f}, "
            f"median_l2={s['median_l2']:.4g}, median_linf={s['median_linf']:.4g}, {self.elapsed:.2f}s)"
        )


@dataclass
class UniversalResult(_Saveable):
    """A universal perturbation ``v`` (shape of one input) and its history, pass by pass
    (:func:`georobust.attacks.universal.universal_perturbation`; it doubles as the checkpoint).

    ``fooling_train[p]`` / ``fooling_eval[p]``: the fraction of X / of the held-out set whose *predicted*
    label changes under ``v`` after pass ``p`` (``None`` without a held-out set); ``attempts``/``updates``:
    DeepFool calls and accepted steps per pass; ``transitions[a, b]``: held-out (else training) samples
    predicted ``a`` clean and ``b`` perturbed, after the last pass; ``converged``: the fooling rate on X
    reached ``1 − δ``.

    ``v`` is Algorithm 1's answer, the perturbation after the last pass. When ξ is too small to reach
    ``1 − δ`` the fooling rate can *fall* from pass to pass (later updates undo earlier ones), so the result
    also keeps ``v_best``, the perturbation after the pass ``best_pass`` (0-based) with the highest fooling
    rate *on X* — chosen on the training set, never on the held-out one, so its held-out rate stays honest.
    """

    v: torch.Tensor
    norm: str
    xi: float
    delta: float
    params: dict = field(default_factory=dict)
    num_classes: int = 0
    fooling_train: list = field(default_factory=list)
    fooling_eval: list = field(default_factory=list)
    attempts: list = field(default_factory=list)
    updates: list = field(default_factory=list)
    pass_seconds: list = field(default_factory=list)
    converged: bool = False
    transitions: torch.Tensor | None = None
    elapsed: float = 0.0
    v_best: torch.Tensor | None = None
    best_pass: int = -1

    @staticmethod
    def exists(path: str | Path) -> bool:
        jpath, tpath = _paths(path)
        return jpath.exists() and tpath.exists()

    def record_pass(self, *, fooling_train: float, fooling_eval: float | None, attempts: int, updates: int,
                    seconds: float) -> None:
        self.fooling_train.append(float(fooling_train))
        self.fooling_eval.append(None if fooling_eval is None else float(fooling_eval))
        self.attempts.append(int(attempts))
        self.updates.append(int(updates))
        self.pass_seconds.append(float(seconds))
        self.elapsed = float(sum(self.pass_seconds))
        if self.best_pass < 0 or self.fooling_train[-1] > self.fooling_train[self.best_pass]:
            self.best_pass = len(self.fooling_train) - 1
            self.v_best = self.v.detach().clone()

    @property
    def passes(self) -> int:
        return len(self.fooling_train)

    @property
    def fooling_rate_train(self) -> float:
        return self.fooling_train[-1] if self.fooling_train else 0.0

    @property
    def fooling_rate(self) -> float:
        """The held-out fooling rate after the last pass (the training one when there is no held-out set)."""
        if self.fooling_eval and self.fooling_eval[-1] is not None:
            return float(self.fooling_eval[-1])
        return self.fooling_rate_train

    @property
    def dominant_labels(self) -> torch.Tensor:
        """``(K,)``: how many fooled samples went to each label (the off-diagonal column sums of
        ``transitions``) — a universal perturbation sends most fooled images to a few dominant labels."""
        if self.transitions is None:
            return torch.zeros(self.num_classes, dtype=torch.long)
        t = self.transitions.clone()
        t.fill_diagonal_(0)
        return t.sum(0)

    @property
    def v_norm(self) -> float:
        f = self.v.flatten().double()
        return float(f.abs().max() if self.norm == "inf" else f.norm())

    def summary(self) -> dict[str, Any]:
        dom = self.dominant_labels
        return {"norm": self.norm, "xi": self.xi, "delta": self.delta, "mode": self.params.get("mode"),
                "passes": self.passes, "converged": self.converged, "fooling_train": self.fooling_rate_train,
                "fooling_eval": self.fooling_eval[-1] if self.fooling_eval else None, "v_norm": self.v_norm,
                "dominant_label": int(dom.argmax()) if int(dom.sum()) else None,
                "dominant_share": float(dom.max() / dom.sum()) if int(dom.sum()) else None,
                "best_pass": self.best_pass + 1 if self.best_pass >= 0 else None,
                "fooling_train_best": self.fooling_train[self.best_pass] if self.best_pass >= 0 else None,
                "fooling_eval_best": (self.fooling_eval[self.best_pass] if self.best_pass >= 0 and self.fooling_eval
                                      else None),
                "updates": int(sum(self.updates)), "attempts": int(sum(self.attempts)), "elapsed": self.elapsed}

    def __repr__(self) -> str:
        fe = self.fooling_eval[-1] if self.fooling_eval else None
        return (f"UniversalResult(L{self.norm} ξ={self.xi:g}, {self.passes} passes, fooling train "
                f"{self.fooling_rate_train:.3f}, held-out {'—' if fe is None else f'{fe:.3f}'}, {self.elapsed:.1f}s)")


def verify(model, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None,
           batch_size: int = 1024):
    """Re-run ``model`` on ``x_adv``; return ``(label_adv, success)``."""
    from .checks import predict

    label_adv = predict(model, x_adv.detach(), batch_size)
    success = label_adv == target if target is not None else label_adv != y
    return label_adv, success


def make_result(attack: str, clf, x, x_adv, y, pred, *, target=None, iterations=None, queries=None,
                elapsed=0.0, params=None, minimal=False) -> AttackResult:
    """Build a verified :class:`AttackResult`: clamp to the bounds, re-run the model, set success.

    Samples the model already misclassifies (untargeted, labels given) are reported with a zero
    perturbation and success, whatever the attack did with them.
    """
    lo, hi = clf.bounds
    x_adv = x_adv.detach().clamp(lo, hi)
    if target is None:
        wrong = pred != y
        if wrong.any():
            x_adv = torch.where(wrong.view(-1, *([1] * (x.ndim - 1))), x, x_adv)
    label_adv, success = verify(clf, x_adv, y, target)
    return AttackResult(
        attack=attack, x=x.detach(), x_adv=x_adv, y=y, label_clean=pred, label_adv=label_adv,
        success=success, iterations=iterations, queries=queries, target=target,
        elapsed=float(elapsed), params=dict(params or {}), minimal=minimal,
    )
