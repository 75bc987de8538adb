"""Learning evidence: train on a suite of tasks and judge each against a bar (README: "Learning evidence").

    python -m benchmarks.learning --suite cpu --out results/learning_cpu.json
    python -m benchmarks.learning --suite dmc-proprio --seeds 0 1 --parallel 2   # against DreamerV3's curves
    python -m benchmarks.learning --suite dmc-proprio --report-only   # results from the finished runs only
    python -m benchmarks.learning --tasks pendulum --seeds 0 1 2 --set agent.actor_critic.actor_lr=3e-5

Each (task, seed) is a ``python -m agent train`` run in ``<run root>/<task>`` (``<task>-seed<N>`` for seed
N), started by ``benchmarks.jobs`` (README "Learning evidence": reuse, resume, config checks). A task passes when
the seed mean of its final evaluation reaches its threshold; a ``dmc-proprio`` task when the seed mean of
DreamerV3's metric at 100K env steps (training episodes, 10K bin) reaches DreamerV3's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import statistics
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import jobs
from .common import (
    exit_status,
    machine_info,
    mean_or_none,
    panels,
    parser,
    read_json,
    read_jsonl,
    save_figure,
    write_json,
)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "dreamerv3_dmc.json"
CURVES = ROOT.parent / "shared" / "reference" / "dreamerv3_dmc_curves.json"
BIN = 10_000  # env steps per bin of DreamerV3's score curves
MARKS = (50_000, 100_000)  # the bins that the results and the README compare


@dataclass(frozen=True)
class Task:
    """One learning run and the bar it must clear."""

    name: str
    spec: str
    obs: str
    preset: str
    steps: int
    threshold: float  # mean of the last evaluations must reach this
    why: str  # where the threshold comes from
    overrides: list[str] = field(default_factory=list)


def dreamerv3_curve(task: str, section: str = "proprio") -> dict | None:
    """DreamerV3's curve of a DMC ``task`` (``x``, seed ``mean``, ``seeds``), or None where the reference has
    none. ``proprio`` curves are 10K bins; the file's ``vision`` entries are raw per-episode points (with nulls)."""
    curves = read_json(CURVES)
    return curves[section].get(task.replace("-", "_")) if curves else None


def dreamerv3_at(curve: dict | None, steps: int) -> dict[str, float | None]:
    """DreamerV3's seed mean and the lowest and highest seed in the bin ending at ``steps`` (None where the
    curve does not reach it)."""
    if curve is None or steps not in curve["x"]:
        return {"mean": None, "min": None, "max": None, "seeds": 0}
    i = curve["x"].index(steps)
    seeds = [s[i] for s in curve["seeds"] if i < len(s) and s[i] is not None]
    return {"mean": curve["mean"][i], "min": min(seeds, default=None), "max": max(seeds, default=None),
            "seeds": len(seeds)}


CPU_SCHEDULE = ["train.batch_length=32", "train.prefill=2000", "train.eval_episodes=3", "train.video_every=0",
                "train.checkpoint_every=5000", "train.threads=1"]

# The DMC proprio suite's one schedule. DreamerV3's published curves were trained with B16 x T64 at train
# ratio 512 (its 2024 code), i.e. 25,000 updates in 100,000 env steps (action repeat 2); B16 x T32 at ratio
# 256 makes as many updates, each replaying half as many steps, which keeps a run near 2 hours on one core.
DMC_PROPRIO_SCHEDULE = ["train.batch_length=32", "train.train_ratio=256", "train.eval_every=10000",
                        "train.eval_episodes=5", "train.video_every=0", "train.checkpoint_every=5000",
                        "train.threads=1"]
DMC_PROPRIO_TASKS = ["cartpole-balance", "cartpole-swingup", "reacher-easy", "pendulum-swingup", "finger-spin",
                     "walker-walk"]

SUITES = {
    "cpu": [
        Task("pendulum", "gym:Pendulum-v1", "state", "cpu", 15_000, -300.0,
             "random policy about -1200; Dreamer-class agents solve it near -150",
             [*CPU_SCHEDULE, "train.train_ratio=256", "train.eval_every=1000"]),
    ],
    "dmc-proprio": [
        Task(name.replace("-", "_"), f"dmc:{name}", "state", "cpu", 100_000,
             dreamerv3_at(dreamerv3_curve(name), 100_000)["mean"] if CURVES.exists() else float("nan"),
             "DreamerV3's seed mean at 100K env steps (training episodes, 10K bin)", DMC_PROPRIO_SCHEDULE)
        for name in DMC_PROPRIO_TASKS
    ],
    # Patch against CNN encoder from pixels on the same budget: small, to fit a CPU; also the checkpoints
    # that the world-model insight tools are shown on.
    "cpu-pixels": [
        Task(f"cartpole_balance_pixels_{encoder}", "dmc:cartpole-balance", "pixels", "cpu", 20_000, 800.0,
             "above doing nothing (the pole starts upright; see `trivial`); DreamerV3: 994 (vision, 500K steps)",
             [*CPU_SCHEDULE, "train.train_ratio=64", "train.eval_every=2500", "train.video_every=5000",
              f"agent.world_model.encoder.kind={encoder}"])
        for encoder in ("patch", "cnn")
    ],
    "gpu": [
        Task("cartpole_swingup_pixels", "dmc:cartpole-swingup", "pixels", "small", 100_000, 600.0,
             "DreamerV3 vision: 844 at 500K steps; 600 at 100K marks clear learning",
             ["agent.device=cuda", "train.eval_every=10000", "train.video_every=20000", "env.num_envs=4"]),
    ],
}
DREAMERV3_SUITES = ("dmc-proprio",)  # judged by DreamerV3's metric; the others by their thresholds


def run_name(task: Task, seed: int) -> str:
    """The run directory's name: the task's name for seed 0, ``<task>-seed<N>`` for seed N."""
    return task.name if seed == 0 else f"{task.name}-seed{seed}"


def task_config(task: Task, seed: int) -> dict:
    """The resolved config a run of ``task`` with ``seed`` trains with, as its ``config.json`` holds it."""
    from agent.config import RunConfig, apply_overrides, config_to_dict, preset

    flags = [f"env.spec={task.spec}", f"agent.seed={seed}", f"train.steps={task.steps}", f"env.obs={task.obs}"]
    return config_to_dict(apply_overrides(RunConfig(agent=preset(task.preset)), [*flags, *task.overrides]))


# Settings a run from state never reads (the image encoder's and decoder's): a change to them must not
# invalidate state runs.
IMAGE_ONLY = [*(f"agent.world_model.encoder.{k}" for k in ("kind", "tubelet_frames", "patch", "width", "depth",
                                                           "heads", "mlp_ratio", "pool_queries", "cnn_depth",
                                                           "cnn_min_res")),
              *(f"agent.world_model.decoder.{k}" for k in ("kind", "cnn_depth", "cnn_min_res", "patch_width",
                                                           "patch_depth", "patch_heads"))]


def config_mismatch(task: Task, seed: int, rundir: Path) -> list[str]:
    """The fields (dotted, with both values) where the run in ``rundir`` was configured differently from
    ``task``; the budget (``train.steps``) aside, since a finished run may be extended, and for state runs
    the image networks' settings, which they never read. Empty when they agree or the directory holds no
    config yet."""
    from agent.config import RunConfig, config_diff, config_from_dict, config_to_dict

    saved = read_json(rundir / "config.json")
    if saved is None:
        return []
    run = config_to_dict(config_from_dict(saved, RunConfig))  # JSON lists as tuples
    skip = ["train.steps", *(IMAGE_ONLY if task.obs == "state" else [])]
    return [f"{k}: run {u!r}, task {v!r}" for k, u, v in config_diff(run, task_config(task, seed), skip=skip)]


def done(rundir: Path) -> dict | None:
    """A finished run's ``done.json`` (``steps``: the env steps it was trained for), or None while it is
    unfinished."""
    return read_json(rundir / "done.json")


def run_task(task: Task, seed: int, rundir: Path, fresh: bool, gpus: float = 1.0) -> jobs.Job | None:
    """The job that trains ``task`` with ``seed`` in ``rundir`` (None when a finished run of at least the
    task's steps is already there). A run that stopped early, or finished fewer steps than the task now asks
    for, is resumed: the job resumes whenever ``rundir`` holds a checkpoint when it starts (a retry after a
    crash too); ``fresh`` empties ``rundir`` instead. A run on CUDA declares ``gpus`` of a GPU; every run
    declares its torch threads as CPUs. Its config is checked before (``check_runs_before_start``)."""
    if fresh:
        jobs.clear(rundir)
    elif (done(rundir) or {}).get("steps", -1) >= task.steps:
        return None
    rundir = rundir.resolve()  # a job may start in another directory, or on another machine
    base = ("-m", "agent", "train", "--logdir", str(rundir), "--no-progress")
    fresh_argv = (*base, "--env", task.spec, "--preset", task.preset, "--steps", str(task.steps),
                  *(["--seed", str(seed)] if seed else []), "--set", f"env.obs={task.obs}", *task.overrides)
    cfg = task_config(task, seed)
    threads = cfg["train"]["threads"]
    rundir.mkdir(parents=True, exist_ok=True)
    return jobs.Job(run_name(task, seed), str(rundir), fresh_argv, (*base, "--resume", "--steps", str(task.steps)),
                    cpus=jobs.cpus_for_threads(threads),
                    gpus=gpus if cfg["agent"]["device"].startswith("cuda") else 0.0)


def metrics(rundir: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (a resume has already dropped those logged after its checkpoint)."""
    return read_jsonl(rundir / "metrics.jsonl")


def eval_curve(rundir: Path) -> list[dict[str, float]]:
    """The run's evaluations (deterministic policy): env steps and mean return of each."""
    return [{"env_steps": row["step"], "return": row["eval/return"]} for row in metrics(rundir)
            if "eval/return" in row]


def training_episodes(rundir: Path) -> list[tuple[int, float]]:
    """(env step at which it ended, return) of every training episode of a run."""
    return [(row["step"], row["episode/return"]) for row in metrics(rundir) if "episode/return" in row]


# What the actor's update saw, per bin (the last log in each): its entropy, the spread of its normalised
# advantages (to set beside the entropy term's weight), the return normaliser's scale (floor 1) and the
# critic's mean imagined value.
ACTOR_SIGNAL = {"entropy": "actor/entropy", "advantage_std": "actor/advantage_std",
                "return_scale": "actor/return_scale", "imagined_value": "imagine/value"}


def exploration(rundir: Path, width: int = BIN) -> dict[str, Any]:
    """What a run's exploring policy met, for sparse-reward tasks: its training episodes, how many had a
    non-zero return and when the first ended, and per bin what the actor's update saw (``ACTOR_SIGNAL``)."""
    episodes = training_episodes(rundir)
    nonzero = [step for step, ret in episodes if ret != 0]
    per_bin: dict[int, dict[str, float]] = {}
    for row in _periodic_logs(rundir):
        if "actor/entropy" in row:
            per_bin[-(-row["step"] // width) * width] = {
                name: row[key] for name, key in ACTOR_SIGNAL.items() if key in row}
    return {"episodes": len(episodes), "nonzero_episodes": len(nonzero),
            "first_nonzero_at": nonzero[0] if nonzero else None,
            "actor": [{"env_steps": k, **v} for k, v in sorted(per_bin.items())]}


def _periodic_logs(rundir: Path) -> list[dict]:
    """The loop's periodic logs (evaluation rows carry ``time/wall_s`` too, but never ``time/cpu_s``)."""
    return [row for row in metrics(rundir) if "time/wall_s" in row and "eval/return" not in row]


def cpu_seconds(rundir: Path) -> float | None:
    """The training process's CPU seconds over the whole run (its last ``time/cpu_s``), or None where the run
    did not log it from its first log on (runs begun before it was logged)."""
    timed = _periodic_logs(rundir)
    return timed[-1]["time/cpu_s"] if timed and all("time/cpu_s" in row for row in timed) else None


def wall_seconds(rundir: Path) -> float | None:
    """The run's wall seconds over all its parts (its last ``time/wall_s``: the loop adds each resumed part
    to the time before it, as of the checkpoint it resumed from), or None without a periodic log."""
    timed = _periodic_logs(rundir)
    return timed[-1]["time/wall_s"] if timed else None


def logged_steps(rundir: Path) -> int:
    """The env steps of a run's last periodic log (0 for a run that has none): where an unfinished run stands."""
    timed = _periodic_logs(rundir) if (rundir / "metrics.jsonl").exists() else []
    return int(timed[-1]["step"]) if timed else 0


def cpu_pace(rundirs: list[Path]) -> float | None:
    """The median CPU seconds per env step of the finished runs among ``rundirs`` that logged their CPU time
    (None: no such run)."""
    rates = []
    for rundir in rundirs:
        finished, cpu = done(rundir), cpu_seconds(rundir) if (rundir / "metrics.jsonl").exists() else None
        if finished and cpu and finished.get("steps"):
            rates.append(cpu / finished["steps"])
    return statistics.median(rates) if rates else None


def time_left(left: list[tuple[Task, int]], root: Path) -> str:
    """A line on the env steps a sweep has ``left`` (per run: its task and steps) and the CPU hours they take,
    each at the median pace of its task's finished runs (its seeds) under ``root``, or else of all there."""
    everyone = cpu_pace(sorted(root.iterdir()) if root.is_dir() else [])
    hours, untimed = 0.0, []
    for task, steps in left:
        pace = cpu_pace([rundir for _, rundir in seed_dirs(root, task)]) or everyone
        if pace is None:
            untimed.append(task.name)
        else:
            hours += steps * pace / 3600
    text = f"{sum(steps for _, steps in left):,} env steps left"
    if len(untimed) == len(left):
        return text + "; no finished run under the root yet that logged its CPU time to estimate by"
    skipped = f"; not counting runs of {', '.join(sorted(set(untimed)))}" if untimed else ""
    return (text + f", about {hours:.1f} CPU hours at the pace of each task's finished runs here (of all finished "
            f"runs here for a task with none){skipped}")


def run_commits(rundir: Path) -> list[str]:
    """The commits a run was started and resumed at (its ``starts.jsonl``; "+dirty" marks uncommitted changes)."""
    return [f"{s['git_commit']}{'+dirty' if s.get('git_dirty') else ''}" for s in read_jsonl(rundir / "starts.jsonl")]


def binned_returns(episodes: list[tuple[int, float]], steps: int, width: int = BIN) -> list[dict]:
    """DreamerV3's metric: for x = width, 2 width, ... up to ``steps``, the mean return of the episodes that
    ended in (x - width, x] env steps, and how many did; ``return`` is None for a bin in which none ended.
    Episodes after the last whole bin are left out."""
    bins: dict[int, list[float]] = {}
    for step, ret in episodes:
        bins.setdefault(-(-step // width) * width, []).append(ret)  # right edge: an episode ending at x counts for x
    return [{"env_steps": x, "return": sum(bins[x]) / len(bins[x]) if x in bins else None,
             "episodes": len(bins.get(x, []))} for x in range(width, steps + 1, width)]


def bin_value(curve: list[dict], steps: int) -> float | None:
    """The value of the bin ending at ``steps`` (None when the curve has no such bin or it is empty)."""
    return next((p["return"] for p in curve if p["env_steps"] == steps), None)


def trivial_returns(task: Task) -> dict[str, float]:
    """Mean return of a uniform-random and a do-nothing policy (zero force, or the first discrete action)
    over the task's evaluation episodes (the run's evaluation seed, episode count and action repeat; state
    observations: the return does not depend on them)."""
    import numpy as np

    import envs
    from agent.config import RunConfig, apply_overrides
    from agent.loop import EVAL_SEED
    from agent.rollout import episode_returns

    cfg = apply_overrides(RunConfig(), task.overrides)
    out = {}
    for policy in ("random", "zero"):
        with contextlib.closing(envs.make_vec(task.spec, 1, obs="state", action_repeat=cfg.env.action_repeat)) as env:
            space = env.action_space  # one env's actions, with the batch axis
            space.seed(0)
            action = None if policy == "random" else np.zeros(space.shape, space.dtype)
            returns = episode_returns(env, lambda obs, first, a=action, s=space: s.sample() if a is None else a,
                                      cfg.train.eval_episodes, seed=EVAL_SEED)
        out[policy] = sum(returns) / len(returns)
    return out


def reference_score(task: Task) -> dict | None:
    """DreamerV3's published final scores of a DMC task (``proprio_500k``, ``vision_500k``, ...), if any."""
    reference = read_json(REFERENCE) if task.spec.startswith("dmc:") else None
    return reference["tasks"].get(task.spec[4:].replace("-", "_")) if reference else None


def by_task(runs: list[dict]) -> dict[str, list[dict]]:
    """The runs grouped by task name, in the order the tasks first appear (seed order within each)."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["name"], []).append(run)
    return groups


def plot(runs: list[dict], path: Path) -> None:
    """One panel per task: each seed's eval curve, the threshold, the trivial policies and DreamerV3's score."""
    groups = by_task(runs)
    fig, axes = panels(len(groups), len(groups))
    for ax, seeds in zip(axes, groups.values()):
        for r in seeds:
            ax.plot([p["env_steps"] for p in r["curve"]], [p["return"] for p in r["curve"]], marker="o",
                    markersize=3, label=f"eval return (ours), seed {r['seed']}")
        run = seeds[0]
        ax.axhline(run["threshold"], color="gray", linestyle="--", label=f"threshold {run['threshold']:g}")
        for (policy, value), style in zip(run["trivial"].items(), ("-.", (0, (1, 3)))):
            ax.axhline(value, color="tab:red", linestyle=style, linewidth=1, label=f"{policy} policy {value:.0f}")
        if run["dreamerv3"]:
            key = "vision_500k" if run["obs"] == "pixels" else "proprio_500k"
            ax.axhline(run["dreamerv3"][key], color="green", linestyle=":",
                       label=f"DreamerV3 {key}: {run['dreamerv3'][key]}")
        ax.set(title=f"{run['spec']} ({run['obs']}, {run['preset']})", xlabel="env steps", ylabel="return")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_against_dreamerv3(runs: list[dict], tasks: list[dict], path: Path) -> None:
    """One panel per task: each seed's binned training-episode returns (solid) and deterministic eval
    (dashed) over DreamerV3's seed mean and min-max band, up to our budget in env steps."""
    import matplotlib.ticker

    groups, nan = by_task(runs), float("nan")
    fig, axes = panels(len(tasks), min(3, len(tasks)))
    for ax, task in zip(axes, tasks):
        seeds = groups[task["name"]]
        budget = max(r["steps"] for r in seeds)
        curve = dreamerv3_curve(task["spec"].split(":", 1)[1])
        if curve is not None:
            points = [dreamerv3_at(curve, x) for x in curve["x"] if x <= budget]
            xs = curve["x"][:len(points)]
            ax.fill_between(xs, [nan if p["min"] is None else p["min"] for p in points],
                            [nan if p["max"] is None else p["max"] for p in points], color="gray", alpha=0.25,
                            label=f"DreamerV3, min-max of {len(curve['seeds'])} seeds")
            ax.plot(xs, [p["mean"] for p in points], color="black", label="DreamerV3, seed mean")
        for i, r in enumerate(seeds):
            ax.plot([p["env_steps"] for p in r["train_curve"]],
                    [nan if p["return"] is None else p["return"] for p in r["train_curve"]], color=f"C{i}",
                    marker="o", markersize=3, label=f"ours seed {r['seed']}, training episodes")
            evals = [p for p in r["curve"] if p["env_steps"] <= budget]
            ax.plot([p["env_steps"] for p in evals], [p["return"] for p in evals], color=f"C{i}", linestyle="--",
                    linewidth=1, label=f"ours seed {r['seed']}, eval (deterministic policy)")
        ax.set_xlim(0, budget)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:.0f}K"))
        verdict = "at or above" if task["passed"] else "below"
        ax.set_title(f"{task['spec']}: {verdict} DreamerV3 at {MARKS[-1] // 1000}K", fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"return (training episodes, {BIN // 1000}K bins)", fontsize=8)
    axes[0].legend(fontsize=6)  # the same lines in every panel
    save_figure(fig, path)


def select_tasks(suite: str, names: list[str] | None, extra: list[str]) -> tuple[list[Task], str]:
    """The suite's tasks (those named, if any) with ``extra`` overrides appended, and the name suffix that
    keeps an ablation's runs and results apart from the suite's own ("" without overrides). An ablation may
    change the budget too (``--set train.steps=N``): the task's steps follow it. ValueError for an unknown
    task or a bad override."""
    from agent.config import RunConfig, apply_overrides

    known = [t.name for t in SUITES[suite]]
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} in suite {suite!r}; it has {known}")
    tasks = [t for t in SUITES[suite] if not names or t.name in names]
    if not extra:
        return tasks, ""
    out = []
    for t in tasks:
        overrides = [*t.overrides, *extra]
        steps = apply_overrides(RunConfig(), [f"train.steps={t.steps}", *overrides]).train.steps
        out.append(replace(t, overrides=overrides, steps=steps))
    return out, "-" + hashlib.sha1(" ".join(extra).encode()).hexdigest()[:8]


def seed_dirs(root: Path, task: Task) -> list[tuple[int, Path]]:
    """(seed, run directory) of every seed of ``task`` under ``root``, seed order; seed 0's may not exist."""
    return [(0, root / task.name)] + sorted(
        (int(d.name.rsplit("-seed", 1)[1]), d) for d in root.glob(f"{task.name}-seed*")
        if d.name.rsplit("-seed", 1)[1].isdigit())


def check_runs_before_start(pending: list[tuple[Task, int]], suite: list[Task], root: Path, fresh: bool) -> None:
    """Before any run starts: every run this call would reuse or resume, and every finished one the results
    gather, must match its task (those that ``fresh`` retrains aside); ValueError names the first that does
    not, with the fields that differ."""
    checked = {root / run_name(t, seed): (t, seed) for t, seed in pending}
    checked.update({rundir: (t, seed) for t in suite for seed, rundir in seed_dirs(root, t) if done(rundir)})
    retrained = {root / run_name(t, seed) for t, seed in pending} if fresh else set()
    for rundir, (task, seed) in checked.items():
        diff = [] if rundir in retrained else config_mismatch(task, seed, rundir)
        if diff:
            raise ValueError(f"{rundir} was trained with a different config than task {task.name!r} now asks "
                             f"for ({'; '.join(diff)}); pass --fresh to retrain it, or move it away")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--suite", choices=list(SUITES), default="cpu", help="which tasks to run")
    p.add_argument("--tasks", nargs="*", help="run only these task names of the suite")
    p.add_argument("--rundir", default=None,
                   help="where the training runs go (default runs/learning; runs/dmc_proprio for dmc-proprio)")
    p.add_argument("--fresh", action="store_true", help="discard earlier runs of these tasks")
    p.add_argument("--out", default=None,
                   help="results JSON (default results/learning_<suite>.json, dashes as underscores)")
    p.add_argument("--report-only", action="store_true",
                   help="start no run: write the results from the finished runs under the run root")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seeds per task (runs <task> for seed 0, <task>-seed<N> for seed N); a task is judged "
                        "on the mean over its seeds")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides added to every task, for an ablation; its runs go to "
                        "<rundir>-<hash> and its results to results/learning_<suite>-<hash>.json")
    jobs.add_arguments(p)
    args = p.parse_args(argv)
    where: dict[str, Any] = {}
    # A bad task or override, a run unlike its task, a directory another sweep writes, a bad runner option:
    # one line on stderr, exit status 2. Errors while writing the results keep their traceback.
    status = exit_status(lambda: _train(args, where))
    return status or _report(args, **where)


def _train(args: argparse.Namespace, where: dict[str, Any]) -> int:
    """Train what the command asks for; fills ``where`` (suite, variant, root) for `_report`; 1 if a run failed."""
    if any(o.startswith("agent.seed=") for o in args.set):
        raise ValueError("give seeds with --seeds, not --set agent.seed=...")
    tasks, variant = select_tasks(args.suite, args.tasks, args.set)
    suite = select_tasks(args.suite, None, args.set)[0]
    root = Path((args.rundir or ("runs/dmc_proprio" if args.suite == "dmc-proprio" else "runs/learning")) + variant)
    pending = [] if args.report_only else [(t, seed) for t in tasks for seed in args.seeds]
    check_runs_before_start(pending, suite, root, args.fresh)
    where.update(suite=suite, variant=variant, root=root)
    return 1 if run_pending(pending, root, args) else 0


def _report(args: argparse.Namespace, suite: list[Task], variant: str, root: Path) -> int:
    """Write the results of every finished run of the suite under ``root``, not only this call's: running one
    task or one more seed adds to the results file instead of replacing it."""
    out = Path(args.out or f"results/learning_{args.suite.replace('-', '_')}{variant}.json")
    runs = finished_runs(root, suite)
    if not runs:
        print(f"no finished run of suite {args.suite!r} under {root}; nothing written", flush=True)
        return 1
    header = {"benchmark": "learning", "suite": args.suite, "added_overrides": args.set, "machine": machine_info()}
    data = write_results(out, header, runs, suite, dreamerv3=args.suite in DREAMERV3_SUITES)
    print(f"{data['table']}\nwrote {out} and {out.with_suffix('.png')}", flush=True)
    return 0 if all(t["passed"] for t in data["tasks"]) else 1


def run_pending(pending: list[tuple[Task, int]], root: Path, args: argparse.Namespace) -> list[str]:
    """Train every (task, seed) of ``pending`` that still needs it, through the job runner, holding the
    sweep lock of their run directories; returns the names of the runs that failed. Each run that finishes
    writes its ``done.json`` with the steps it was trained for."""
    if not pending:
        return []
    steps = {}

    def plan() -> list[jobs.Job]:
        planned, left = [], []
        for task, seed in pending:
            job = run_task(task, seed, root / run_name(task, seed), args.fresh, args.gpus_per_job)
            if job is not None:
                planned.append(job)
                steps[job.rundir] = task.steps
                at = logged_steps(Path(job.rundir))
                left.append((task, max(task.steps - at, 0)))
                print(f"run {job.name}: {task.spec} ({task.obs}, {task.preset}, {task.steps:,} steps"
                      f"{f'; logged up to {at:,}' if at else ''})", flush=True)
        if planned:
            print(time_left(left, root), flush=True)
        return planned

    def finished(outcome: jobs.Outcome) -> None:
        write_json(Path(outcome.job.rundir) / "done.json", {"steps": steps[outcome.job.rundir]})

    return jobs.run_sweep(args, [root / run_name(task, seed) for task, seed in pending], plan, finished)


def finished_runs(root: Path, tasks: list[Task]) -> list[dict]:
    """One entry per finished run (a ``done.json``) of ``tasks`` under ``root``, every seed, seed order:
    its eval curve (``curve``, deterministic policy) and its training episodes binned as DreamerV3 bins
    them (``train_curve``)."""
    runs = []
    for task in tasks:
        trivial = None
        for seed, rundir in seed_dirs(root, task):
            finished = done(rundir)
            if finished is None:
                continue
            curve = eval_curve(rundir)
            last = [p["return"] for p in curve][-2:]  # the final eval: the mean of the last two
            trivial = trivial or trivial_returns(task)
            runs.append({"name": task.name, "seed": seed, "spec": task.spec, "obs": task.obs,
                         "preset": task.preset, "steps": finished["steps"], "overrides": task.overrides,
                         "threshold": task.threshold, "threshold_why": task.why,
                         "final_return": sum(last) / len(last), "wall_s": wall_seconds(rundir),
                         "cpu_s": cpu_seconds(rundir), "curve": curve,
                         "train_curve": binned_returns(training_episodes(rundir), finished["steps"]),
                         "exploration": exploration(rundir),
                         "dreamerv3": reference_score(task), "trivial": trivial, "rundir": str(rundir),
                         "trained_at": run_commits(rundir)})
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    """Per task: its seeds, their final evals, the mean, and whether the mean clears the threshold."""
    out = []
    for name, seeds in by_task(runs).items():
        finals = [r["final_return"] for r in seeds]
        out.append({"name": name, "seeds": [r["seed"] for r in seeds], "final_returns": finals,
                    "final_return": mean_or_none(finals), "threshold": seeds[0]["threshold"],
                    "passed": mean_or_none(finals) >= seeds[0]["threshold"]})
    return out


def write_results(out: Path, header: dict, runs: list[dict], suite: list[Task], dreamerv3: bool) -> dict:
    """Write the results to ``out`` and their plot beside it; returns them with their README table. Judged by
    the final eval against each task's threshold, or with ``dreamerv3`` by DreamerV3's metric
    (``dreamerv3_results``)."""
    from .readme import learning, learning_dmc_proprio

    if dreamerv3:
        data = dreamerv3_results(header, runs, suite)
        draw, render = functools.partial(plot_against_dreamerv3, runs, data["tasks"]), learning_dmc_proprio
    else:
        data = {**header, "final_return": "mean of the last two evaluations; a task's is the mean over its seeds",
                "trivial": "mean return of uniform-random and zero actions on the evaluation episodes",
                "tasks": summarize(runs), "runs": runs}
        draw, render = functools.partial(plot, runs), learning
    write_json(out, data)
    draw(out.with_suffix(".png"))
    return {**data, "table": render(data, f"results/{out.stem}.json")}


def compare_with_dreamerv3(runs: list[dict]) -> list[dict]:
    """Per task, DreamerV3's metric at 50K and 100K env steps: ours (each seed's bin, ``ours_<k>_seeds``,
    and their mean ``ours_<k>``) against DreamerV3's seed mean and its lowest and highest seed in the same
    bin; ``passed`` when ``ours_100k`` reaches ``dreamerv3_100k``. Also each run's wall time, commits and
    deterministic final eval."""
    out = []
    for name, seeds in by_task(runs).items():
        curve = dreamerv3_curve(seeds[0]["spec"].split(":", 1)[1])
        task: dict[str, Any] = {"name": name, "spec": seeds[0]["spec"], "seeds": [r["seed"] for r in seeds]}
        for mark in MARKS:
            key = f"{mark // 1000}k"
            ours = [bin_value(r["train_curve"], mark) for r in seeds]
            ref = dreamerv3_at(curve, mark)
            task.update({f"ours_{key}": mean_or_none(ours), f"ours_{key}_seeds": ours, f"dreamerv3_{key}": ref["mean"],
                         f"dreamerv3_{key}_min": ref["min"], f"dreamerv3_{key}_max": ref["max"]})
        task["dreamerv3_seeds"] = len(curve["seeds"]) if curve else 0
        task["passed"] = None not in (task["ours_100k"], task["dreamerv3_100k"]) and \
            task["ours_100k"] >= task["dreamerv3_100k"]
        finals = [r["final_return"] for r in seeds]
        task.update({"final_evals": finals, "final_eval": mean_or_none(finals), "wall_s": [r["wall_s"] for r in seeds],
                     "cpu_s": [r["cpu_s"] for r in seeds], "trained_at": [r["trained_at"] for r in seeds]})
        out.append(task)
    return out


def suite_summary(tasks: list[dict], suite: list[Task]) -> dict:
    """The suite against DreamerV3: how many tasks reach its 100K seed mean, and the suite means of ours and
    DreamerV3's at 50K and 100K over the tasks that have a value on both sides at 100K."""
    judged = [t for t in tasks if None not in (t["ours_100k"], t["dreamerv3_100k"])]
    summary: dict[str, Any] = {
        "tasks_in_suite": len(suite), "tasks_run": [t["name"] for t in tasks],
        "tasks_not_run": [t.name for t in suite if t.name not in {x["name"] for x in tasks}],
        "runs": sum(len(t["seeds"]) for t in tasks), "seeds": {t["name"]: t["seeds"] for t in tasks},
        "tasks_in_mean": [t["name"] for t in judged],
        "at_or_above_dreamerv3_100k": sum(t["passed"] for t in judged)}
    for mark in MARKS:
        key = f"{mark // 1000}k"
        pairs = [(t[f"ours_{key}"], t[f"dreamerv3_{key}"]) for t in judged
                 if None not in (t[f"ours_{key}"], t[f"dreamerv3_{key}"])]
        summary[f"ours_{key}_mean"] = mean_or_none([a for a, _ in pairs])
        summary[f"dreamerv3_{key}_mean"] = mean_or_none([b for _, b in pairs])
    return summary


def dreamerv3_results(header: dict, runs: list[dict], suite: list[Task]) -> dict:
    """Results judged by DreamerV3's metric against its published proprio curves (a task passes when it
    reaches DreamerV3's seed mean at 100K env steps)."""
    tasks = compare_with_dreamerv3(runs)
    reference = (read_json(CURVES) or {}).get("source")
    return {**header,
            "metric": f"DreamerV3's: the mean return of the training episodes (exploring policy) that "
                      f"ended in the {BIN:,} env steps up to x, i.e. in (x - {BIN:,}, x]; null: none "
                      f"ended there. ours_<k>: the mean over seeds of the bin ending at k env steps; "
                      f"dreamerv3_<k>: DreamerV3's seed mean in that bin (_min, _max: its lowest and "
                      f"highest seed); passed: ours_100k >= dreamerv3_100k",
            "curves": {"train_curve": "DreamerV3's metric, per bin (env_steps: the bin's right edge)",
                       "curve": "eval (deterministic policy): mean return of the evaluation episodes"},
            "reference": {"file": os.path.relpath(CURVES, ROOT), "section": "proprio", "source": reference,
                          "note": "only the proprio section is read: the file's vision entries are "
                                  "per-episode points, not 10K bins"},
            "bin": BIN, "summary": suite_summary(tasks, suite), "tasks": tasks, "runs": runs}


if __name__ == "__main__":
    sys.exit(main())
