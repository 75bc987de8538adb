"""Learning evidence: train on a small suite of tasks and check each against a threshold.

    python -m benchmarks.learning --suite cpu --out results/learning_cpu.json
    python -m benchmarks.learning --suite cpu-pixels --parallel 1 --out results/learning_cpu_pixels.json
    python -m benchmarks.learning --suite gpu --out results/learning_gpu.json   # a CUDA machine
    python -m benchmarks.learning --tasks cartpole_balance --set agent.actor_critic.actor_lr=1e-4   # an ablation
    python -m benchmarks.learning --tasks cartpole_balance --seeds 0 1 2    # more seeds of a task

Each task is a real ``python -m agent train`` run in its own process (runs go in parallel, one torch
thread each, up to ``--parallel``). The eval returns it logs (deterministic policy) are read back from
its ``metrics.jsonl`` and written, with the wall time and DreamerV3's published score where one
exists, to the results JSON, together with the returns of two trivial policies on the same evaluation
episodes (uniform random actions, and doing nothing: zero force or the first discrete action) so a curve
can be read against them; the curves also go to a PNG next to it. A run directory that already
holds a finished run is reused (or resumed, when the task now asks for more steps), so an interrupted
benchmark picks up where it stopped (``--fresh`` starts over). Seed 0 runs in ``<task>``, seed N in
``<task>-seed<N>``; the results file gathers every finished run under the run root, and a task passes
when the mean of its seeds' final evaluations reaches its threshold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .common import machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "dreamerv3_dmc.json"
CURVES = ROOT.parent / "shared" / "reference" / "dreamerv3_dmc_curves.json"


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


def dreamerv3_mean_at(task: str, steps: int, kind: str = "proprio") -> float:
    """DreamerV3's seed-mean training-episode return in the 10,000-step bin ending at ``steps``."""
    curve = json.loads(CURVES.read_text())[kind][task.replace("-", "_")]
    return curve["mean"][curve["x"].index(steps)]


SUITES = {
    "cpu": [
        Task("pendulum", "gym:Pendulum-v1", "state", "cpu", 15_000, -300.0,
             "random policy about -1200; Dreamer-class agents solve it near -150",
             [*CPU_SCHEDULE, "train.train_ratio=256", "train.eval_every=1000"]),
    ],
    "dmc-proprio": [
        Task(name.replace("-", "_"), f"dmc:{name}", "state", "cpu", 100_000,
             dreamerv3_mean_at(name, 100_000) if CURVES.exists() else float("nan"),
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


def run_name(task: Task, seed: int) -> str:
    """The run directory's name: the task's name for seed 0, ``<task>-seed<N>`` for seed N."""
    return task.name if seed == 0 else f"{task.name}-seed{seed}"


def task_config(task: Task, seed: int) -> dict:
    """The resolved config a run of ``task`` with ``seed`` trains with, as its ``config.json`` holds it."""
    from agent.config import RunConfig, apply_overrides, config_to_dict, preset

    flags = [f"env.spec={task.spec}", f"agent.seed={seed}", f"train.steps={task.steps}", f"env.obs={task.obs}"]
    return config_to_dict(apply_overrides(RunConfig(agent=preset(task.preset)), [*flags, *task.overrides]))


def config_mismatch(task: Task, seed: int, rundir: Path) -> list[str]:
    """The fields (dotted, with both values) where the run in ``rundir`` was configured differently from
    ``task``; the budget (``train.steps``) aside, since a finished run may be extended. Empty when they agree
    or the directory holds no config yet."""
    from agent.config import RunConfig, config_diff, config_from_dict, config_to_dict

    path = rundir / "config.json"
    if not path.exists():
        return []
    run = config_to_dict(config_from_dict(json.loads(path.read_text()), RunConfig))  # older runs: new fields default
    diff = config_diff(run, task_config(task, seed), skip=["train.steps"])
    return [f"{k}: run {u!r}, task {v!r}" for k, u, v in diff]


def check_config(task: Task, seed: int, rundir: Path) -> None:
    """Refuse to reuse or resume a run that the task, as now defined, would not have trained."""
    diff = config_mismatch(task, seed, rundir)
    if diff:
        raise ValueError(f"{rundir} was trained with a different config than task {task.name!r} now asks for "
                         f"({'; '.join(diff)}); pass --fresh to retrain it, or move it away")


def run_task(task: Task, seed: int, rundir: Path, fresh: bool) -> subprocess.Popen | None:
    """Start the training run (None when a finished run of at least the task's steps is already there).
    A run that stopped early, or finished fewer steps than the task now asks for, is resumed. A run
    configured differently from the task is an error unless ``fresh``."""
    if not fresh:
        check_config(task, seed, rundir)
    if not fresh and (rundir / "done.json").exists() and run_steps(rundir) >= task.steps:
        return None
    if fresh and rundir.exists():
        import shutil

        shutil.rmtree(rundir)
    resume = (rundir / "checkpoint.pt").exists()
    cmd = [sys.executable, "-m", "agent", "train", "--logdir", str(rundir), "--no-progress"]
    if resume:
        cmd += ["--resume", "--steps", str(task.steps)]
    else:
        cmd += ["--env", task.spec, "--preset", task.preset, "--steps", str(task.steps),
                *(["--seed", str(seed)] if seed else []), "--set", f"env.obs={task.obs}", *task.overrides]
    rundir.mkdir(parents=True, exist_ok=True)
    log = open(rundir / "stdout.log", "a")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def run_steps(rundir: Path) -> int:
    """The env steps a finished run was trained for: its done.json, or for older runs the last step its
    metrics.jsonl logged (not config.json, which names the target of the latest start)."""
    done = json.loads((rundir / "done.json").read_text())
    if "steps" in done:
        return done["steps"]
    return max(json.loads(line)["step"] for line in (rundir / "metrics.jsonl").read_text().splitlines() if line)


def eval_curve(rundir: Path) -> list[dict[str, float]]:
    curve = []
    for line in (rundir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval/return" in row:
            curve.append({"env_steps": row["step"], "return": row["eval/return"]})
    return curve


def final_return(curve: list[dict[str, float]], up_to: float = float("inf")) -> float:
    """A run's final eval: the mean of its last two evaluations (those at or before ``up_to`` env steps)."""
    last = [p["return"] for p in curve if p["env_steps"] <= up_to][-2:]
    return sum(last) / len(last)


def run_commits(rundir: Path) -> list[str]:
    """The commits a run was started and resumed at (from its starts.jsonl; "+dirty" marks uncommitted
    changes); empty for runs older than that file."""
    path = rundir / "starts.jsonl"
    if not path.exists():
        return []
    starts = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [f"{s['git_commit']}{'+dirty' if s.get('git_dirty') else ''}" for s in starts]


def trivial_policy(name: str, space: Any, rng: Any) -> Callable[[dict, Any], Any]:
    """A one-env policy ``(obs, is_first) -> action``: ``random`` (uniform actions from ``rng``) or ``zero``
    (doing nothing: zero force, or the first discrete action)."""
    import numpy as np

    def act(obs: dict, is_first: np.ndarray) -> np.ndarray:
        if hasattr(space, "n"):
            return rng.integers(space.n, size=1) if name == "random" else np.zeros(1, np.int64)
        shape = (1, *space.shape)
        return (rng.uniform(-1, 1, shape) if name == "random" else np.zeros(shape)).astype(np.float32)

    return act


def trivial_returns(task: Task) -> dict[str, float]:
    """Mean return of a uniform-random and a do-nothing policy over the task's evaluation episodes (the
    run's evaluation seed, episode count and action repeat; state observations: the return does not
    depend on them)."""
    import numpy as np

    import envs
    from agent.config import RunConfig, apply_overrides
    from agent.loop import EVAL_SEED
    from agent.rollout import episode_returns

    cfg = apply_overrides(RunConfig(), task.overrides)
    episodes, repeat = cfg.train.eval_episodes, cfg.env.action_repeat
    out = {}
    for policy in ("random", "zero"):
        env = envs.make_vec(task.spec, 1, obs="state", action_repeat=repeat)
        act = trivial_policy(policy, env.single_action_space, np.random.default_rng(0))
        try:
            returns = episode_returns(env, act, episodes, seed=EVAL_SEED)
        finally:
            env.close()
        out[policy] = sum(returns) / len(returns)
    return out


def reference_score(task: Task) -> dict | None:
    if not task.spec.startswith("dmc:") or not REFERENCE.exists():
        return None
    key = task.spec[4:].replace("-", "_")
    return json.loads(REFERENCE.read_text())["tasks"].get(key)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["name"] for r in runs))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        seeds = [r for r in runs if r["name"] == name]
        for r in seeds:
            ax.plot([p["env_steps"] for p in r["curve"]], [p["return"] for p in r["curve"]], marker="o",
                    markersize=3, label=f"eval return (ours), seed {r['seed']}")
        run = seeds[0]
        ax.axhline(run["threshold"], color="gray", linestyle="--", label=f"threshold {run['threshold']:g}")
        for (policy, value), style in zip(run.get("trivial", {}).items(), ("-.", (0, (1, 3)))):
            ax.axhline(value, color="tab:red", linestyle=style, linewidth=1, label=f"{policy} policy {value:.0f}")
        ref = run.get("dreamerv3")
        if ref:
            key = "vision_500k" if run["obs"] == "pixels" else "proprio_500k"
            ax.axhline(ref[key], color="green", linestyle=":", label=f"DreamerV3 {key}: {ref[key]}")
        ax.set_title(f"{run['spec']} ({run['obs']}, {run['preset']})")
        ax.set_xlabel("env steps")
        ax.set_ylabel("return")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def select_tasks(parser: argparse.ArgumentParser, suite: str, names: list[str] | None, extra: list[str]
                 ) -> tuple[list[Task], str]:
    """The suite's tasks (those named, if any) with ``extra`` overrides appended, and the name suffix that
    keeps an ablation's runs and results apart from the suite's own ("" without overrides)."""
    known = [t.name for t in SUITES[suite]]
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        parser.error(f"unknown task(s) {unknown} in suite {suite!r}; it has {known}")
    tasks = [t for t in SUITES[suite] if not names or t.name in names]
    if not extra:
        return tasks, ""
    from agent.config import RunConfig, apply_overrides

    try:
        apply_overrides(RunConfig(), extra)  # a bad key or value stops here, before any run starts
    except ValueError as err:
        parser.error(str(err))
    variant = "-" + hashlib.sha1(" ".join(extra).encode()).hexdigest()[:8]
    tasks = [replace(t, overrides=[*t.overrides, *extra]) for t in tasks]
    # An ablation may change the budget too (`--set train.steps=N`): the task's steps follow it.
    return [replace(t, steps=apply_overrides(RunConfig(), [f"train.steps={t.steps}", *t.overrides]).train.steps)
            for t in tasks], variant


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=list(SUITES), default="cpu", help="which tasks to run")
    parser.add_argument("--tasks", nargs="*", help="run only these task names of the suite")
    parser.add_argument("--rundir", default="runs/learning", help="where the training runs go")
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1, help="runs at a time")
    parser.add_argument("--fresh", action="store_true", help="discard earlier runs of these tasks")
    parser.add_argument("--out", default=None, help="results JSON (default results/learning_<suite>.json)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds per task (runs <task> for seed 0, <task>-seed<N> for seed N); a task passes "
                             "when the mean of its seeds' final evals clears the threshold")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides added to every task, for an ablation; its runs go to "
                             "<rundir>-<hash> and its results to results/learning_<suite>-<hash>.json")
    args = parser.parse_args(argv)
    tasks, variant = select_tasks(parser, args.suite, args.tasks, args.set)
    out = Path(args.out or f"results/learning_{args.suite}{variant}.json")
    root = Path(args.rundir + variant)

    if any(o.startswith("agent.seed=") for o in args.set):
        parser.error("give seeds with --seeds, not --set agent.seed=...")

    pending, running = [(t, seed) for t in tasks for seed in args.seeds], {}
    # Before any run starts: every run this call would reuse or resume, and every finished one the results
    # gather, must match its task (those that --fresh retrains aside).
    checked = {root / run_name(t, seed): (t, seed) for t, seed in pending}
    checked.update({rundir: (t, seed) for t in select_tasks(parser, args.suite, None, args.set)[0]
                    for seed, rundir in seed_dirs(root, t) if (rundir / "done.json").exists()})
    retrained = {root / run_name(t, seed) for t, seed in pending} if args.fresh else set()
    try:
        for rundir, (task, seed) in checked.items():
            if rundir not in retrained:
                check_config(task, seed, rundir)
    except ValueError as err:
        parser.error(str(err))
    while pending or running:
        while pending and len(running) < args.parallel:
            task, seed = pending.pop(0)
            name = run_name(task, seed)
            proc = run_task(task, seed, root / name, args.fresh)
            if proc is not None:
                running[name] = (proc, time.time(), task.steps)
                print(f"started {name}: {task.spec} ({task.obs}, {task.preset}, {task.steps:,} steps)", flush=True)
        time.sleep(5)
        for name, (proc, start, steps) in list(running.items()):
            rundir = root / name
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode != 0:
                print(f"{name} failed (exit {proc.returncode}); see {rundir / 'stdout.log'}", flush=True)
                return 1
            # A run extended to more steps adds this part's time to the earlier parts'.
            done = rundir / "done.json"
            earlier = json.loads(done.read_text())["wall_s"] if done.exists() else 0.0
            done.write_text(json.dumps({"wall_s": earlier + time.time() - start, "steps": steps}))
            print(f"finished {name} in {(time.time() - start) / 60:.1f} min", flush=True)

    # Every finished run of the suite under root goes in, not only this call's: running one task or one
    # more seed adds to the results file instead of replacing it.
    runs = finished_runs(root, select_tasks(parser, args.suite, None, args.set)[0])
    summary = summarize(runs)
    for t in summary:
        print(f"{t['name']:24s} final {t['final_return']:8.1f} (seeds {t['seeds']}: "
              f"{', '.join(f'{v:.0f}' for v in t['final_returns'])})  threshold {t['threshold']:8.1f}  "
              f"{'PASS' if t['passed'] else 'FAIL'}")
    write_json(out, {"benchmark": "learning", "suite": args.suite, "added_overrides": args.set,
                     "machine": machine_info(),
                     "final_return": "mean of the last two evaluations; a task's is the mean over its seeds",
                     "trivial": "mean return of uniform-random and zero actions on the evaluation episodes",
                     "tasks": summary, "runs": runs})
    plot(runs, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0 if all(t["passed"] for t in summary) else 1


def seed_dirs(root: Path, task: Task) -> list[tuple[int, Path]]:
    """(seed, run directory) of every seed of ``task`` under ``root``, seed order; seed 0's may not exist."""
    return [(0, root / task.name)] + sorted(
        (int(d.name.rsplit("-seed", 1)[1]), d) for d in root.glob(f"{task.name}-seed*")
        if d.name.rsplit("-seed", 1)[1].isdigit())


def finished_runs(root: Path, tasks: list[Task]) -> list[dict]:
    """One entry per finished run (a ``done.json``) of ``tasks`` under ``root``, every seed, seed order.
    A run configured differently from its task is an error."""
    runs = []
    for task in tasks:
        trivial = None
        for seed, rundir in seed_dirs(root, task):
            if not (rundir / "done.json").exists():
                continue
            check_config(task, seed, rundir)
            curve = eval_curve(rundir)
            final = final_return(curve)
            trivial = trivial or trivial_returns(task)
            runs.append({"name": task.name, "seed": seed, "spec": task.spec, "obs": task.obs,
                         "preset": task.preset, "steps": run_steps(rundir), "overrides": task.overrides,
                         "threshold": task.threshold, "threshold_why": task.why, "final_return": final,
                         "wall_s": json.loads((rundir / "done.json").read_text())["wall_s"], "curve": curve,
                         "dreamerv3": reference_score(task), "trivial": trivial, "rundir": str(rundir),
                         "trained_at": run_commits(rundir)})
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    """Per task: its seeds, their final evals, the mean, and whether the mean clears the threshold."""
    out = []
    for name in dict.fromkeys(r["name"] for r in runs):
        seeds = [r for r in runs if r["name"] == name]
        finals = [r["final_return"] for r in seeds]
        mean = sum(finals) / len(finals)
        out.append({"name": name, "seeds": [r["seed"] for r in seeds], "final_returns": finals,
                    "final_return": mean, "threshold": seeds[0]["threshold"],
                    "passed": mean >= seeds[0]["threshold"]})
    return out


if __name__ == "__main__":
    sys.exit(main())
