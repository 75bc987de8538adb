"""Linear probes: how much of a quantity can be read off a representation by a linear map.

Pure numpy. A probe is ridge regression on standardised features, one output column per quantity:

    minimise over (w_q, b_q):  (1/N) * ||y_q - b_q - Z w_q||^2 + alpha_q * ||w_q||^2

where Z is X with each feature centred and scaled to unit variance on the fitting set (a constant
feature becomes 0). The penalty is relative to the mean squared error, so on standardised features the
same alpha shrinks the same way for any representation: a direction of Z with variance v keeps the
fraction v / (v + alpha) of its least-squares weight (alpha = 1e-6: almost plain least squares;
1e4: almost the mean). The solution, for every alpha at once, comes from one eigendecomposition of Z'Z (or of
ZZ' when there are more features than samples). ``fit_ridge_cv`` picks alpha per column by
cross-validation over groups (episodes), so neighbouring, correlated steps of one episode never sit on
both sides of a fold. Quality is R^2 on held-out data (``r2_score``): 1 is perfect, 0 is no better
than predicting the held-out mean, negative is worse than that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_ALPHAS = np.logspace(-6, 4, 11)


@dataclass(frozen=True)
class RidgeProbe:
    """A fitted probe: ``predict(X) = ((X - mean) / scale) @ weight + bias``.

    mean, scale (F,): the standardisation of the fitting set; weight (F, Q); bias (Q,); alpha (Q,): the
    ridge strength of each output column.
    """

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    alpha: np.ndarray

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions (N, Q) for features X (N, F)."""
        X = _as_2d(X, "X")
        assert X.shape[1] == self.mean.shape[0], f"X has {X.shape[1]} features, the probe {self.mean.shape[0]}"
        return ((X - self.mean) / self.scale) @ self.weight + self.bias


def _as_2d(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, columns), got shape {a.shape}.")
    return a


def standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and scales (F,) of X (N, F); a constant column gets scale 1 (it standardises to 0)."""
    X = _as_2d(X, "X")
    mean = X.mean(0)
    scale = X.std(0)
    scale = np.where(scale > 1e-8 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
    return mean, scale


def ridge_solutions(Z: np.ndarray, Y: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Ridge weights (len(alphas), F, Q) of centred targets Y (N, Q) on standardised features Z (N, F).

    With Z'Z = V diag(l) V' the weights are V diag(1 / (l + N alpha)) V'Z'Y; when F > N the same
    weights are Z'U diag(1 / (l + N alpha)) U'Y with ZZ' = U diag(l) U' (the dual form, cheaper then).
    """
    N, F = Z.shape
    alphas = np.asarray(alphas, np.float64)
    if F <= N:
        evals, V = np.linalg.eigh(Z.T @ Z)  # (F,), (F, F)
        proj = V.T @ (Z.T @ Y)  # (F, Q)
        shrink = 1.0 / (np.clip(evals, 0.0, None)[None] + N * alphas[:, None])  # (A, F)
        return np.einsum("fe,aeq->afq", V, shrink[:, :, None] * proj[None])
    evals, U = np.linalg.eigh(Z @ Z.T)  # (N,), (N, N)
    proj = U.T @ Y  # (N, Q)
    shrink = 1.0 / (np.clip(evals, 0.0, None)[None] + N * alphas[:, None])  # (A, N)
    dual = np.einsum("ne,aeq->anq", U, shrink[:, :, None] * proj[None])  # (A, N, Q)
    return np.einsum("nf,anq->afq", Z, dual)


def fit_ridge(X: np.ndarray, Y: np.ndarray, alpha: float | np.ndarray) -> RidgeProbe:
    """Fit a probe from X (N, F) to Y (N, Q) with one ridge strength, or one per column of Y (Q,)."""
    X, Y = _as_2d(X, "X"), _as_2d(Y, "Y")
    if len(X) != len(Y):
        raise ValueError(f"X and Y must have the same number of rows, got {len(X)} and {len(Y)}.")
    Q = Y.shape[1]
    alpha = np.broadcast_to(np.asarray(alpha, np.float64), (Q,)).copy()
    if np.any(alpha < 0):
        raise ValueError(f"alpha must be >= 0, got {alpha}.")
    mean, scale = standardise(X)
    Z = (X - mean) / scale
    bias = Y.mean(0)
    unique, which = np.unique(alpha, return_inverse=True)
    weights = ridge_solutions(Z, Y - bias, unique)  # (U, F, Q)
    weight = weights[which, :, np.arange(Q)].T  # (F, Q): column q from the solution with its own alpha
    return RidgeProbe(mean, scale, weight, bias, alpha)


def r2_score(Y: np.ndarray, prediction: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Coefficient of determination per column (Q,): 1 - mean squared error / variance.

    The variance is that of Y itself (the usual R^2), or of ``reference`` (M, Q) when given: a fixed
    yardstick, so that scores on different small samples of one quantity (say, imagined states at
    different horizons) are comparable with each other. NaN where the yardstick is constant.
    """
    Y, prediction = _as_2d(Y, "Y"), _as_2d(prediction, "prediction")
    assert Y.shape == prediction.shape, f"{Y.shape} != {prediction.shape}"
    base = Y if reference is None else _as_2d(reference, "reference")
    mse = ((Y - prediction) ** 2).mean(0)
    variance = base.var(0)
    constant = variance <= 1e-12 * np.maximum(1.0, (base**2).mean(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(constant, np.nan, 1.0 - mse / np.where(constant, 1.0, variance))


def fold_ids(groups: np.ndarray, folds: int) -> np.ndarray:
    """A fold index (N,) per sample: whole groups go to one fold (round-robin over the sorted group ids);
    with a single group, contiguous blocks of samples instead."""
    groups = np.asarray(groups)
    unique, inverse = np.unique(groups, return_inverse=True)
    if len(unique) >= 2:
        return inverse % min(folds, len(unique))
    return np.minimum(np.arange(len(groups)) * folds // max(1, len(groups)), folds - 1)


def fit_ridge_cv(X: np.ndarray, Y: np.ndarray, groups: np.ndarray | None = None,
                 alphas: np.ndarray = DEFAULT_ALPHAS, folds: int = 5) -> RidgeProbe:
    """Fit a probe whose alpha per column maximises the cross-validated R^2 over ``alphas``.

    groups (N,): e.g. the episode of each sample; folds never split a group (None: one group, so folds
    are contiguous blocks). Ties go to the larger alpha. The returned probe is refitted on all of X.
    """
    X, Y = _as_2d(X, "X"), _as_2d(Y, "Y")
    groups = np.zeros(len(X), int) if groups is None else np.asarray(groups)
    fold = fold_ids(groups, folds)
    alphas = np.asarray(alphas, np.float64)
    held_out = np.zeros((len(alphas), *Y.shape))  # (A, N, Q): each sample predicted by the fold without it
    for k in np.unique(fold):
        test, train = fold == k, fold != k
        mean, scale = standardise(X[train])
        bias = Y[train].mean(0)
        weights = ridge_solutions((X[train] - mean) / scale, Y[train] - bias, alphas)  # (A, F, Q)
        held_out[:, test] = np.einsum("nf,afq->anq", (X[test] - mean) / scale, weights) + bias
    scores = np.stack([r2_score(Y, p) for p in held_out])  # (A, Q)
    scores = np.nan_to_num(scores, nan=-np.inf)
    best = len(alphas) - 1 - np.argmax(scores[::-1], 0)  # (Q,), the largest alpha among ties
    return fit_ridge(X, Y, alphas[best])


def fit_by_episode(features: list[np.ndarray], targets: list[np.ndarray]) -> RidgeProbe:
    """``fit_ridge_cv`` on per-episode features (T_i, F) and targets (T_i, Q), its folds never splitting an
    episode."""
    groups = np.concatenate([np.full(len(y), i) for i, y in enumerate(targets)])
    return fit_ridge_cv(np.concatenate(features), np.concatenate(targets), groups)


def named(names: list[str], values: np.ndarray) -> dict[str, float | None]:
    """Scores (Q,) by name, NaN as None (JSON null)."""
    return {n: (float(v) if np.isfinite(v) else None) for n, v in zip(names, values)}
