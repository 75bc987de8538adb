"""Results of the continual benchmark: per-run metrics and plots, and the summary across strategies and seeds.

Input: the raw record ``run.json`` that each run of ``benchmarks.continual`` writes (evaluation returns
of every task, world-model losses on held-out data, plasticity measurements) and the records of the
single-task reference runs. Output per run: ``results.json`` (curves, performance matrix, metrics),
``curves.png``, ``matrix.png`` and the forward-transfer scalars in its TensorBoard events; per sequence:
``summary.md``, ``summary.json`` and ``summary_{curves,matrix,plasticity}.png``. Metric definitions are
in ``benchmarks.continual_metrics``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from . import continual_metrics as cm
from .common import machine_info, markdown_table, pyplot, read_json, save_figure, write_json

MODULES = ("encoder", "rssm", "actor", "critic")
WM_SHOWN = {"reconstruction": ("image", "state"), "reward": ("reward",), "kl": ("kl",)}


def stage_labels(tasks: list[str], stages: list[int]) -> list[str]:
    """A label per stage: the task's name, with ``#2``, ``#3``... on its later cycles."""
    seen: dict[int, int] = {}
    labels = []
    for u in stages:
        seen[u] = seen.get(u, 0) + 1
        labels.append(tasks[u] if seen[u] == 1 else f"{tasks[u]}#{seen[u]}")
    return labels


def score_ranges(sequence: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(n,) random-policy and (n,) best returns of a sequence dict's tasks (p = 0 and p = 1)."""
    tasks = sequence["tasks"]
    return np.array([t["random_return"] for t in tasks]), np.array([t["best_return"] for t in tasks])


def curves(record: dict[str, Any], ranges: tuple[np.ndarray, np.ndarray] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation env steps (E,) and normalised performance (E, n) of a run record, by its own tasks' score
    ranges or by ``ranges``."""
    evals = record["evaluations"]
    steps = np.array([e["env_steps"] for e in evals], float)
    perf = np.array([[np.mean(e["returns"][name]) for name in record["tasks"]] for e in evals])
    return steps, cm.normalise(perf, *(ranges or score_ranges(record["sequence"])))


def task_range(record: dict[str, Any], index: int) -> tuple[np.ndarray, np.ndarray]:
    """The score range of task ``index`` of a run record, as one-task arrays (to normalise its reference)."""
    low, high = score_ranges(record["sequence"])
    return low[index: index + 1], high[index: index + 1]


def from_scratch(metric: Any, reference: dict[str, Any] | None, ranges: tuple[np.ndarray, np.ndarray]) -> float:
    """``metric`` (``cm.window_auc`` or ``cm.steps_to_reach``) of a reference run's curve over its whole budget
    (its one task, from scratch), normalised by ``ranges``; NaN without a reference."""
    if reference is None:
        return float("nan")
    steps, perf = curves(reference, ranges)
    return metric(steps, perf[:, 0], 0.0, reference["boundaries"][-1])


def boundary_plasticity(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Dormant fraction and effective rank per module around each task boundary but the last: ``before``
    (the evaluation at the boundary, before any plasticity method), ``after_reset`` (right after the
    method, on the same probe batch; the same as ``before`` without a method; absent where it was not
    measured) and ``next`` (the first evaluation after the boundary, once the new task has trained for an
    evaluation interval)."""
    measured = sorted(record.get("plasticity", []), key=lambda p: p["env_steps"])
    resets = {r["stage"]: r for r in record.get("plasticity_resets", [])}
    method = record["strategy"].get("plasticity", "none")
    out = []
    for j, boundary in enumerate(record["boundaries"][1:-1]):
        # the stage's closing evaluation: the first at or after the boundary (a vector env may step past it)
        at = [k for k, p in enumerate(measured) if p["env_steps"] >= boundary]
        if not at:
            continue
        before = measured[at[0]]
        entry = {"stage": j, "env_steps": before["env_steps"], "before": {m: before[m] for m in MODULES if m in before}}
        if method == "none":
            entry["after_reset"] = entry["before"]
        elif "after" in resets.get(j, {}):
            entry["after_reset"] = resets[j]["after"]
        if len(at) > 1:
            entry["next"] = {m: measured[at[1]][m] for m in MODULES if m in measured[at[1]]}
        out.append(entry)
    return out


def _boundary_means(boundaries: list[dict[str, Any]], when: str, key: str) -> dict[str, float]:
    """Per module, and ``all`` (the mean of the modules), the mean over boundaries of ``key`` at ``when``."""
    per_module = {m: cm.nanmean([b[when][m][key] for b in boundaries if when in b and m in b[when]])
                  for m in MODULES}
    return {**per_module, "all": cm.nanmean(list(per_module.values()))}


def _wm_term(loss: dict[str, float], names: tuple[str, ...]) -> float:
    present = [loss[n] for n in names if n in loss]
    return float(sum(present)) if present else float("nan")


def run_metrics(record: dict[str, Any], references: dict[int, dict[str, Any] | None]) -> dict[str, Any]:
    """Every metric of one run (see ``benchmarks.continual_metrics`` for the definitions).

    ``references`` maps task index -> the record of its single-task reference run (None: missing, and
    forward transfer is NaN).
    """
    seq, tasks, stages = record["sequence"], record["tasks"], record["stages"]
    boundaries = np.array(record["boundaries"], float)
    labels = stage_labels(tasks, stages)
    steps, perf = curves(record)
    matrix = cm.stage_end_values(steps, perf, boundaries, seq["end_evaluations"])
    forgetting = cm.forgetting(matrix, stages)
    aucs = cm.stage_aucs(steps, perf, boundaries, stages)
    ref_aucs, ref_to_learns = (np.array([from_scratch(f, references.get(u), task_range(record, u)) for u in stages])
                               for f in (cm.window_auc, cm.steps_to_reach))
    transfer = cm.forward_transfer(aucs, ref_aucs)
    to_learn = cm.stage_steps_to_reach(steps, perf, boundaries, stages)
    savings = cm.learning_savings(to_learn, ref_to_learns, np.diff(boundaries))
    repeats = cm.repeated_stages(stages)
    boundaries_p = boundary_plasticity(record)

    S = len(stages)
    own = {e["stage"]: e["loss"] for e in record["wm_loss"] if e["after_stage"] == e["stage"]}
    end = {e["stage"]: e["loss"] for e in record["wm_loss"] if e["after_stage"] == S - 1}
    wm_forgetting = {labels[k]: cm.model_forgetting(own[k], end[k]) for k in range(S - 1) if k in own and k in end}
    wm_mean = {shown: cm.nanmean([_wm_term(d, names) for d in wm_forgetting.values()])
               for shown, names in WM_SHOWN.items()}
    plasticity = record["plasticity"]
    final_plasticity = {m: plasticity[-1][m] for m in MODULES} if plasticity else {}
    return {
        "stage_labels": labels,
        "matrix": matrix.tolist(),
        "average_performance": cm.average_performance(matrix),
        "forgetting": dict(zip(labels[:-1], forgetting.tolist())),
        "forgetting_mean": cm.nanmean(forgetting),
        "p_end_of_own_stage": dict(zip(labels, [float(matrix[j, u]) for j, u in enumerate(stages)])),
        "p_final": dict(zip(tasks, matrix[-1].tolist())),
        "auc": dict(zip(labels, aucs.tolist())),
        "reference_auc": dict(zip(labels, ref_aucs.tolist())),
        "forward_transfer": dict(zip(labels, transfer.tolist())),
        "forward_transfer_mean": cm.nanmean(transfer),
        "wm_forgetting": wm_forgetting,
        "wm_forgetting_mean": wm_mean,
        "plasticity_final": final_plasticity,
        "learned_threshold": cm.LEARNED,
        "steps_to_learn": dict(zip(labels, to_learn.tolist())),
        "reference_steps_to_learn": dict(zip(labels, ref_to_learns.tolist())),
        "learning_savings": dict(zip(labels, savings.tolist())),
        # later tasks (every stage but the first) against a fresh agent; relearning: the stages that return
        "learning_savings_later": cm.nanmean(savings[1:]),
        "relearning_savings": cm.nanmean(savings[repeats]) if repeats else float("nan"),
        "plasticity_boundaries": boundaries_p,
        "plasticity_around_boundaries": {when: {key: _boundary_means(boundaries_p, when, key)
                                                for key in ("dormant", "effective_rank")}
                                         for when in ("before", "after_reset", "next")},
    }


def without_unused(config: dict[str, Any]) -> dict[str, Any]:
    """A run config (a dict) without settings that do nothing in its run, so that keys made from it stay
    those of runs saved before such a setting existed: ``rssm.compile_mode`` when the cell is not compiled
    or at its default."""
    rssm = config["agent"]["world_model"]["rssm"]
    if rssm.get("compile") and rssm.get("compile_mode", "default") != "default":
        return config
    rssm = {k: v for k, v in rssm.items() if k != "compile_mode"}
    return {**config, "agent": {**config["agent"], "world_model": {**config["agent"]["world_model"], "rssm": rssm}}}


def settings_key(sequence: dict[str, Any], config: dict[str, Any]) -> str:
    """A hash of what makes runs comparable across strategies and seeds: the sequence and the run config
    without what the strategy sets (the replay section and ``plasticity.method``), the seed and unused
    settings (``without_unused``)."""
    config = without_unused(config)
    plasticity = {k: v for k, v in config.get("plasticity", {}).items() if k != "method"}
    config = {**config, "replay": None, "plasticity": plasticity, "agent": {**config["agent"], "seed": None}}
    return hashlib.sha1(json.dumps([sequence, config], sort_keys=True).encode()).hexdigest()[:10]


def finalise_run(rundir: Path, reference_dirs: dict[int, Path]) -> dict[str, Any]:
    """Compute a run's metrics (with the references that exist), write ``results.json``, its plots, and
    the forward-transfer scalars into its TensorBoard events (once, when all references are there)."""
    record = read_json(rundir / "run.json")
    references = {i: read_json(d / "run.json") for i, d in reference_dirs.items()}
    metrics = run_metrics(record, references)
    steps, perf = curves(record)
    previous = read_json(rundir / "results.json") or {}
    complete = bool(references) and all(r is not None for r in references.values())
    logged = previous.get("forward_transfer_logged", False)
    if complete and not logged:
        from agent.logger import Logger

        logger = Logger(rundir)
        scalars = {f"continual/forward_transfer/{k}": v for k, v in metrics["forward_transfer"].items()}
        scalars["continual/forward_transfer_mean"] = metrics["forward_transfer_mean"]
        logger.scalars(scalars, int(record["boundaries"][-1]))
        logger.close()
        logged = True
    ref_curves = {}
    for i, ref in references.items():
        if ref is not None:
            ref_steps, ref_perf = curves(ref, task_range(record, i))
            ref_curves[record["tasks"][i]] = {"env_steps": ref_steps.tolist(), "p": ref_perf[:, 0].tolist(),
                                              "rundir": str(reference_dirs[i])}
    results = {
        "sequence": record["sequence"]["name"], "strategy": record["strategy"]["name"], "seed": record["seed"],
        "plasticity_method": record["strategy"].get("plasticity", "none"),
        "plasticity_resets": record.get("plasticity_resets", []),
        "tasks": record["tasks"], "stages": record["stages"], "boundaries": record["boundaries"],
        "curves": {name: {"env_steps": steps.tolist(), "p": perf[:, i].tolist(),
                          "return": [float(np.mean(e["returns"][name])) for e in record["evaluations"]]}
                   for i, name in enumerate(record["tasks"])},
        "reference_curves": ref_curves,
        "metrics": metrics,
        "wm_loss": record["wm_loss"],
        "plasticity": record["plasticity"],
        "wall_s": record["wall_s"],
        "budget": budget(record),
        "settings": settings_key(record["sequence"], record["config"]),
        "forward_transfer_logged": logged,
    }
    write_json(rundir / "results.json", results)
    plot_curves(results, rundir / "curves.png")
    plot_matrices({results["strategy"]: np.array(metrics["matrix"])}, metrics["stage_labels"], record["tasks"],
                  rundir / "matrix.png")
    return results


def budget(record: dict[str, Any]) -> dict[str, Any]:
    """What a run spent and on what settings, for results files and the README."""
    cfg, seq = record["config"], record["sequence"]
    return {"steps_per_stage": [seq["tasks"][u]["steps"] for u in record["stages"]],
            "env_steps": record["boundaries"][-1], "preset": seq["preset"], "overrides": seq["overrides"],
            "obs": seq["obs"], "action_repeat": seq["action_repeat"], "replay_capacity": seq["replay_capacity"],
            "replay": {k: cfg["replay"][k] for k in ("policy", "capacity", "recent_capacity")},
            "train_ratio": cfg["train"]["train_ratio"], "batch": [cfg["train"]["batch_size"],
                                                                  cfg["train"]["batch_length"]],
            "eval_every": seq["eval_every"], "eval_episodes": seq["eval_episodes"],
            "end_evaluations": seq["end_evaluations"], "heldout_episodes": seq["heldout_episodes"],
            # the settings of a strategy's +shrink_perturb or +redo (the same for every strategy of a summary)
            "plasticity": {k: v for k, v in cfg.get("plasticity", {}).items() if k != "method"},
            "score_ranges": dict(zip(record["tasks"], zip(*(r.tolist() for r in score_ranges(seq))))),
            "score_range_source": seq.get("score_range_source", "")}


# --------------------------------------------------------------------------------------------- plots


def _boundaries(ax: Any, boundaries: list[float], labels: list[str], top: bool) -> None:
    for b in boundaries[1:-1]:
        ax.axvline(b, color="black", linewidth=0.8, linestyle="--", alpha=0.6)
    if top:
        for j, label in enumerate(labels):
            ax.text((boundaries[j] + boundaries[j + 1]) / 2, 1.07, label, ha="center", va="bottom", fontsize=7)


def _p_limits(ax: Any) -> None:
    """y from 0 (random policy) to 1 (best), widened to show a curve below random (p < 0 is unclipped)."""
    low, high = ax.get_ylim()
    ax.set_ylim(min(-0.05, low), max(1.05, high))


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """One panel per task: p_i(t) over the run, task boundaries dashed, the stages that train the task
    shaded, and its reference run from scratch (dotted) drawn in each of those stages."""
    tasks, stages, bounds = results["tasks"], results["stages"], results["boundaries"]
    labels = stage_labels(tasks, stages)
    fig, axes = pyplot().subplots(len(tasks), 1, figsize=(8, 1.7 * len(tasks) + 0.6), sharex=True, squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[:, 0], tasks)):
        curve = results["curves"][name]
        ax.plot(curve["env_steps"], curve["p"], marker=".", color=f"C{i}", label=name)
        ref = results["reference_curves"].get(name)
        for j, u in enumerate(stages):
            if u != i:
                continue
            ax.axvspan(bounds[j], bounds[j + 1], color=f"C{i}", alpha=0.08)
            if ref is not None:
                ax.plot(np.array(ref["env_steps"]) + bounds[j], ref["p"], color="gray", linestyle=":",
                        label="from scratch" if j == stages.index(i) else None)
        _boundaries(ax, bounds, labels, top=i == 0)
        _p_limits(ax)
        ax.set_ylabel("p (random 0, best 1)", fontsize=7)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("env steps")
    fig.suptitle(f"{results['sequence']}: {results['strategy']}, seed {results['seed']}", fontsize=9)
    save_figure(fig, path, dpi=100)


def plot_matrices(matrices: dict[str, np.ndarray], row_labels: list[str], tasks: list[str], path: Path) -> None:
    """Heatmaps of performance matrices M[j, i] = p_i at the end of stage j, one per strategy."""
    n = len(matrices)
    fig, axes = pyplot().subplots(1, n, figsize=(0.9 * len(tasks) * n + 1.8 * n, 0.45 * len(row_labels) + 1.6),
                             squeeze=False, constrained_layout=True)
    for col, (ax, (name, matrix)) in enumerate(zip(axes[0], matrices.items())):
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (j, i), value in np.ndenumerate(matrix):
            ax.text(i, j, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 else "black")
        ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(row_labels)), row_labels if col == 0 else [], fontsize=7)
        ax.set_xlabel("evaluated task", fontsize=8)
        if col == 0:
            ax.set_ylabel("after training stage", fontsize=8)
        ax.set_title(name, fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.03)
    save_figure(fig, path, dpi=100, bbox_inches="tight")


def _stack(runs: list[dict[str, Any]], get: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and std over runs of a series whose x values agree (runs that differ are left out)."""
    series = [get(r) for r in runs]
    series = [s for s in series if s is not None and len(s[0])]
    if not series:
        return None
    x = series[0][0]
    ys = np.array([s[1] for s in series if len(s[0]) == len(x) and np.allclose(s[0], x)])
    return np.asarray(x), ys


def plot_summary_curves(by_strategy: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """One panel per strategy: every task's p_i(t), mean over seeds with the std shaded."""
    fig, axes = pyplot().subplots(len(by_strategy), 1, figsize=(9, 2.4 * len(by_strategy) + 0.4), squeeze=False,
                             sharex=True)
    for ax, (strategy, runs) in zip(axes[:, 0], by_strategy.items()):
        first = runs[0]
        for i, name in enumerate(first["tasks"]):
            x, ys = _stack(runs, lambda r, name=name: (r["curves"][name]["env_steps"], r["curves"][name]["p"]))
            mean, std = ys.mean(0), ys.std(0)
            ax.plot(x, mean, color=f"C{i}", label=name)
            ax.fill_between(x, mean - std, mean + std, color=f"C{i}", alpha=0.15)
        _boundaries(ax, first["boundaries"], stage_labels(first["tasks"], first["stages"]), top=True)
        _p_limits(ax)
        ax.set_ylabel(f"{strategy}\np (n={len(runs)})", fontsize=8)
    axes[0, 0].legend(fontsize=7, ncol=len(by_strategy[next(iter(by_strategy))][0]["tasks"]), loc="upper right",
                      bbox_to_anchor=(1.0, 1.35))
    axes[-1, 0].set_xlabel("env steps")
    save_figure(fig, path, dpi=100)


def plot_summary_plasticity(by_strategy: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Dormant fraction (top) and effective rank (bottom) per module over the run, mean over seeds."""
    fig, axes = pyplot().subplots(2, len(by_strategy), figsize=(4 * len(by_strategy), 5), squeeze=False)
    for col, (strategy, runs) in enumerate(by_strategy.items()):
        for row, key in enumerate(("dormant", "effective_rank")):
            ax = axes[row, col]
            for m, module in enumerate(MODULES):
                stacked = _stack(runs, lambda r, module=module, key=key: (
                    [p["env_steps"] for p in r["plasticity"]], [p[module][key] for p in r["plasticity"]]))
                if stacked is None:
                    continue
                x, ys = stacked
                ax.plot(x, ys.mean(0), color=f"C{m}", label=module)
            _boundaries(ax, runs[0]["boundaries"], [], top=False)
            ax.set_title(f"{strategy}: {key.replace('_', ' ')}", fontsize=9)
            ax.set_xlabel("env steps", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    save_figure(fig, path, dpi=100)


# --------------------------------------------------------------------------------------------- summary


def _fmt(values: list[float], digits: int = 2) -> str:
    """Mean over seeds, ± the half-width of its 95% t interval where there are two seeds or more."""
    mean, half, n = cm.interval95(values)
    if n == 0:
        return "-"
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _order(strategies: list[str]) -> list[str]:
    rank = {"fifo": 0, "reservoir": 1, "mix": 2}
    return sorted(strategies, key=lambda s: (rank.get(s.split("+")[0], 9), s))


def aggregate(by_strategy: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per strategy: every scalar metric as {mean, std, n, ci95 (the 95% interval's half-width)} over seeds,
    and per-stage values likewise."""
    out = {}
    for strategy, runs in by_strategy.items():
        metrics, nan = [r["metrics"] for r in runs], float("nan")
        scalar = {key: [m[key] for m in metrics] for key in ("average_performance", "forgetting_mean",
                                                            "forward_transfer_mean", "learning_savings_later",
                                                            "relearning_savings")}
        scalar["wall_min"] = [r["wall_s"] / 60 for r in runs]
        scalar.update({f"wm_forgetting_{shown}": [m["wm_forgetting_mean"][shown] for m in metrics]
                       for shown in WM_SHOWN})
        scalar.update({f"{key}_{module}": [m["plasticity_final"].get(module, {}).get(key, nan) for m in metrics]
                       for module in MODULES for key in ("dormant", "effective_rank")})
        scalar.update({f"{key}_{when}_boundary": [m["plasticity_around_boundaries"][when][key]["all"] for m in metrics]
                       for when in ("before", "after_reset", "next") for key in ("dormant", "effective_rank")})
        per_stage = {key: {label: [m[key].get(label, nan) for m in metrics] for label in metrics[0][key]}
                     for key in ("p_end_of_own_stage", "forgetting", "auc", "reference_auc", "forward_transfer",
                                 "steps_to_learn", "reference_steps_to_learn", "learning_savings")}
        per_stage["p_final"] = {t: [m["p_final"][t] for m in metrics] for t in metrics[0]["p_final"]}
        out[strategy] = {
            "seeds": [r["seed"] for r in runs],
            "scalars": {k: dict(zip(("mean", "std", "n"), cm.mean_and_spread(v)), ci95=cm.interval95(v)[1], values=v)
                        for k, v in scalar.items()},
            "per_stage": per_stage,
            "matrix_mean": np.mean([m["matrix"] for m in metrics], 0).tolist(),
        }
    return out


def _fmt_steps(values: list[float]) -> str:
    """Env steps over seeds: mean (± 95% interval) of the seeds that reached the threshold, and how many did."""
    values = [v for v in values if not (isinstance(v, float) and np.isnan(v))]
    if not values:
        return "-"
    reached = [v for v in values if np.isfinite(v)]
    if not reached:
        return "not reached"
    mean, half, n = cm.interval95(reached)
    text = f"{mean:,.0f}" if n == 1 else f"{mean:,.0f} ± {half:,.0f}"
    return text if n == len(values) else f"{text} ({n} of {len(values)} reached)"


def plasticity_table(agg: dict[str, Any]) -> str:
    """Per replay strategy and plasticity method: dormant fraction and effective rank around task
    boundaries (mean of the modules and of the boundaries), and the learning speed; a row says "not run
    yet" for each combination without runs."""
    from .continual import PLASTICITY_METHODS, STRATEGIES

    rows = []
    names = [*[f"{b}{'' if m == 'none' else '+' + m}" for b in STRATEGIES for m in ("none", *PLASTICITY_METHODS)],
             *[s for s in _order(list(agg)) if s.split("+")[0] in STRATEGIES and "taskid" in s]]
    for name in names:
        if name not in agg:
            rows.append([name, "not run yet", *[""] * 6])
            continue
        sc = agg[name]["scalars"]

        def arrow(key: str, digits: int, sc: dict = sc) -> str:
            return " → ".join(_fmt(sc[f"{key}_{when}_boundary"]["values"], digits)
                              for when in ("before", "after_reset", "next"))

        rows.append([name, str(len(agg[name]["seeds"])), arrow("dormant", 3), arrow("effective_rank", 1),
                     *(_fmt(sc[key]["values"]) for key in ("learning_savings_later", "relearning_savings",
                                                           "forward_transfer_mean", "average_performance"))])
    return markdown_table(["strategy", "seeds", "dormant: boundary → reset → +1 eval", "eff. rank: boundary → reset "
                           "→ +1 eval", "learning savings, later tasks ↑", "relearning savings ↑",
                           "forward transfer ↑", "average performance ↑"], rows)


def markdown(agg: dict[str, Any], first: dict[str, Any]) -> str:
    """The summary tables: continual metrics, per task, model-level (world model, plasticity at the end),
    and each plasticity method's effect (around task boundaries, learning speed), then the notes."""
    strategies = _order(list(agg))

    def cells(strategy: str, keys: list[str], digits: int = 2) -> list[str]:
        return [_fmt(agg[strategy]["scalars"][key]["values"], digits) for key in keys]

    main = markdown_table(
        ["strategy", "seeds", "average performance ↑", "forgetting ↓", "forward transfer ↑",
         "learning savings, later tasks ↑", "relearning savings ↑", "wall min"],
        [[s, str(len(agg[s]["seeds"])), *cells(s, ["average_performance", "forgetting_mean", "forward_transfer_mean",
                                                   "learning_savings_later", "relearning_savings"]),
          *cells(s, ["wall_min"], 0)] for s in strategies])
    model = markdown_table(
        ["strategy", "WM forgetting: reconstruction", "reward", "KL", *[f"dormant {m}" for m in MODULES],
         *[f"eff. rank {m}" for m in MODULES]],
        [[s, *cells(s, [f"wm_forgetting_{shown}" for shown in WM_SHOWN], 3),
          *cells(s, [f"dormant_{m}" for m in MODULES], 3), *cells(s, [f"effective_rank_{m}" for m in MODULES], 1)]
         for s in strategies])
    return "\n\n".join([main, _per_task_table(agg, strategies), model,
                         "Plasticity methods:\n\n" + plasticity_table(agg), *_notes(first)])


def _per_task_table(agg: dict[str, Any], strategies: list[str]) -> str:
    """One row per strategy and stage: p, forgetting, AUC, forward transfer and learning speed, over seeds."""
    rows = []
    for s in strategies:
        ps = agg[s]["per_stage"]
        for label in ps["p_end_of_own_stage"]:
            rows.append([s, label, _fmt(ps["p_end_of_own_stage"][label]), _fmt(ps["p_final"][label.split("#")[0]]),
                         _fmt(ps["forgetting"].get(label, [])), _fmt(ps["auc"][label]),
                         _fmt(ps["reference_auc"][label]), _fmt(ps["forward_transfer"][label]),
                         _fmt_steps(ps["steps_to_learn"][label]), _fmt_steps(ps["reference_steps_to_learn"][label]),
                         _fmt(ps["learning_savings"][label])])
    return markdown_table(["strategy", "stage", "p end of own stage", "p end of run", "forgetting", "AUC",
                           "AUC from scratch", "forward transfer", f"steps to p ≥ {cm.LEARNED:g}", "from scratch",
                           "savings"], rows)


def _notes(first: dict[str, Any]) -> list[str]:
    """The paragraphs under the tables: the settings (with each task's score range) and how to read them."""
    b = first["budget"]
    stages = ", ".join(f"{label} {steps:,}" for label, steps in
                       zip(stage_labels(first["tasks"], first["stages"]), b["steps_per_stage"]))
    ranges = ", ".join(f"{name} [{low:g}, {high:g}]" for name, (low, high) in b["score_ranges"].items())
    source = b["score_range_source"]
    ranges = (f"p = (return - random-policy return) / (best return - random-policy return), per task: {ranges}"
              + (f" ({source.rstrip('.')})" if source else ""))
    notes = (f"Sequence `{first['sequence']}` ({b['obs']} observations, action repeat {b['action_repeat']}); env steps "
             f"per stage: {stages}. Agent preset `{b['preset']}` with {' '.join(f'`{o}`' for o in b['overrides'])}; "
             f"train ratio {b['train_ratio']:g}, batch {b['batch'][0]}x{b['batch'][1]}. Replay capacity "
             f"{b['replay_capacity']:,} steps for every strategy (mix: half recent FIFO, half reservoir). Every task "
             f"evaluated every {b['eval_every']:,} env steps with {b['eval_episodes']} episodes; end-of-stage values "
             f"average the last {b['end_evaluations']} evaluations. {ranges}; mean over seeds ± the half-width "
             "of its 95% t interval (an interval that includes zero, or two that overlap, is no difference found). "
             "Forgetting, forward transfer (against single-task runs from scratch with the same budget) and AUC as in "
             "Continual World; WM forgetting: held-out loss at the end of the run minus right after the task's own "
             "stage (positive: forgot); dormant: ReDo fraction (tau 0.025); effective rank of each module's features, "
             "both at the last evaluation.")
    speed = (f"Learning speed: the env steps from a stage's start to its task's first evaluation with p ≥ "
             f"{cm.LEARNED:g}, against the same task's single-task run from scratch (whose count includes its "
             "prefill of random steps, which later stages of a run do not need); savings 1 - steps / steps from "
             "scratch (1: learned when the stage began, 0: as fast as a fresh agent, negative: slower; a stage that "
             "never gets there counts its whole budget, an upper bound). Relearning savings: the stages that return "
             "to an earlier task (a second visit). Around each task boundary but the last, the dormant fraction and "
             "effective rank (mean of the four modules, then of the boundaries) at the boundary's evaluation, right "
             "after the plasticity method (the same probe batch; unchanged without one) and one evaluation later.")
    return [notes, speed]


def summarise(seq_dir: Path, out: Path | None = None, settings: str | None = None) -> dict[str, Any]:
    """Aggregate every ``<strategy>/seed_*/results.json`` under ``seq_dir`` (only those made with
    ``settings``, a ``settings_key``, when given): ``summary.md``, ``summary.json`` and summary plots there;
    with ``out``, the JSON is also written to ``out`` and the plots beside it as ``<out stem>.png``
    (curves), ``<out stem>_matrix.png`` and ``<out stem>_plasticity.png``."""
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    skipped = []
    for path in sorted(seq_dir.glob("*/seed_*/results.json")):
        results = read_json(path)
        if settings is not None and results.get("settings") != settings:
            skipped.append(str(path.parent))
            continue
        by_strategy.setdefault(results["strategy"], []).append(results)
    if skipped:
        print(f"left out of the summary, made with other settings: {', '.join(skipped)}")
    if not by_strategy:
        raise ValueError(f"no finished runs (results.json) under {seq_dir} with these settings.")
    by_strategy = {s: by_strategy[s] for s in _order(list(by_strategy))}
    agg = aggregate(by_strategy)
    first = next(iter(by_strategy.values()))[0]
    text = markdown(agg, first)
    plots = {"curves": seq_dir / "summary_curves.png", "matrix": seq_dir / "summary_matrix.png",
             "plasticity": seq_dir / "summary_plasticity.png"}
    plot_summary_curves(by_strategy, plots["curves"])
    plot_matrices({s: np.array(a["matrix_mean"]) for s, a in agg.items()},
                  stage_labels(first["tasks"], first["stages"]), first["tasks"], plots["matrix"])
    plot_summary_plasticity(by_strategy, plots["plasticity"])
    summary = {"benchmark": "continual", "sequence": first["sequence"], "tasks": first["tasks"],
               "stages": first["stages"], "boundaries": first["boundaries"], "budget": first["budget"],
               "machine": machine_info(), "strategies": agg, "markdown": text,
               "runs": [{"strategy": r["strategy"], "seed": r["seed"], "metrics": r["metrics"], "wall_s": r["wall_s"]}
                        for runs in by_strategy.values() for r in runs]}
    (seq_dir / "summary.md").write_text(f"# Continual benchmark: {first['sequence']}\n\n{text}\n")
    write_json(seq_dir / "summary.json", summary)
    if out is not None:
        write_json(out, summary)
        for name, src in plots.items():
            shutil.copyfile(src, out.with_name(out.stem + ("" if name == "curves" else f"_{name}") + ".png"))
    return summary


def readme_section(summary: dict[str, Any], source: str) -> str:
    """What ``benchmarks.readme`` puts in README.md for a summary JSON at ``source``."""
    stem = source.removesuffix(".json")
    return (summary["markdown"] + f"\n\nSource: `{source}` (tables), `{stem}.png` (per-task curves, mean ± std over "
            f"seeds), `{stem}_matrix.png` (performance matrices), `{stem}_plasticity.png`.\n\n"
            f"![curves]({stem}.png)\n\n![matrices]({stem}_matrix.png)")


# --------------------------------------------------------------------------------------------- references

BAR = 0.7  # the bar: a task's run from scratch reaches p >= 0.7 within its stage budget


def reference_rows(seq: dict[str, Any], reference_dirs: dict[int, dict[int, Path]]) -> list[dict[str, Any]]:
    """One row per task and seed: its single-task reference curve (mean eval return and p at every
    evaluation, normalised by the sequence's range of the task), p at the end of the stage as the benchmark
    counts it (mean of the last ``end_evaluations`` evaluations), p at the last evaluation, env steps to
    p >= ``cm.LEARNED``, and whether the end-of-stage p reaches ``BAR``; ``finished`` False while it runs."""
    rows = []
    for index, dirs in reference_dirs.items():
        task = seq["tasks"][index]
        ranges = (np.array([task["random_return"]]), np.array([task["best_return"]]))
        for seed, rundir in sorted(dirs.items()):
            row: dict[str, Any] = {"task": task["name"], "seed": seed, "rundir": str(rundir), "budget": task["steps"]}
            record = read_json(rundir / "run.json")
            row["finished"] = record is not None
            if record is not None:
                steps, perf = curves(record, ranges)
                end = cm.stage_end_values(steps, perf, np.array(record["boundaries"], float), seq["end_evaluations"])
                name = record["tasks"][0]  # the reference's own label of the task
                row.update(env_steps=steps.tolist(), p=perf[:, 0].tolist(),
                           returns=[float(np.mean(e["returns"][name])) for e in record["evaluations"]],
                           episode_returns=[e["returns"][name] for e in record["evaluations"]],
                           p_end_of_stage=float(end[-1, 0]), p_last=float(perf[-1, 0]),
                           steps_to_learn=cm.steps_to_reach(steps, perf[:, 0], 0.0, record["boundaries"][-1]),
                           reaches_bar=bool(end[-1, 0] >= BAR), wall_s=record["wall_s"])
            rows.append(row)
    return rows


def summarise_references(seq: dict[str, Any], reference_dirs: dict[int, dict[int, Path]], out: Path) -> dict[str, Any]:
    """Write the single-task references of a sequence to ``out`` (JSON, the README's source) and their
    curves beside it (``<out stem>.png``); returns the summary."""
    rows = reference_rows(seq, reference_dirs)
    summary = {"benchmark": "continual-references", "sequence": seq["name"], "bar": BAR,
               "learned_threshold": cm.LEARNED, "end_evaluations": seq["end_evaluations"],
               "eval_every": seq["eval_every"], "eval_episodes": seq["eval_episodes"],
               "budget_source": seq.get("budget_source", ""), "machine": machine_info(), "references": rows}
    write_json(out, summary)
    plot_references(summary, out.with_suffix(".png"))
    return summary


def plot_references(summary: dict[str, Any], path: Path) -> None:
    """p of every finished reference over its budget, with the bar dashed."""
    fig, ax = pyplot().subplots(figsize=(6.5, 3.2))
    for i, row in enumerate(r for r in summary["references"] if r["finished"]):
        ax.plot(row["env_steps"], row["p"], marker=".", color=f"C{i}", label=f"{row['task']} (seed {row['seed']})")
    ax.axhline(summary["bar"], color="black", linestyle="--", linewidth=0.8, label=f"bar p = {summary['bar']:g}")
    _p_limits(ax)
    ax.set_xlabel("env steps (from scratch, one task)")
    ax.set_ylabel("p (random 0, best 1)")
    ax.set_title(f"{summary['sequence']}: single-task references", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    save_figure(fig, path, dpi=100)


def references_section(summary: dict[str, Any], source: str) -> str:
    """What ``benchmarks.readme`` puts in README.md for a references JSON at ``source``: p (and the mean
    eval return) at every evaluation, the end-of-stage p, and the verdict against the bar."""
    finished = [r for r in summary["references"] if r["finished"]]
    steps = sorted({s for r in finished for s in r["env_steps"]})
    rows = []
    for r in summary["references"]:
        if not r["finished"]:
            rows.append([r["task"], str(r["seed"]), f"{r['budget']:,}", *["" for _ in steps], "not finished", "",
                         "", ""])
            continue
        at = dict(zip(r["env_steps"], zip(r["p"], r["returns"])))
        cells = [f"{at[s][0]:.2f} ({at[s][1]:.0f})" if s in at else "" for s in steps]
        verdict = "yes" if r["reaches_bar"] else "no"
        rows.append([r["task"], str(r["seed"]), f"{r['budget']:,}", *cells, f"{r['p_end_of_stage']:.2f}",
                     f"{r['p_last']:.2f}", _fmt_steps([r["steps_to_learn"]]), verdict])
    table = markdown_table(["task", "seed", "budget", *[f"{s / 1000:g}K" for s in steps],
                            f"p end of stage (last {summary['end_evaluations']})", "p last eval",
                            f"steps to p ≥ {summary['learned_threshold']:g}", f"≥ {summary['bar']:g}"], rows)
    stem = source.removesuffix(".json")
    return (table + f"\n\nEach cell: p (mean return of {summary['eval_episodes']} deterministic episodes) at that "
            f"many env steps of a single-task run from scratch (`{summary['sequence']}`'s settings; the first "
            "updates come after the random prefill). The bar is on the end-of-stage p, the mean of the last "
            f"{summary['end_evaluations']} evaluations, the value the benchmark's matrix and forgetting use. "
            f"Source: `{source}`, `{stem}.png`.\n\n![references]({stem}.png)")
