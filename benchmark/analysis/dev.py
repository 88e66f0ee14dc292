"""Deep Embedded Validation (DEV): a density-ratio selection rule computed from saved features.

You, Wang, Chen, Wang & Long (2019), "Towards Accurate Model Selection in Deep Unsupervised
Domain Adaptation", ICML. The target risk of a model is estimated by importance weighting its
per-sample losses on *source validation* images with the density ratio w(x) = p_t(f(x)) / p_s(f(x))
of its own features f, and the estimate's variance is reduced with the weights as a control
variate (their Algorithm 1):

    d(x)  = P(target | f(x))             a domain classifier trained on {f(x_s^train)} vs {f(x_t)}
    w_j   = (n_s / n_t) · d(x_j) / (1 − d(x_j))              for the n_v validation images x_j
    L_j   = w_j · ℓ(x_j, y_j)                                 weighted validation losses
    η̂     = − Cov(L, W) / Var(W)                              the optimal control-variate coefficient
    R_DEV = mean(L) + η̂ · mean(W) − η̂                        E[W] = 1, so the correction is unbiased

Lower R_DEV is better. dabench's domain classifier is an L2-regularised logistic regression on
standardised features (numpy + scipy's L-BFGS: no torch here, the analysis stays light and
scikit-learn is only used by the t-SNE); for two Gaussians with a shared covariance it is the
exact log-density-ratio model.

What a run saves (engine/train.py ``save_features``, with ``--set save_features=true``):
``source_features``/``source_logits``/``source_labels`` (source validation), ``source_train_features``
and ``validator_features`` (the target *adaptation* split's validator sample; never the
evaluation images). They are saved for the final model only, so DEV scores the final checkpoint
of each run: it chooses among *configurations*, not checkpoints (:func:`with_dev_scores` puts
``dev_risk`` on the run's last evaluation; the other evaluations have none).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, log_softmax

#: the curve field DEV writes (lower is better)
DEV_FIELD = "dev_risk"
#: the keys a features file needs for DEV (files from before DEV lack the last three)
NEEDED = ("source_features", "source_logits", "source_labels", "source_train_features", "validator_features")
HOW_TO_SAVE = (
    "runs save them with `dabench run ... --set save_features=true` (or `save_features = true` in a "
    "matrix file's [set] table); an existing run: `dabench run --results DIR --rerun RUN_ID --set save_features=true`"
)


def fit_domain_classifier(source: np.ndarray, target: np.ndarray, l2: float = 1e-2) -> Any:
    """Logistic regression P(target | x) on standardised ``source`` (label 0) vs ``target`` (label 1).

    Minimises the mean log loss + (l2/2)·||β||² (intercept not penalised) by L-BFGS; returns a
    function x → P(target | x). The standardisation uses the training rows' mean and std.
    """
    x = np.concatenate([source, target]).astype(np.float64)
    y = np.concatenate([np.zeros(len(source)), np.ones(len(target))])
    mu, sd = x.mean(0), x.std(0)
    sd[sd < 1e-8] = 1.0  # a constant feature (a dead unit) carries no information
    z = (x - mu) / sd
    n, d = z.shape

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        b, c = theta[:d], theta[d]
        s = z @ b + c
        # log(1 + e^s) - y s, computed stably
        loss = np.mean(np.logaddexp(0.0, s) - y * s) + 0.5 * l2 * float(b @ b)
        r = (expit(s) - y) / n
        return loss, np.concatenate([z.T @ r + l2 * b, [r.sum()]])

    res = minimize(loss_grad, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    beta, c = res.x[:d], res.x[d]

    def prob(q: np.ndarray) -> np.ndarray:
        return expit(((np.asarray(q, dtype=np.float64) - mu) / sd) @ beta + c)

    return prob


def importance_weights(
    source_train: np.ndarray, target: np.ndarray, validation: np.ndarray, l2: float = 1e-2
) -> np.ndarray:
    """w(x_j) = (n_s/n_t) · d(x_j)/(1 − d(x_j)) on the ``validation`` rows (You et al. 2019, Alg. 1)."""
    d = np.clip(fit_domain_classifier(source_train, target, l2)(validation), 1e-6, 1 - 1e-6)
    return (len(source_train) / len(target)) * d / (1.0 - d)


def dev_risk(weights: np.ndarray, losses: np.ndarray) -> float:
    """R_DEV = mean(L) + η̂·mean(W) − η̂ with L = W·ℓ and η̂ = −Cov(L, W)/Var(W) (You et al. 2019, Algorithm 1).

    Covariance and variance are the unbiased (n − 1) sample estimates. When the weights are
    constant (``Var(W) ≤ 1e-12 · mean(W)²``: no shift the classifier can see, or a single
    validation image) the control variate is undefined; the estimate is then its limit as
    Var(W) → 0, the plain mean loss mean(ℓ) = mean(L)/mean(W). Not mean(L) = c·mean(ℓ): weights that
    are all a tiny c (a domain classifier that separates the domains and calls every validation
    image source) would otherwise score a near-zero risk, the *best* under a lower-is-better rule,
    for the worst-aligned features. ValueError on no validation image or mismatched lengths.
    """
    w = np.asarray(weights, dtype=np.float64)
    loss = np.asarray(losses, dtype=np.float64)
    if w.ndim != 1 or w.shape != loss.shape or len(w) == 0:
        raise ValueError(
            f"dev_risk needs one weight per validation loss and at least one of each; got weights of shape "
            f"{w.shape} and losses of shape {loss.shape}"
        )
    weighted = w * loss
    var = float(np.var(w, ddof=1)) if len(w) > 1 else 0.0
    if var <= 1e-12 * float(np.mean(w)) ** 2:
        return float(loss.mean())
    eta = -float(np.cov(weighted, w, ddof=1)[0, 1]) / var
    return float(weighted.mean() + eta * w.mean() - eta)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample −log softmax(logits)[label]: the loss DEV weights."""
    lp = log_softmax(np.asarray(logits, dtype=np.float64), axis=1)
    return -lp[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]


def features_path(source_dir: str | Path, run_id: str) -> Path:
    """Where a run's saved features are (core/store.py's ``features_path``, read without the store)."""
    return Path(source_dir) / "features" / f"{run_id}.npz"


def dev_from_file(path: Path) -> tuple[float, int | None] | None:
    """(R_DEV, step) of the model whose features ``path`` holds; None when the file lacks DEV's arrays."""
    with np.load(path) as z:
        if not all(k in z.files for k in NEEDED):
            return None
        arrays = {k: z[k] for k in NEEDED}
        step = int(z["step"]) if "step" in z.files and int(z["step"]) >= 0 else None
    w = importance_weights(
        arrays["source_train_features"].astype(np.float64),
        arrays["validator_features"].astype(np.float64),
        arrays["source_features"].astype(np.float64),
    )
    return dev_risk(w, cross_entropy(arrays["source_logits"], arrays["source_labels"])), step


def has_dev(df: pd.DataFrame) -> bool:
    """Whether some complete run of ``df`` has a DEV score in its curve."""
    return any(
        isinstance(e, dict) and DEV_FIELD in e
        for st, c in zip(df.get("status", ()), df.get("curve", ()))
        if st == "complete"
        for e in (c or [])
    )


def with_dev_scores(df: pd.DataFrame, strict: bool = False) -> pd.DataFrame:
    """A copy of ``df`` whose complete runs with saved features carry ``dev_risk`` on the evaluation
    the features are of (the last one). Runs already scored, or without features, are left as they are.

    ``strict``: ValueError when no complete run has DEV's features (``--rule dev`` on a folder
    run without ``save_features``), naming the setting that saves them.
    """
    if df.empty or has_dev(df):
        return df
    out = df.copy()
    curves = list(out["curve"])
    old_files: list[str] = []
    scored = 0
    for i, (status, rid, src) in enumerate(zip(out["status"], out["run_id"], out["source_dir"])):
        curve = curves[i]
        if status != "complete" or not curve:
            continue
        path = features_path(src, str(rid))
        if not path.exists():
            continue
        try:
            got = dev_from_file(path)
        except (OSError, ValueError, KeyError) as exc:  # a torn or foreign file: that run has no score
            warnings.warn(f"DEV: cannot read {path}: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        if got is None:
            old_files.append(str(path))
            continue
        risk, step = got
        if not math.isfinite(risk):
            continue
        at = next((j for j in range(len(curve) - 1, -1, -1) if curve[j].get("step") == step), len(curve) - 1)
        new = [dict(e) for e in curve]  # the cells' dicts are shared with the caller's frame
        new[at][DEV_FIELD] = risk
        curves[i] = new
        scored += 1
    out["curve"] = curves
    if strict and scored == 0:
        complete = int((out["status"] == "complete").sum())
        why = (
            f"{len(old_files)} features file(s) were saved by a dabench without DEV's arrays (e.g. {old_files[0]})"
            if old_files
            else f"none of the {complete} complete run(s) saved features (DIR/features/<run_id>.npz)"
        )
        raise ValueError(f"rule 'dev' needs the features the runs save: {why}; {HOW_TO_SAVE}")
    return out
