"""Continual-learning metrics as pure numpy functions over evaluation curves and matrices.

Definitions follow Continual World (Wolczyk et al. 2021, "Continual World: A Robotic Benchmark For
Continual Reinforcement Learning", Section 3 "Metrics"; see also ``../shared/DESIGN.md``), written for a
run of S training *stages* over n distinct *tasks*: stage j trains task ``task_of_stage[j]`` from env step
``boundaries[j]`` to ``boundaries[j + 1]``. Without repeats S = n and stage j is task j; a sequence run
for two cycles has S = 2n and each task appears twice.

Inputs, all plain arrays:
  steps (E,): env steps of the E evaluations, increasing;
  perf (E, n): normalised performance p_i(t) of every task at every evaluation (``normalise``: 0 for a
    random policy's return, 1 for the task's best);
  boundaries (S + 1,): env steps where stages start and end (boundaries[0] = 0);
  task_of_stage (S,): the task each stage trains.

"The end of stage j" is the mean of the last ``last`` evaluations with boundaries[j] < step <=
boundaries[j + 1] (the issue's "mean of the last few evaluations"), which smooths evaluation noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def normalise(returns: np.ndarray | Sequence[float], random_return: np.ndarray | Sequence[float] | float,
              best_return: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """Normalised performance p = (return - random_return) / (best_return - random_return), elementwise
    (ranges broadcast over the last axis: one per task for an (E, n) array of returns).

    Continual World's p_i(t) is a success rate in [0, 1]; a task's score range plays that role for returns:
    0 is what a uniform-random policy scores, 1 the task's best return. Values are not clipped, so a wrong
    range shows up (p below 0 or above 1) instead of hiding.
    """
    low, high = np.asarray(random_return, np.float64), np.asarray(best_return, np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
        raise ValueError(f"a score range needs finite best_return > random_return, got random {random_return} "
                         f"and best {best_return}.")
    return (np.asarray(returns, dtype=np.float64) - low) / (high - low)


def _check(steps: np.ndarray, perf: np.ndarray, boundaries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps, perf, boundaries = np.asarray(steps, float), np.asarray(perf, float), np.asarray(boundaries, float)
    if perf.ndim != 2 or len(steps) != len(perf):
        raise ValueError(f"perf must be (E, n) with E = len(steps) = {len(steps)}, got shape {perf.shape}.")
    if np.any(np.diff(steps) < 0) or np.any(np.diff(boundaries) <= 0):
        raise ValueError("steps must be non-decreasing and boundaries strictly increasing.")
    return steps, perf, boundaries


def stage_end_values(steps: np.ndarray, perf: np.ndarray, boundaries: np.ndarray, last: int = 3) -> np.ndarray:
    """(S, n): the performance of every task at the end of every stage, each the mean of the last ``last``
    evaluations inside the stage's window (boundaries[j], boundaries[j + 1]]. This is the task-by-task
    performance matrix M[j, i] = p_i(end of stage j) of the Continual World paper's figures.

    A stage without any evaluation inside its window raises: its end value would be made up.
    """
    steps, perf, boundaries = _check(steps, perf, boundaries)
    if last < 1:
        raise ValueError(f"last must be >= 1, got {last}.")
    rows = []
    for j in range(len(boundaries) - 1):
        inside = np.flatnonzero((steps > boundaries[j]) & (steps <= boundaries[j + 1]))
        if len(inside) == 0:
            raise ValueError(f"stage {j} ({boundaries[j]:g}, {boundaries[j + 1]:g}] holds no evaluation.")
        rows.append(perf[inside[-last:]].mean(0))
    return np.stack(rows)


def average_performance(matrix: np.ndarray) -> float:
    """Mean over tasks of the final performance, P(T) = mean_i p_i(T) (Continual World, "average
    performance"): the last row of the performance matrix, averaged."""
    return float(np.mean(np.asarray(matrix, float)[-1]))


def forgetting(matrix: np.ndarray, task_of_stage: Sequence[int]) -> np.ndarray:
    """(S - 1,): forgetting of each stage but the last, F_j = p_u(end of stage j) - p_u(end of run) with
    u = task_of_stage[j] (Continual World: F_i = p_i(i * delta) - p_i(T)). Positive means the task got
    worse after its own training ended; negative means later training improved it (backward transfer).
    The last stage has nothing after it, so it is left out, as in the paper."""
    matrix = np.asarray(matrix, float)
    S = len(task_of_stage)
    if matrix.shape[0] != S:
        raise ValueError(f"matrix has {matrix.shape[0]} rows but there are {S} stages.")
    return np.array([matrix[j, task_of_stage[j]] - matrix[-1, task_of_stage[j]] for j in range(S - 1)])


def window_auc(steps: np.ndarray, values: np.ndarray, start: float, end: float) -> float:
    """Normalised area under a curve over [start, end]: the trapezoid integral of the points with
    start <= step <= end, divided by (end - start), so a constant curve c has AUC c.

    Continual World takes the AUC of the current task's curve during its training window; we include the
    evaluation at ``start`` (the task's zero-shot performance when its training begins), which both the
    continual run and the reference run from scratch have. The curve is held flat before its first point
    and after its last one inside the window, so missing edge points do not shrink the area.
    """
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    if end <= start:
        raise ValueError(f"the window [{start}, {end}] is empty.")
    inside = (steps >= start) & (steps <= end)
    if not np.any(inside):
        raise ValueError(f"no evaluation inside the window [{start:g}, {end:g}].")
    x, y = steps[inside], values[inside]
    x = np.concatenate([[start], x, [end]])
    y = np.concatenate([[y[0]], y, [y[-1]]])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (end - start))


def stage_aucs(steps: np.ndarray, perf: np.ndarray, boundaries: np.ndarray, task_of_stage: Sequence[int]
               ) -> np.ndarray:
    """(S,): AUC of each stage's own task over the stage's window (``window_auc``)."""
    steps, perf, boundaries = _check(steps, perf, boundaries)
    return np.array([window_auc(steps, perf[:, u], boundaries[j], boundaries[j + 1])
                     for j, u in enumerate(task_of_stage)])


def forward_transfer(auc: np.ndarray | float, auc_reference: np.ndarray | float, eps: float = 1e-6) -> np.ndarray:
    """FT = (AUC - AUC_ref) / (1 - AUC_ref) (Continual World, "forward transfer"), elementwise.

    AUC_ref is the AUC of a single-task run from scratch with the same budget and evaluation schedule.
    FT is 1 when the task is solved from its first evaluation, 0 when learning is as fast as from scratch,
    negative when slower. Where the reference itself is perfect (AUC_ref >= 1 - eps) the ratio is
    undefined (0/0 or x/0): it is NaN there, and ``nanmean`` leaves it out of means.
    """
    auc, ref = np.asarray(auc, float), np.asarray(auc_reference, float)
    gap = 1.0 - ref
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap > eps, (auc - ref) / np.where(gap > eps, gap, 1.0), np.nan)


LEARNED = 0.5  # p that counts as "learned" for the learning speed: halfway from a random policy to the best


def steps_to_reach(steps: np.ndarray, values: np.ndarray, start: float, end: float,
                   threshold: float = LEARNED) -> float:
    """Env steps from ``start`` to the first evaluation in [start, end] whose value is >= ``threshold``;
    inf when none is. The evaluation at ``start`` counts (0 steps: the task is already there when its stage
    begins), so the answer is a multiple of the evaluation interval, never interpolated between evaluations.
    """
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    if end <= start:
        raise ValueError(f"the window [{start}, {end}] is empty.")
    inside = np.flatnonzero((steps >= start) & (steps <= end) & (values >= threshold))
    return float(steps[inside[0]] - start) if len(inside) else math.inf


def stage_steps_to_reach(steps: np.ndarray, perf: np.ndarray, boundaries: np.ndarray,
                         task_of_stage: Sequence[int], threshold: float = LEARNED) -> np.ndarray:
    """(S,): ``steps_to_reach`` of each stage's own task inside the stage's window (inf: not reached)."""
    steps, perf, boundaries = _check(steps, perf, boundaries)
    return np.array([steps_to_reach(steps, perf[:, u], boundaries[j], boundaries[j + 1], threshold)
                     for j, u in enumerate(task_of_stage)])


def learning_savings(steps_run: np.ndarray | float, steps_reference: np.ndarray | float,
                     window: np.ndarray | float) -> np.ndarray:
    """Savings in learning time, 1 - T / T_ref, elementwise (Ebbinghaus's savings, as in studies of
    relearning): T is the env steps a stage took to reach the learned threshold (``steps_to_reach``),
    T_ref the steps a single-task run from scratch took on the same task.

    1: the task was already learned when its stage began; 0: learned as fast as from scratch; negative:
    slower (-1: twice as long). A stage that never reaches the threshold counts as T = ``window`` (its
    budget), so its savings are an upper bound, 1 - window / T_ref. NaN where the reference never reached
    the threshold (or reached it at its first evaluation, T_ref = 0): there is no speed to compare with.
    """
    run, ref = np.asarray(steps_run, float), np.asarray(steps_reference, float)
    run = np.minimum(run, np.asarray(window, float))
    valid = np.isfinite(ref) & (ref > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(valid, 1.0 - run / np.where(valid, ref, 1.0), np.nan)


def repeated_stages(task_of_stage: Sequence[int]) -> list[int]:
    """Stages whose task an earlier stage trained already (a second visit: relearning)."""
    return [j for j, u in enumerate(task_of_stage) if u in task_of_stage[:j]]


def nanmean(values: np.ndarray | Sequence[float]) -> float:
    """Mean over finite entries; NaN when there are none (e.g. forgetting of a one-stage run)."""
    return mean_and_spread(values)[0]


def model_forgetting(loss_after_own: dict[str, float], loss_at_end: dict[str, float]) -> dict[str, float]:
    """World-model forgetting of one task, per loss term: held-out loss at the end of the run minus the
    held-out loss right after the task's own training (positive: the model got worse at that task's data).
    This is the forgetting of the performance definition with loss in place of (negated) performance."""
    return {term: loss_at_end[term] - loss_after_own[term] for term in loss_after_own if term in loss_at_end}


# Two-sided 95% quantiles of Student's t for 1 to 30 degrees of freedom (beyond that, the normal's 1.96).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def interval95(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95% t interval of the mean, count) of the finite values: over seeds, the
    interval the summary tables show. The half-width is NaN for fewer than two values."""
    mean, std, n = mean_and_spread(values)
    if n < 2:
        return mean, float("nan"), n
    t = T975[n - 2] if n - 1 <= len(T975) else 1.96
    return mean, t * std / float(np.sqrt(n)), n


def mean_and_spread(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, count) of the finite values; std is 0 for one value and NaN for
    none. The spread across seeds in the summary tables."""
    values = np.asarray(values, float)
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return float("nan"), float("nan"), 0
    std = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
    return float(finite.mean()), std, len(finite)
