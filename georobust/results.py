"""Result dataclasses. Each saves itself as ``<path>.json`` (scalars, parameters, summary) beside
``<path>.safetensors`` (tensors), and loads back without unpickling anything.

Both files are written atomically (temporary file + rename, :mod:`georobust.storage`), the ``.safetensors``
first and the JSON last. The JSON records the sha256 of the ``.safetensors`` bytes (``tensors_sha256``) and of
its own content (``json_sha256``); :meth:`Saveable.load` verifies both, so a truncated or damaged file, a
missing half, or two files of different results (one run's JSON beside another's tensors, or a pair torn by a
kill between the two renames) is a :class:`~georobust.errors.ResultFileError` naming the file, never a
silently wrong result. Files saved before these checksums existed (no ``tensors_sha256``) still load, with a
logged warning that their pairing cannot be verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_from_bytes
from safetensors.torch import save as safetensors_to_bytes

from .checks import check_norm
from .core.tasks import task as get_task
from .core.threat import threat_model
from .errors import OutputError, ResultFileError
from .storage import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

_TENSOR = "tensor"
#: version of the saved-result format; 2: the JSON carries ``tensors_sha256`` and ``json_sha256``
RESULT_FORMAT = 2


def result_paths(path: str | Path) -> tuple[Path, Path]:
    """``(<path>.json, <path>.safetensors)``; a ``.json``/``.safetensors`` suffix on ``path`` is dropped first.
    Any other dot in the name is kept (``eps0.1`` → ``eps0.1.json``, not ``eps0.json``)."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")


def _json_digest(meta: dict) -> str:
    """sha256 of a result JSON's content (every key but ``json_sha256``), in a canonical form."""
    body = {k: v for k, v in meta.items() if k != "json_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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


class Saveable:
    """save/load for dataclasses whose tensor fields go to safetensors and the rest to JSON (see the module
    docstring for the checksums that tie the two files together)."""

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` then ``<path>.json``, each atomically; return the JSON's path.

        Raises :class:`~georobust.errors.OutputError` when the files cannot be written."""
        jpath, tpath = result_paths(path)
        tensors, meta = {}, {"type": type(self).__name__, "format": RESULT_FORMAT, "fields": {}}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                tensors[f.name] = v.detach().cpu().contiguous()
                meta["fields"][f.name] = _TENSOR
            else:
                meta["fields"][f.name] = _jsonable(v)
        if hasattr(self, "summary"):
            meta["summary"] = _jsonable(self.summary())
        data = safetensors_to_bytes(tensors)
        meta["tensors_sha256"] = hashlib.sha256(data).hexdigest()
        meta = json.loads(json.dumps(meta))  # the form it is read back in, so the digest matches on load
        meta["json_sha256"] = _json_digest(meta)
        try:
            atomic_write_bytes(tpath, data)
            atomic_write_text(jpath, json.dumps(meta, indent=2))
        except OSError as e:
            raise OutputError(f"cannot write {type(self).__name__} to {jpath} and {tpath}: "
                              f"{e.strerror or e}; choose another location") from None
        return jpath

    @classmethod
    def load(cls, path: str | Path):
        """Load what :meth:`save` wrote at ``path`` (with or without the ``.json`` suffix).

        Raises :class:`~georobust.errors.ResultFileError` (naming the file) when a file is missing, truncated
        or corrupt, holds another type, or the two files do not belong together."""
        jpath, tpath = result_paths(path)
        name = cls.__name__
        if not jpath.exists() and not tpath.exists():
            raise ResultFileError(f"no saved {name} at {path}: neither {jpath} nor {tpath} exists")
        for p, other in ((jpath, tpath), (tpath, jpath)):
            if not p.is_file():
                raise ResultFileError(f"{p} is missing (or not a file) beside {other}: a saved {name} is the "
                                      "two files together; copy both, or save the result again")
        try:
            meta = json.loads(jpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ResultFileError(f"{jpath} is not a readable result file (truncated or corrupt: "
                                  f"{type(e).__name__}: {e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("fields"), dict):
            raise ResultFileError(f"{jpath} is not a result file written by georobust (no 'fields')")
        if meta.get("type") != name:
            raise ResultFileError(f"{jpath} holds a {meta.get('type')}, not a {name}; load it with "
                                  f"{meta.get('type')}.load")
        try:
            data = tpath.read_bytes()
        except OSError as e:
            raise ResultFileError(f"cannot read {tpath}: {e.strerror or e}") from None
        want = meta.get("tensors_sha256")
        if want is None:
            log.warning("%s was saved by an older georobust without checksums: whether %s belongs to it cannot "
                        "be verified; save it again to add them", jpath, tpath.name)
        else:
            if meta.get("json_sha256") != _json_digest(meta):
                raise ResultFileError(f"{jpath} is corrupt: its content does not match its recorded sha256 "
                                      "(edited or damaged); save the result again")
            got = hashlib.sha256(data).hexdigest()
            if got != want:
                raise ResultFileError(
                    f"{tpath} does not belong to {jpath}: its sha256 {got[:12]}… differs from the "
                    f"{want[:12]}… recorded in the JSON — the file is truncated or damaged, or the two files come "
                    "from different results (copied separately, or a save was interrupted); save it again")
        try:
            tensors = safetensors_from_bytes(data)
        except Exception as e:  # safetensors raises its own error types
            raise ResultFileError(f"{tpath} is not a readable safetensors file (truncated or corrupt: "
                                  f"{type(e).__name__})") from None
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        kw = {}
        for fname, v in meta["fields"].items():
            if fname not in known:
                raise ResultFileError(f"{jpath} has a field {fname!r} that {name} does not have "
                                      "(saved by another georobust version?)")
            if v == _TENSOR:
                if fname not in tensors:
                    raise ResultFileError(f"{tpath} lacks the tensor {fname!r} that {jpath} lists")
                kw[fname] = tensors[fname]
            else:
                kw[fname] = v
        try:
            return cls(**kw)
        except TypeError as e:
            raise ResultFileError(f"{jpath} does not hold a complete {name}: {e}") from None


@dataclass
class AttackResult(Saveable):
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
    minimal: bool = False  # one run gives the whole robustness curve (its threat model's ``curve``)
    # black-box attacks: (N, C) best L2 norm within params["checkpoints"][c] queries (inf: none found yet)
    history: torch.Tensor | None = None
    # problems found with the model or the inputs (e.g. it returns probabilities, not logits); never silent
    warnings: list[str] = field(default_factory=list)
    #: the threat model (georobust.core.threat) the perturbations are measured in: robust accuracy is read by it
    threat: str = ""
    #: the task (georobust.core.tasks) success was judged by
    task: str = "classification"
    #: per-sample size of the perturbation for threat models whose size is not an Lp norm (spatial, patch)
    size: torch.Tensor | None = None

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

    @property
    def threat_model(self):
        """The :class:`~georobust.core.threat.ThreatModel` of this result (results saved before threat models
        existed: minimal-Lp when ``minimal``, else bounded-Lp)."""
        return threat_model(self.threat or ("minimal-lp" if self.minimal else "bounded-lp"))

    def robust_accuracy(self, eps_list, norm: Any = 2) -> list[float]:
        """Fraction of samples that are correctly classified and not fooled within each budget of ``eps_list``,
        read by the result's threat model (:meth:`ThreatModel.robust <georobust.core.threat.ThreatModel.robust>`).

        For a minimal-perturbation or decision-based attack one run gives the whole curve (sizes in ``norm``).
        A failed sample counts as robust at every budget, so the curve is an upper bound on the true robust
        accuracy.
        """
        robust = self.threat_model.robust(self, list(eps_list), check_norm(norm, ("0", "1", "2", "inf")))
        return robust.double().mean(0).tolist()

    def dense_metrics(self) -> dict[str, float]:
        """Segmentation results (task ``dense``): mIoU and pixel accuracy of the clean and the adversarial
        predictions against ``y`` over all scenes (``-100`` pixels left out), and for a targeted attack the
        fraction of counted pixels predicted as the target — recomputed from the stored label maps."""
        dense = get_task("dense")
        k = self.params.get("num_classes")
        if not isinstance(k, int):
            k = int(max(self.label_clean.max(), self.label_adv.max(), self.y.max())) + 1
        clean = dense.set_metrics(self.label_clean, self.y, k)
        adv = dense.set_metrics(self.label_adv, self.y, k, target=self.target)
        out = {"miou_clean": clean["miou"], "miou_adv": adv["miou"], "pixel_accuracy_clean": clean["pixel_accuracy"],
               "pixel_accuracy_adv": adv["pixel_accuracy"]}
        if self.target is not None:
            out["target_agreement_clean"] = dense.set_metrics(self.label_clean, self.y, k,
                                                              target=self.target)["target_agreement"]
            out["target_agreement"] = adv["target_agreement"]
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
        if self.task == "dense":  # segmentation: pixel accuracy and mIoU, clean and adversarial
            out.update(self.dense_metrics())
            out["clean_accuracy"] = out["pixel_accuracy_clean"]
        if self.iterations is not None:
            out["mean_iterations"] = float(self.iterations.double().mean())
        if self.queries is not None:
            out["mean_queries"] = float(self.queries.double().mean())
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"AttackResult({self.attack}: n={s['n']}, success={s['success_rate']:.3f}, "
            f"median_l2={s['median_l2']:.4g}, median_linf={s['median_linf']:.4g}, {self.elapsed:.2f}s)"
        )

    @classmethod
    def concat(cls, results) -> AttackResult:
        """One result from the results of one attack on consecutive chunks of samples (the CLI's progress).

        Per-sample tensors are concatenated in order (the verified ``success`` of each chunk is kept, not
        recomputed); ``elapsed`` is summed; ``params`` must agree, except per-sample lists (one entry per
        sample, e.g. L-BFGS's ``c``), which are concatenated; warnings are merged without repeats.
        """
        from .errors import InputError

        results = list(results)
        if not results:
            raise InputError("AttackResult.concat needs at least one result")
        if len(results) == 1:
            return results[0]
        first = results[0]
        sizes = [int(r.success.numel()) for r in results]
        kw: dict[str, Any] = {}
        for f in fields(cls):
            vals = [getattr(r, f.name) for r in results]
            if f.name == "elapsed":
                kw[f.name] = float(sum(vals))
            elif f.name == "params":
                kw[f.name] = _concat_params(vals, sizes)
            elif f.name == "warnings":
                kw[f.name] = list(dict.fromkeys(w for v in vals for w in (v or [])))
            elif all(isinstance(v, torch.Tensor) for v in vals):
                kw[f.name] = torch.cat(vals)
            elif all(v is None for v in vals):
                kw[f.name] = None
            elif all(v == vals[0] for v in vals) and not any(isinstance(v, torch.Tensor) for v in vals):
                kw[f.name] = vals[0]
            else:
                raise InputError(f"AttackResult.concat: the results disagree on {f.name!r} "
                                 f"({first.attack} and {', '.join(sorted({r.attack for r in results}))}); "
                                 "only chunks of one attack run can be merged")
        return cls(**kw)


def _concat_params(params: list[dict], sizes: list[int]) -> dict:
    from .errors import InputError

    keys = list(dict.fromkeys(k for p in params for k in p))
    out = {}
    for k in keys:
        vals = [p.get(k) for p in params]
        if all(v == vals[0] for v in vals):
            out[k] = vals[0]
        elif all(isinstance(v, list) and len(v) == n for v, n in zip(vals, sizes)):
            out[k] = [a for v in vals for a in v]
        else:
            raise InputError(f"AttackResult.concat: parameter {k!r} differs between the chunks ({vals}); "
                             "only chunks of one attack run can be merged")
    return out


@dataclass
class UniversalResult(Saveable):
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
        jpath, tpath = result_paths(path)
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
           batch_size: int = 1024, task: str = "classification"):
    """Re-run ``model`` on ``x_adv``; return ``(prediction, success)`` judged by ``task``.

    A model with a ``reject_class`` (a defended model, :class:`georobust.defenses.Defended`) abstains on the
    inputs predicted as that class: they are never a success (a detected adversarial example is a failure);
    nor, untargeted, is an input whose label is the reject class (no labels given and the clean input was
    rejected: there is no class to move it away from)."""
    tk = get_task(task)
    if tk.name == "classification":
        from .checks import predict

        label_adv = predict(model, x_adv.detach(), batch_size)
    else:
        with torch.inference_mode():
            label_adv = tk.predict(model(x_adv.detach()))
    success = tk.success(label_adv, y, target)
    reject = getattr(model, "reject_class", None)
    if reject is not None and tk.name == "classification":
        success = success & (label_adv != reject)
        if target is None:
            success = success & (y != reject)
    return label_adv, success


def make_result(attack: str, clf, x, x_adv, y, pred, *, target=None, iterations=None, queries=None,
                elapsed=0.0, params=None, minimal=None, threat: str = "", task: str = "classification",
                size=None) -> AttackResult:
    """Build a verified :class:`AttackResult`: clamp to the bounds, re-run the model, set success.

    Samples the model already misclassifies (untargeted, labels given) are reported with a zero
    perturbation and success, whatever the attack did with them. ``minimal`` defaults to whether the
    threat model reads a whole robustness curve from one run.
    """
    lo, hi = clf.bounds
    x_adv = x_adv.detach().clamp(lo, hi)
    if target is None and task == "classification":
        wrong = pred != y
        if wrong.any():
            x_adv = torch.where(wrong.view(-1, *([1] * (x.ndim - 1))), x, x_adv)
    label_adv, success = verify(clf, x_adv, y, target, task=task)
    if minimal is None:
        minimal = bool(threat) and threat_model(threat).curve
    return AttackResult(
        attack=attack, x=x.detach(), x_adv=x_adv, y=y, label_clean=pred, label_adv=label_adv,
        success=success, iterations=iterations, queries=queries, target=target,
        elapsed=float(elapsed), params=dict(params or {}), minimal=bool(minimal),
        warnings=list(getattr(clf, "output_warnings", None) or []), threat=threat, task=task, size=size,
    )
