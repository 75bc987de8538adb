"""What the world model knows: ridge probes, simulator state, open-loop windows and the insight CLI."""

import numpy as np
import pytest

from benchmarks.probes import fit_ridge, fit_ridge_cv, fold_ids, r2_score, ridge_solutions

# --------------------------------------------------------------------------------------------- probes


def test_probe_recovers_a_linear_relation_on_held_out_data():
    rng = np.random.default_rng(0)
    # Features on very different scales and offsets: standardisation must make that irrelevant.
    X = rng.normal(size=(600, 40)) * rng.uniform(0.01, 100, 40) + rng.uniform(-50, 50, 40)
    W = rng.normal(size=(40, 3))
    Y = X @ W + 3.0 + 0.01 * rng.normal(size=(600, 3)) * (X @ W).std(0)
    probe = fit_ridge_cv(X[:400], Y[:400], groups=np.arange(400) // 40)
    r2 = r2_score(Y[400:], probe.predict(X[400:]))
    assert r2.shape == (3,) and np.all(r2 > 0.99), r2


def test_probe_on_noise_scores_near_zero():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(3000, 30)), rng.normal(size=(3000, 2))
    probe = fit_ridge_cv(X[:2000], Y[:2000], groups=np.arange(2000) // 100)
    r2 = r2_score(Y[2000:], probe.predict(X[2000:]))
    assert np.all(np.abs(r2) < 0.02), r2
    assert np.all(probe.alpha >= 1.0), probe.alpha  # cross-validation chose strong shrinkage


def test_cross_validation_picks_alpha_per_column():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, 10))
    Y = np.stack([X @ rng.normal(size=10), rng.normal(size=500)], 1)  # one signal, one noise column
    probe = fit_ridge_cv(X, Y, groups=np.arange(500) // 50)
    assert probe.alpha[0] < 1e-2 < probe.alpha[1]


def test_ridge_solutions_match_the_normal_equations_in_primal_and_dual_form():
    rng = np.random.default_rng(3)
    alphas = np.array([1e-3, 0.5])
    for N, F in [(50, 8), (8, 50)]:  # F <= N uses Z'Z, F > N uses ZZ'
        Z, Y = rng.normal(size=(N, F)), rng.normal(size=(N, 2))
        expected = np.stack([np.linalg.solve(Z.T @ Z + N * a * np.eye(F), Z.T @ Y) for a in alphas])
        np.testing.assert_allclose(ridge_solutions(Z, Y, alphas), expected, rtol=1e-8, atol=1e-10)


def test_tiny_alpha_is_least_squares_and_per_column_alpha_is_used():
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(100, 5)) * 3 + 1, rng.normal(size=(100, 2))
    probe = fit_ridge(X, Y, 1e-12)
    design = np.concatenate([X, np.ones((100, 1))], 1)
    coef = np.linalg.lstsq(design, Y, rcond=None)[0]
    np.testing.assert_allclose(probe.predict(X), design @ coef, atol=1e-8)
    mixed = fit_ridge(X, Y, np.array([1e-12, 1e3]))
    np.testing.assert_allclose(mixed.predict(X)[:, 0], probe.predict(X)[:, 0], atol=1e-8)
    assert np.abs(mixed.weight[:, 1]).max() < 1e-3  # strong shrinkage on column 1 only


def test_r2_known_values_and_constant_column():
    Y = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    prediction = np.array([[1.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    r2 = r2_score(Y, prediction)
    assert r2[0] == pytest.approx(1 - 1 / 2) and np.isnan(r2[1])
    assert r2_score(Y[:, :1], np.full((3, 1), 2.0))[0] == pytest.approx(0.0)  # the mean scores 0


def test_folds_keep_groups_together():
    groups = np.repeat([7, 3, 9, 1, 5, 2], 4)
    fold = fold_ids(groups, 3)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    assert set(fold) == {0, 1, 2}
    assert list(fold_ids(np.zeros(6), 3)) == [0, 0, 1, 1, 2, 2]  # one group: contiguous blocks
