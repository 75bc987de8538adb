"""The continual task-sequence benchmark: one agent learns task after task; what does it forget, what
carries over, and does it stay able to learn?

    python -m benchmarks.continual --sequence pendulum-conflict --strategy reservoir --seeds 0 1 2
    python -m benchmarks.continual --sequence pendulum-conflict --strategy fifo reservoir mix --seeds 0 1 2 \\
        --out results/continual_pendulum-conflict.json         # what `make bench-continual` runs (and physics)
    python -m benchmarks.continual --sequence my_sequence.json --strategy mix
    python -m benchmarks.continual --sequence pendulum-physics --references-only \\
        --out results/continual_references_pendulum-physics.json   # the references alone, their README table
    python -m benchmarks.continual --list                       # shipped sequences
    python -m benchmarks.continual --sequence pendulum-conflict --measure-random 100 --write  # score ranges
    python -m benchmarks.continual --sequence cheetah-dynamics --dreamerv3-budget   # DreamerV3's learned-at steps

Protocol (``../shared/DESIGN.md``, after Continual World): the agent trains on each task of the sequence
for its budget in turn (stages); every ``eval_every`` env steps, and at every stage boundary, it is
evaluated on every task of the sequence, past and future, with ``eval_episodes`` deterministic episodes.
At the end of each stage it records held-out episodes of that task (never put in the replay) and measures
the world model's loss on the held-out data of every task trained so far; with every evaluation it
measures dormant units and feature rank per module (``benchmarks.plasticity``). Performance is normalised
per task by its score range, stored in the sequence file: p = (return - random_return) / (best_return -
random_return), 0 for uniform-random actions (``--measure-random``), 1 for the task's best. Single-task
reference runs from scratch with the same budget, one per (task, seed, agent config), are cached under
``<root>/references/`` and reused by every strategy; forward transfer compares against them.

Strategies (``--strategy``) choose the replay: ``fifo`` (plain ring buffer, the fine-tuning baseline),
``reservoir`` (a uniform sample of the whole run) and ``mix`` (half the batch from a recent FIFO, half
from a reservoir). All three hold the same number of steps, the sequence's ``replay_capacity`` (``mix``:
half recent, half reservoir), which must be smaller than the run for FIFO to forget. ``+taskid``
(e.g. ``reservoir+taskid``) also appends a one-hot task id to the state observation; ``+shrink_perturb`` or
``+redo`` (e.g. ``fifo+redo``) sets the run's ``plasticity.method`` (``agent.plasticity``; applied at every
task boundary unless ``--set plasticity.every=K`` asks for every K updates).

Run directories: ``<root>/<sequence>/<strategy>/seed_<s>/`` hold ``job.json`` (the sequence, strategy and
resolved run config), the Trainer's ``config.json``, TensorBoard events and ``metrics.jsonl``
(``eval/<task>/return``, ``continual/*``), ``checkpoint.pt``, ``replay/``, ``heldout/``, ``run.json`` (the
raw record), ``results.json`` (curves, matrix, metrics), ``curves.png`` and ``matrix.png``.
``<root>/<sequence>/summary.{md,json}`` and ``summary_*.png`` aggregate every strategy and seed found
there. Interrupted runs resume from their checkpoints when the same command is run again; finished runs
are reused.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agent.config import _f, config_from_dict

from . import jobs as sweep
from .common import exit_status, parser, read_json, read_jsonl, write_json
from .continual_report import without_unused

SEQUENCES_DIR = Path(__file__).resolve().parent / "sequences"


# --------------------------------------------------------------------------------------------- sequences


@dataclass(frozen=True)
class Task:
    """One task of a sequence: an env spec plus a variant, its training budget and its score range."""

    name: str = _f("", "label used in TensorBoard tags, tables and plots; unique within a sequence")
    spec: str = _f("", "env spec, e.g. dmc:cartpole-swingup (see envs.make)")
    variant: dict = _f({}, "physics/reward variant, e.g. {'gravity': 0.5} (see envs.variants)")
    steps: int = _f(0, "env steps of training on this task (0: the sequence's steps_per_task)")
    random_return: float = _f(math.nan, "mean return of uniform-random actions (measure: --measure-random); p = 0")
    best_return: float = _f(math.nan, "the task's best return (DMC: 1000; Pendulum: 0); p = 1")


@dataclass(frozen=True)
class Sequence:
    """A task sequence and how it is run. Loaded from JSON: every field below is a key of that file."""

    name: str = _f("", "sequence name (default: the file name without .json)")
    description: str = _f("", "one line for humans")
    tasks: tuple[Task, ...] = _f((), "tasks in training order; all must share observation and action spaces")
    order: tuple[int, ...] = _f((), "task indices in training order, e.g. [0, 1, 0] (empty: the task list "
                                    "cycles times)")
    obs: str = _f("state", "observation: state, pixels or both (envs.make)")
    size: int = _f(64, "image height and width for pixels")
    action_repeat: int = _f(2, "simulator steps per agent step")
    steps_per_task: int = _f(20_000, "env steps of training per task unless a task sets its own")
    cycles: int = _f(1, "train on the task list this many times in a row (2: a second cycle)")
    preset: str = _f("cpu", "agent preset (agent.config.PRESETS)")
    overrides: tuple[str, ...] = _f((), "run-config overrides, e.g. train.train_ratio=128 (agent.config)")
    replay_capacity: int = _f(0, "replay steps for every strategy (0: one task's budget in agent steps)")
    eval_every: int = _f(0, "env steps between evaluations of every task (0: a tenth of the smallest budget)")
    eval_episodes: int = _f(3, "deterministic episodes per task and evaluation")
    end_evaluations: int = _f(3, "evaluations averaged for a task's value at the end of a stage")
    heldout_episodes: int = _f(2, "episodes of held-out data recorded at the end of each stage")
    score_range_source: str = _f("", "how the tasks' random_return and best_return were set (for humans)")
    budget_source: str = _f("", "how the budgets were chosen (for humans)")

    @property
    def stages(self) -> tuple[int, ...]:
        """The task index trained in each stage: ``order``, or the task list repeated ``cycles`` times."""
        return self.order or tuple(range(len(self.tasks))) * self.cycles

    @property
    def boundaries(self) -> list[int]:
        """Env steps where stages start and end: [0, end of stage 0, ..., end of the run]."""
        return [0, *np.cumsum([self.tasks[i].steps for i in self.stages]).tolist()]

    @property
    def score_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """(n,) random-policy and (n,) best returns of the tasks: p = 0 and p = 1."""
        return (np.array([t.random_return for t in self.tasks]), np.array([t.best_return for t in self.tasks]))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples as lists); ``sequence_from_dict`` reads it back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


RANGE_HELP = ("normalised performance is (return - random_return) / (best_return - random_return); measure "
              "random_return with `python -m benchmarks.continual --sequence FILE --measure-random 100 --write` "
              "and set best_return to the task's best possible return (1000 for DMC tasks, 0 for gym:Pendulum-v1)")


def sequence_from_dict(d: dict[str, Any], default_name: str = "", where: str = "sequence",
                       ranges: bool = True) -> Sequence:
    """Build and check a ``Sequence`` from a plain dict (a parsed JSON file); errors name the bad key.

    Checks keys, types and ranges, task names (unique), budgets, the training order and (with ``ranges``)
    every task's score range. It does not build envs; see ``check_spaces`` for the observation/action-space
    check.
    """
    seq = config_from_dict(d, Sequence, where)
    if not seq.tasks:
        raise ValueError(f"{where}.tasks: need a non-empty list of tasks such as "
                         "{\"name\": \"default\", \"spec\": \"dmc:cartpole-swingup\"}.")
    tasks = []
    for i, t in enumerate(seq.tasks):
        if not t.spec:
            raise ValueError(f"{where}.tasks[{i}]: needs a spec, e.g. \"dmc:cartpole-swingup\".")
        if not t.name:
            t = dataclasses.replace(t, name=t.spec.split(":", 1)[1] + (f"-{i}" if t.variant else ""))
        tasks.append(dataclasses.replace(t, steps=t.steps or seq.steps_per_task))
    seq = dataclasses.replace(seq, name=seq.name or default_name, tasks=tuple(tasks))
    _check_tasks(seq, where, ranges)
    for key in ("size", "action_repeat", "steps_per_task", "cycles", "eval_episodes", "end_evaluations"):
        if getattr(seq, key) < 1:
            raise ValueError(f"{where}.{key}: must be >= 1, got {getattr(seq, key)}.")
    for key in ("replay_capacity", "eval_every", "heldout_episodes"):
        if getattr(seq, key) < 0:
            raise ValueError(f"{where}.{key}: must be >= 0, got {getattr(seq, key)}.")
    if seq.obs not in ("state", "pixels", "both"):
        raise ValueError(f"{where}.obs: must be state, pixels or both, got {seq.obs!r}.")
    _check_order(seq, where)
    smallest = min(t.steps for t in seq.tasks)
    capacity = seq.replay_capacity or max(t.steps for t in seq.tasks) // seq.action_repeat
    return dataclasses.replace(seq, eval_every=seq.eval_every or max(seq.action_repeat, smallest // 10),
                               replay_capacity=capacity)


def _check_tasks(seq: Sequence, where: str, ranges: bool) -> None:
    names = [t.name for t in seq.tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{where}.tasks: task names must be unique, {duplicates} appear more than once "
                         "(to train a task again, use cycles or order).")
    for t in seq.tasks:
        if t.steps <= 0:
            raise ValueError(f"{where}: task {t.name!r} has a budget of {t.steps} env steps; it must be positive.")
        if not all(c.isalnum() or c in "-_.=" for c in t.name):
            raise ValueError(f"{where}: task name {t.name!r} may only hold letters, digits and - _ . = "
                             "(it becomes a TensorBoard tag and a file name).")
        if not ranges:
            continue
        missing = [key for key in ("random_return", "best_return") if math.isnan(getattr(t, key))]
        if missing:
            raise ValueError(f"{where}: task {t.name!r} needs {' and '.join(missing)} (its score range): "
                             f"{RANGE_HELP}.")
        if not (math.isfinite(t.random_return) and math.isfinite(t.best_return) and t.best_return > t.random_return):
            raise ValueError(f"{where}: task {t.name!r} has best_return {t.best_return} and random_return "
                             f"{t.random_return}; both must be finite with best_return > random_return.")


def _check_order(seq: Sequence, where: str) -> None:
    if not seq.order:
        return
    n = len(seq.tasks)
    if seq.cycles != 1:
        raise ValueError(f"{where}: give either order or cycles, not both (order {list(seq.order)}, cycles "
                         f"{seq.cycles}).")
    bad = [i for i in seq.order if not 0 <= i < n]
    if bad:
        raise ValueError(f"{where}.order: task indices must be in 0..{n - 1} ({n} tasks), got {bad}.")
    unused = [t.name for i, t in enumerate(seq.tasks) if i not in seq.order]
    if unused:
        raise ValueError(f"{where}.order: every task must be trained at least once; {unused} never are.")


def shipped_sequences() -> list[str]:
    """Names of the sequences in ``benchmarks/sequences/``."""
    return sorted(p.stem for p in SEQUENCES_DIR.glob("*.json"))


def sequence_path(source: str | Path) -> Path:
    """The JSON file of a shipped sequence name (``cartpole-shift``) or of a path."""
    path = Path(source)
    if not path.suffix and not path.exists():
        path = SEQUENCES_DIR / f"{source}.json"
        if not path.exists():
            raise ValueError(f"no shipped sequence {str(source)!r}; shipped: {', '.join(shipped_sequences())}; "
                             "or pass the path of a .json file.")
    if not path.exists():
        raise ValueError(f"sequence file {path} does not exist.")
    return path


def load_sequence(source: str | Path, check: bool = True, steps_per_task: int | None = None,
                  ranges: bool = True) -> Sequence:
    """A sequence by shipped name (``cartpole-shift``) or from a JSON file path.

    ``steps_per_task`` replaces every task's budget (for quick runs); ``check`` also builds every task's
    env once and checks that all share observation and action spaces (``check_spaces``); ``ranges=False``
    accepts tasks without a score range (to measure one).
    """
    path = sequence_path(source)
    raw = read_json(path)
    if steps_per_task is not None:
        raw = {**raw, "steps_per_task": steps_per_task,
               "tasks": [{k: v for k, v in t.items() if k != "steps"} if isinstance(t, dict) else t
                         for t in raw.get("tasks", [])]}
    seq = sequence_from_dict(raw, default_name=path.stem, where=str(path), ranges=ranges)
    if check:
        check_spaces(seq)
    return seq


def random_returns(seq: Sequence, index: int, episodes: int, seed: int = 0) -> np.ndarray:
    """(episodes,) returns of uniform-random actions on task ``index`` with the sequence's action repeat
    (each random action held for that many simulator steps, as the agent's are). State observations are
    used whatever the sequence's: the policy ignores them, and no rendering is spent."""
    import envs

    task = seq.tasks[index]
    returns = []
    with contextlib.closing(envs.make(task.spec, obs="state", action_repeat=seq.action_repeat,
                                      variant=task.variant or None, seed=seed)) as env:  # also seeds the sampling
        for episode in range(episodes):
            env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total, done = total + float(reward), terminated or truncated
            returns.append(total)
    return np.array(returns)


def dump_sequence(raw: dict[str, Any]) -> str:
    """A sequence file's text: one key a line, one task a line."""
    lines = []
    for key, value in raw.items():
        text = json.dumps(value)
        if key == "tasks":
            text = "[\n" + ",\n".join(f"  {json.dumps(t)}" for t in value) + "\n ]"
        lines.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def measure_random(source: str | Path, episodes: int, write: bool) -> str:
    """Measure every task's random-policy return (``random_returns``, seed 0); with ``write``, store the
    means (rounded to 0.1) as the tasks' ``random_return`` in the sequence file. Returns a report."""
    path = sequence_path(source)
    seq = load_sequence(path, ranges=False)
    raw = read_json(path)
    rows = []
    for i, task in enumerate(seq.tasks):
        returns = random_returns(seq, i, episodes)
        mean = float(returns.mean())
        se = float(returns.std(ddof=1) / np.sqrt(len(returns))) if len(returns) > 1 else 0.0
        raw["tasks"][i]["random_return"] = round(mean, 1)
        rows.append(f"{task.name}: random-policy return {mean:.1f} (standard error {se:.1f}, {episodes} episodes, "
                    f"action repeat {seq.action_repeat}); best_return in the file: {task.best_return:g}")
    if write:
        path.write_text(dump_sequence(raw))
        rows.append(f"wrote random_return of {len(seq.tasks)} tasks to {path}")
    return "\n".join(rows)


def dreamerv3_learned_at(spec: str, obs: str, fraction: float = 0.75, final_bins: int = 5) -> int | None:
    """Env steps where DreamerV3's seed-mean curve for a DMC task (``../shared/reference/dreamerv3_dmc_curves
    .json``: ``proprio`` for state observations, ``vision`` for pixels) first reaches ``fraction`` of its final
    value (the mean of its last ``final_bins`` bins), rounded up to 10,000; None without a curve."""
    from .learning import dreamerv3_curve

    curve = dreamerv3_curve(spec[4:], "proprio" if obs == "state" else "vision") if spec.startswith("dmc:") else None
    if curve is None:
        return None
    x, mean = np.array(curve["x"], float), np.array(curve["mean"], float)
    reached = np.flatnonzero(mean >= fraction * mean[-final_bins:].mean())
    return int(math.ceil(x[reached[0]] / 10_000) * 10_000)


def _env_options(seq: Sequence, task: Task) -> dict[str, Any]:
    return dict(obs=seq.obs, size=seq.size, action_repeat=seq.action_repeat, variant=task.variant or None)


def check_spaces(seq: Sequence) -> None:
    """Build each task's env once; raise ``ValueError`` naming the task when a spec or variant is bad or
    when its observation or action space differs from the first task's."""
    import envs

    first = None
    for task in seq.tasks:
        try:
            env = envs.make(task.spec, **_env_options(seq, task))
        except ValueError as error:
            raise ValueError(f"sequence {seq.name!r}, task {task.name!r}: {error}") from error
        spaces = (env.observation_space, env.action_space)
        env.close()
        if first is None:
            first = (task, spaces)
        elif spaces != first[1]:
            raise ValueError(
                f"sequence {seq.name!r}: task {task.name!r} ({task.spec}) has observation space {spaces[0]} and "
                f"action space {spaces[1]}, but task {first[0].name!r} ({first[0].spec}) has {first[1][0]} and "
                f"{first[1][1]}; all tasks of a sequence must share observation and action spaces.")


# --------------------------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Strategy:
    """How the agent meets a sequence: the replay's insertion/sampling policy, an optional method that keeps
    the networks trainable, and an optional task id."""

    name: str = _f("fifo", "fifo | reservoir | mix, optionally with +shrink_perturb or +redo, and +taskid")
    replay: str = _f("fifo", "agent replay policy (agent.config.ReplayConfig.policy)")
    task_id: bool = _f(False, "append a one-hot task id to the state observation")
    plasticity: str = _f("none", "plasticity.method of the run (agent.config.PlasticityConfig)")


STRATEGIES = ("fifo", "reservoir", "mix")
PLASTICITY_METHODS = ("shrink_perturb", "redo")


def parse_strategy(name: str) -> Strategy:
    """``fifo``, ``reservoir`` or ``mix``, then optionally ``+shrink_perturb`` or ``+redo`` (the run's
    ``plasticity.method``; its other ``plasticity.*`` settings come from ``--set``) and ``+taskid``, in any
    order; the name is kept in this order: ``mix+redo+taskid``."""
    base, *suffixes = name.split("+")
    methods = [s for s in suffixes if s in PLASTICITY_METHODS]
    if (base not in STRATEGIES or len(methods) > 1 or len(set(suffixes)) < len(suffixes)
            or any(s not in (*PLASTICITY_METHODS, "taskid") for s in suffixes)):
        raise ValueError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}, optionally with one of "
                         f"{', '.join('+' + m for m in PLASTICITY_METHODS)}, and +taskid (e.g. fifo+redo).")
    task_id = "taskid" in suffixes
    canonical = "+".join([base, *methods, *(["taskid"] if task_id else [])])
    return Strategy(canonical, base, task_id, methods[0] if methods else "none")


RESERVED = ("replay.policy", "replay.capacity", "replay.recent_capacity", "replay.recent_fraction", "env.spec",
            "env.obs", "env.size", "env.action_repeat", "agent.seed", "train.steps", "train.eval_every",
            "train.eval_episodes", "plasticity.method")


def run_config(seq: Sequence, strategy: Strategy, seed: int, overrides: tuple[str, ...] = (),
               steps: int | None = None) -> Any:
    """The agent's ``RunConfig`` for one run: the sequence's preset and overrides, then ``overrides``, then
    what the sequence and strategy fix (env, schedule, replay). ``steps`` defaults to the whole sequence.

    The replay holds ``seq.replay_capacity`` steps for every strategy; ``mix`` splits it evenly into a
    recent FIFO and a reservoir, each half of every batch.
    """
    from agent.config import RunConfig, apply_overrides, preset, validate_run

    for item in (*seq.overrides, *overrides):
        if item.split("=", 1)[0].strip() in RESERVED:
            raise ValueError(f"override {item!r}: this field is set by the sequence or the strategy "
                             f"(fields set there: {', '.join(RESERVED)}).")
    C = seq.replay_capacity
    replay = [f"replay.policy={strategy.replay}", f"replay.capacity={C}"]
    if strategy.replay == "mix":
        replay = ["replay.policy=mix", f"replay.capacity={C - C // 2}", f"replay.recent_capacity={C // 2}",
                  "replay.recent_fraction=0.5"]
    fixed = [f"env.spec={seq.tasks[0].spec}", f"env.obs={seq.obs}", f"env.size={seq.size}",
             f"env.action_repeat={seq.action_repeat}", f"agent.seed={seed}",
             f"train.steps={steps if steps is not None else seq.boundaries[-1]}",
             f"train.eval_every={seq.eval_every}", f"train.eval_episodes={seq.eval_episodes}", *replay,
             *([f"plasticity.method={strategy.plasticity}"] if strategy.plasticity != "none" else [])]
    cfg = apply_overrides(RunConfig(agent=preset(seq.preset)), [*seq.overrides, *overrides, *fixed])
    return validate_run(cfg)


# --------------------------------------------------------------------------------------------- envs


def _make_with_task_id(spec: str, index: int, count: int, seed: int | None, **options: Any) -> gym.Env:
    """``envs.make`` plus ``TaskIdObservation`` (module level, so subprocess vector envs can pickle it)."""
    import envs

    return TaskIdObservation(envs.make(spec, seed=seed, **options), index, count)


class TaskIdObservation(gym.ObservationWrapper):
    """Appends a one-hot task id (``count`` entries, ``index`` hot) to the ``state`` observation."""

    def __init__(self, env: gym.Env, index: int, count: int):
        super().__init__(env)
        if "state" not in env.observation_space.spaces:
            raise ValueError("a task id is appended to the state vector; use obs=state or both.")
        self.one_hot = np.eye(count, dtype=np.float32)[index]
        n = env.observation_space["state"].shape[0] + count
        self.observation_space = gym.spaces.Dict(
            {**env.observation_space.spaces, "state": gym.spaces.Box(-np.inf, np.inf, (n,), np.float32)})

    def observation(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**obs, "state": np.concatenate([obs["state"], self.one_hot])}


def task_env(seq: Sequence, index: int, num_envs: int, seed: int, task_id: bool = False) -> gym.vector.VectorEnv:
    """A NEXT_STEP-autoreset vector env of task ``index`` of the sequence (``envs.make_vec``'s contract)."""
    import envs

    task = seq.tasks[index]
    options = _env_options(seq, task)
    if not task_id:
        return envs.make_vec(task.spec, num_envs, seed=seed, **options)
    fns = [functools.partial(_make_with_task_id, task.spec, index, len(seq.tasks), seed + i, **options)
           for i in range(num_envs)]
    return envs.vector_env(fns)


# --------------------------------------------------------------------------------------------- the runner


@contextlib.contextmanager
def untouched_rng(agent: Any, seed: int | None = None) -> Iterator[None]:
    """Run a measurement without moving the training run's random streams: torch's global RNG and the
    world model's generator are restored on exit. With ``seed``, the generator is reseeded inside, so
    the measurement itself is a deterministic function of the parameters."""
    import torch

    generator = agent.wm.generator
    saved = generator.get_state()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
            generator.manual_seed(seed)
        try:
            yield
        finally:
            generator.set_state(saved)


def record_episodes(trainer: Any, env: Any, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Run the exploring policy for ``episodes`` whole episodes on a one-env vector env, WITHOUT adding
    to the replay; returns the steps as (L, ...) arrays in the replay's format (``agent.rollout``'s
    records), ending with the last episode's final observation."""
    from agent.rollout import Rollout

    assert env.num_envs == 1, "held-out data is recorded from one env"
    carry, steps = None, []

    def policy(obs: dict[str, np.ndarray], is_first: np.ndarray) -> np.ndarray:
        nonlocal carry
        action, carry = trainer.agent.act(obs, is_first, carry, explore=True)
        return action

    with untouched_rng(trainer.agent, seed):
        rollout = Rollout(env, seed, trainer.env_action)
        while rollout.episodes_ended < episodes:
            steps.append(rollout.step(policy)[0])
        steps.append(rollout.act(policy))  # the last episode's final observation; its action is never executed
    return {key: np.concatenate([s[key] for s in steps]) for key in steps[0]}  # (L, ...)


WM_TERMS = ("image", "state", "reward", "continue_", "kl")


def world_model_loss(trainer: Any, data: dict[str, np.ndarray], seed: int = 0) -> dict[str, float]:
    """The world model's loss terms on held-out steps, cut into fresh (W, T) windows of the training
    batch length (as training windows are): mean reconstruction (``image``/``state``), ``reward``,
    ``continue_`` and ``kl`` (posterior to prior, before free bits, so it still moves below 1 nat).
    Deterministic given the parameters and ``seed``; leaves the run's random streams untouched."""
    import torch

    T = trainer.cfg.train.batch_length
    W = len(data["is_first"]) // T
    if W == 0:
        raise ValueError(f"held-out data of {len(data['is_first'])} steps is shorter than one window of {T}.")
    batch = {k: v[: W * T].reshape(W, T, *v.shape[1:]) for k, v in data.items()}  # (W, T, ...)
    wm = trainer.agent.wm
    with untouched_rng(trainer.agent, seed), torch.no_grad():
        _, losses, metrics, _, _ = wm.loss(trainer.agent.to_torch(batch))
    out = {k: float(v.mean()) for k, v in losses.items() if k in WM_TERMS}
    out["kl"] = float(metrics["kl"])
    return out


def probe_batch(replay: Any, batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """(B, T) windows from the replay drawn with a seeded generator of their own: the replay's sampling
    stream is restored afterwards, so probing leaves training exactly as it was."""
    parts = getattr(replay, "replays", [replay])  # a MixedReplay samples from each of its replays
    saved = [r.rng.bit_generator.state for r in parts]
    for i, r in enumerate(parts):
        r.rng.bit_generator.state = np.random.default_rng([seed, i]).bit_generator.state
    try:
        return replay.sample(batch, length)
    finally:
        for r, state in zip(parts, saved):
            r.rng.bit_generator.state = state


class ContinualRun:
    """One agent trained on the stages of a sequence, with evaluations, held-out losses and plasticity.

    Its progress lives in ``trainer.extra`` (evaluations, plasticity, world-model losses, held-out files,
    finished stages), which the Trainer's checkpoints save and ``resume=True`` restores, so a killed run
    continues at its last checkpoint.
    """

    def __init__(self, seq: Sequence, strategy: Strategy, seed: int, rundir: Path, cfg: Any,
                 measure_model: bool = True):
        from agent.loop import CHECKPOINT, Trainer

        self.seq, self.strategy, self.seed, self.rundir, self.cfg = seq, strategy, seed, rundir, cfg
        self.measure_model = measure_model
        # Seeds depend on the run's seed only, not on a task's place in the sequence: a task's reference run
        # from scratch (where it is the only task) is evaluated from the same initial states.
        self.eval_envs = [task_env(seq, i, cfg.env.eval_envs, seed=10_000 + 1000 * seed, task_id=strategy.task_id)
                          for i in range(len(seq.tasks))]
        space = self.eval_envs[0]
        resume = (rundir / CHECKPOINT).exists()
        self.trainer = Trainer(cfg, space.single_observation_space, space.single_action_space, rundir,
                               resume=resume, progress=False)
        self.trainer.eval_hook = self.evaluate
        for key in ("evaluations", "plasticity", "wm_loss", "heldout", "stages_done"):
            self.trainer.extra.setdefault(key, [] if key != "heldout" else {})
        if not resume:
            bounds = ", ".join(f"{seq.tasks[u].name} until {b:,}" for u, b in zip(seq.stages, seq.boundaries[1:]))
            self.trainer.logger.text("continual/boundaries", f"stages (env steps): {bounds}")

    @property
    def extra(self) -> dict[str, Any]:
        return self.trainer.extra

    def log(self, scalars: dict[str, float]) -> None:
        """Log at the current env step (on resume the logger keeps what was logged up to the checkpoint)."""
        self.trainer.logger.scalars(scalars, self.trainer.env_steps)

    def probe(self, seed: int) -> dict[str, np.ndarray]:
        """A probe batch of training windows from the replay (``probe_batch``)."""
        return probe_batch(self.trainer.replay, self.cfg.train.batch_size, self.cfg.train.batch_length, seed)

    def plasticity(self) -> dict[str, dict[str, float]]:
        """Dormant fraction and effective rank per module on the evaluations' probe batch (``benchmarks.plasticity``),
        leaving the run's random streams as they were."""
        from .plasticity import measure

        with untouched_rng(self.trainer.agent):
            return measure(self.trainer.agent, self.probe(self.seed))

    def stage_at(self, env_steps: int) -> int:
        """The stage being trained at ``env_steps`` (the last one at the end of the run)."""
        return min(int(np.searchsorted(self.seq.boundaries, env_steps, side="right")) - 1, len(self.seq.stages) - 1)

    # ----- measurements

    def evaluate(self) -> None:
        """Evaluate every task; measure plasticity; log ``eval/<task>/return`` and ``continual/*``."""
        t = self.trainer
        t.counters["last_eval"] = t.env_steps
        stage = self.stage_at(max(t.env_steps - 1, 0))  # an evaluation at a boundary closes the stage before
        returns = {task.name: t.evaluate(env, self.seq.eval_episodes, seed=20_000 + 1000 * self.seed)
                   for task, env in zip(self.seq.tasks, self.eval_envs)}
        self.extra["evaluations"].append({"env_steps": t.env_steps, "stage": stage, "returns": returns})
        scalars = {f"eval/{name}/return": float(np.mean(r)) for name, r in returns.items()}
        scalars["continual/stage"] = stage
        scalars["continual/task_index"] = self.seq.stages[stage]
        if self.measure_model and t.replay.can_sample(self.cfg.train.batch_length):
            values = self.plasticity()
            self.extra["plasticity"].append({"env_steps": t.env_steps, **values})
            for module, v in values.items():
                scalars[f"continual/dormant/{module}"] = v["dormant"]
                scalars[f"continual/effective_rank/{module}"] = v["effective_rank"]
        self.log(scalars)
        text = " ".join(f"{name} {np.mean(r):.0f}" for name, r in returns.items())
        print(f"[{self.strategy.name} seed {self.seed}] env step {t.env_steps:,} (stage {stage}: "
              f"{self.seq.tasks[self.seq.stages[stage]].name}) eval returns: {text}", flush=True)

    def end_stage(self, stage: int) -> None:
        """At a stage boundary: an evaluation there, held-out data of the stage's task, the world model's
        loss on every held-out set so far, running metrics, and a checkpoint."""
        from . import continual_metrics as cm

        t, seq = self.trainer, self.seq
        if self.extra["evaluations"][-1]["env_steps"] != t.env_steps:
            self.evaluate()
        scalars: dict[str, float] = {}
        if self.measure_model and seq.heldout_episodes > 0:
            task = seq.tasks[seq.stages[stage]]
            with contextlib.closing(task_env(seq, seq.stages[stage], 1, seed=30_000 + 1000 * self.seed + stage,
                                             task_id=self.strategy.task_id)) as env:
                data = record_episodes(t, env, seq.heldout_episodes, seed=30_000 + 1000 * self.seed + stage)
            path = self.rundir / "heldout" / f"stage{stage}_{task.name}.npz"
            path.parent.mkdir(exist_ok=True)
            np.savez_compressed(path, **data)
            self.extra["heldout"][str(stage)] = str(path.relative_to(self.rundir))
            for k in range(stage + 1):
                with np.load(self.rundir / self.extra["heldout"][str(k)]) as held:
                    loss = world_model_loss(t, dict(held), seed=self.seed)
                name = seq.tasks[seq.stages[k]].name
                self.extra["wm_loss"].append({"after_stage": stage, "stage": k, "task": name, "loss": loss})
                scalars.update({f"continual/wm_loss/{name}/{term}": v for term, v in loss.items()})
        steps, perf = self.curves()
        matrix = cm.stage_end_values(steps, perf, np.array(seq.boundaries[: stage + 2]), seq.end_evaluations)
        scalars["continual/average_performance"] = cm.average_performance(matrix)
        if stage > 0:
            scalars["continual/forgetting_mean"] = float(np.mean(cm.forgetting(matrix, seq.stages[: stage + 1])))
        self.log(scalars)
        self.keep_plastic(stage)
        self.extra["stages_done"].append(stage)
        t.save()

    def keep_plastic(self, stage: int) -> None:
        """At the boundary after ``stage`` (not after the last), apply the run's plasticity method when it is
        set to task boundaries (``plasticity.every=0``), after this stage's measurements and before the
        checkpoint that closes the stage; ReDo scores units on a probe batch. Recorded in
        ``plasticity_resets`` and logged by the Trainer (``plasticity/*``), with the dormant fraction and
        effective rank measured again right after (``after``; ``continual/*_after_reset/<module>``)."""
        p, t = self.cfg.plasticity, self.trainer
        if p.method == "none" or p.every > 0 or stage == len(self.seq.stages) - 1:
            return
        values = t.apply_plasticity(self.probe(seed=50_000 + 1000 * self.seed + stage))
        # Measured again on the probe batch of the boundary's evaluation (the replay has not changed since), so
        # that before and after differ only by the method.
        after = self.plasticity()
        self.log({f"continual/{key}_after_reset/{module}": v[key] for module, v in after.items()
                  for key in ("dormant", "effective_rank")})
        self.extra.setdefault("plasticity_resets", []).append({"env_steps": t.env_steps, "stage": stage, **values,
                                                               "after": after})

    def curves(self) -> tuple[np.ndarray, np.ndarray]:
        """Evaluation steps (E,) and normalised performance (E, n) from the evaluations so far."""
        from .continual_report import curves

        record = {"evaluations": self.extra["evaluations"], "tasks": [task.name for task in self.seq.tasks]}
        return curves(record, self.seq.score_ranges)

    # ----- the run

    def run(self) -> dict[str, Any]:
        """Train through every stage not yet finished; returns the raw record (also written to run.json)."""
        t, seq = self.trainer, self.seq
        try:
            if not self.extra["evaluations"]:
                self.evaluate()  # step 0: the untrained agent, the start of the first stage's AUC window
            for stage, index in enumerate(seq.stages):
                if stage in self.extra["stages_done"]:
                    continue
                with contextlib.closing(task_env(seq, index, self.cfg.env.num_envs, seed=1000 * self.seed,
                                                 task_id=self.strategy.task_id)) as env:
                    t.collect(env, seq.boundaries[stage + 1], seed=self.seed + t.counters["episodes"])
                self.end_stage(stage)
            if t.counters["last_log"] != t.env_steps:
                t.log_now()
            t.logger.flush()
            record = self.record(t.wall_s())  # the Trainer's clock: every part of a resumed run
            write_json(self.rundir / "run.json", record)
            return record
        finally:
            t.close()
            for env in self.eval_envs:
                env.close()

    def record(self, wall_s: float) -> dict[str, Any]:
        """Everything measured, as plain data: the input of ``continual_report``."""
        from agent.config import config_to_dict

        return {"kind": "continual" if self.measure_model else "reference",
                "sequence": self.seq.to_dict(), "strategy": dataclasses.asdict(self.strategy), "seed": self.seed,
                "config": config_to_dict(self.cfg), "tasks": [t.name for t in self.seq.tasks],
                "stages": list(self.seq.stages), "boundaries": self.seq.boundaries,
                "evaluations": self.extra["evaluations"], "plasticity": self.extra["plasticity"],
                "plasticity_resets": self.extra.get("plasticity_resets", []),
                "wm_loss": self.extra["wm_loss"], "counters": dict(self.trainer.counters),
                "wall_s": wall_s}


# --------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    """One process's work: a continual run of a sequence, or a single-task reference run."""

    kind: str = _f("continual", "continual | reference")
    sequence: dict = _f({}, "the sequence (Sequence.to_dict); a reference's holds its one task")
    strategy: str = _f("fifo", "strategy name")
    seed: int = _f(0, "seed of the agent, envs and replay")
    overrides: tuple[str, ...] = _f((), "extra run-config overrides")
    config: dict = _f({}, "the resolved run config, for the record and the reference cache key")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "overrides": list(self.overrides)}


def continual_job(seq: Sequence, strategy: str, seed: int, overrides: tuple[str, ...]) -> Job:
    from agent.config import config_to_dict

    cfg = run_config(seq, parse_strategy(strategy), seed, overrides)
    return Job("continual", seq.to_dict(), strategy, seed, tuple(overrides), config_to_dict(cfg))


def reference_job(seq: Sequence, index: int, seed: int, overrides: tuple[str, ...]) -> Job:
    """The single-task reference of task ``index``: a one-stage sequence of the task with the same settings,
    the same agent config, the task's budget, the FIFO replay of the sequence's capacity, no task id (shared
    by every strategy)."""
    from agent.config import config_to_dict

    ref = dataclasses.replace(seq, name=f"reference-{seq.tasks[index].name}", tasks=(seq.tasks[index],), cycles=1,
                              order=())
    cfg = run_config(seq, parse_strategy("fifo"), seed, overrides, steps=seq.tasks[index].steps)
    return Job("reference", ref.to_dict(), "fifo", seed, tuple(overrides), config_to_dict(cfg))


def reference_key(job: Job) -> str:
    """Cache key of a reference run: a hash of everything that shapes its curve (task spec and variant,
    observation, budget, evaluation schedule, the whole run config with the seed), not the task's label nor
    its score range (which only scales the curve; reports normalise references with the sequence's range)."""
    seq = {k: v for k, v in job.sequence.items()
           if k not in ("name", "description", "overrides", "order", "score_range_source", "budget_source")}
    seq["tasks"] = [{k: v for k, v in t.items() if k not in ("name", "random_return", "best_return")}
                    for t in seq["tasks"]]
    config = without_unused(job.config)
    if config.get("plasticity", {}).get("method", "none") == "none":  # unused settings
        config = {k: v for k, v in config.items() if k != "plasticity"}
    blob = json.dumps({"sequence": seq, "config": config}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def job_dir(root: Path, job: Job) -> Path:
    if job.kind == "reference":
        task = job.sequence["tasks"][0]["name"]
        return root / "references" / f"{task}-seed{job.seed}-{reference_key(job)}"
    return root / job.sequence["name"] / job.strategy / f"seed_{job.seed}"


def run_job(job: Job, rundir: Path) -> dict[str, Any]:
    """Run (or resume) one job in this process; writes run.json (and done.json) in ``rundir``."""
    import torch

    from agent.config import RunConfig, config_from_dict

    seq = sequence_from_dict(job.sequence, where=f"{rundir / 'job.json'}:sequence")
    cfg = config_from_dict(job.config, RunConfig)
    torch.set_num_threads(cfg.train.threads if cfg.train.threads > 0 else max(1, os.cpu_count() or 1))
    write_json(rundir / "config.json", job.config)
    run = ContinualRun(seq, parse_strategy(job.strategy), job.seed, rundir, cfg,
                       measure_model=job.kind == "continual")
    record = run.run()
    write_json(rundir / "done.json", {"wall_s": record["wall_s"]})
    return record


def prepare(job: Job, rundir: Path, fresh: bool) -> bool:
    """Write ``job.json``; True when the job still has work to do. A directory holding another job is an
    error rather than something to overwrite silently. ``fresh`` empties the directory first (keeping the
    sweep's lock)."""
    if fresh:
        sweep.clear(rundir)
    path, saved = rundir / "job.json", read_json(rundir / "job.json")
    if saved is None:
        write_json(path, job.to_dict())
        return True
    wanted = json.loads(json.dumps(job.to_dict()))  # tuples as lists, as read back
    if _resolved(saved) != wanted and not _same_reference(saved, job):
        raise ValueError(f"{rundir} holds a run with other settings (see {path}); pass --fresh to replace it "
                         "or --root to put runs elsewhere.")
    return not (rundir / "done.json").exists()


def _resolved(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved job with its run config read through today's config classes: a field added since the run was
    written takes its default, as the run itself did when it resumed (its absence is not another setting)."""
    from agent.config import RunConfig, config_from_dict, config_to_dict

    if not isinstance(saved.get("config"), dict):
        return saved
    try:
        config = config_to_dict(config_from_dict(saved["config"], RunConfig))
    except (TypeError, ValueError):  # not a config this code reads: compared as it is, and so refused
        return saved
    return json.loads(json.dumps({**saved, "config": config}))


def _same_reference(saved: dict[str, Any], job: Job) -> bool:
    """Whether a saved job and ``job`` are the same reference run by its cache key: a task shared by two
    sequences (pendulum-conflict's and pendulum-physics' default) has one reference, whichever sequence's
    description, labels and score ranges its ``job.json`` was written with."""
    if job.kind != "reference" or saved.get("kind") != "reference":
        return False
    return reference_key(Job(**{**saved, "overrides": tuple(saved["overrides"])})) == reference_key(job)


def process_job(job: Job, rundir: Path) -> sweep.Job:
    """The job runner's view of ``job``: ``python -m benchmarks.continual --worker <rundir>`` (which resumes
    from the run's checkpoint by itself), declaring the run's torch threads as CPUs."""
    rundir = rundir.resolve()  # a job may start in another directory, or on another machine
    threads = job.config["train"]["threads"]
    label = f"{job.kind} {job.sequence['name']}/{job.strategy}/seed_{job.seed}" if job.kind == "continual" else \
        f"reference {rundir.name}"
    return sweep.Job(label, str(rundir), ("-m", "benchmarks.continual", "--worker", str(rundir)),
                     cpus=sweep.cpus_for_threads(threads))


def planned_updates(job: Job) -> int:
    """Gradient updates a job makes in all: one per ``batch_size x batch_length`` replayed steps, ``train_ratio``
    replayed steps per agent step after the prefill (``agent.loop``)."""
    t, env = job.config["train"], job.config["env"]
    agent_steps = max(0, t["steps"] - t["prefill"]) / (env["action_repeat"])
    return int(agent_steps * t["train_ratio"] / (t["batch_size"] * t["batch_length"]))


def _updates_done(rundir: Path) -> int:
    """Updates an unfinished run had made at its last log line (0 when it has not started)."""
    logged = [row["train/updates"] for row in read_jsonl(rundir / "metrics.jsonl") if "train/updates" in row]
    return int(logged[-1]) if logged else 0


def cpu_seconds_per_update(root: Path) -> tuple[float, int] | None:
    """The median CPU seconds an update took in the finished runs under ``root`` (evaluations and measurements
    included; the training process's CPU time, which other processes on the machine do not inflate), and how
    many runs that is; None when none has finished."""
    rates = []
    for path in root.glob("**/run.json"):
        counters = read_json(path).get("counters", {})
        if counters.get("updates", 0) > 0 and "cpu_s" in counters:
            rates.append(counters["cpu_s"] / counters["updates"])
    return (float(np.median(rates)), len(rates)) if rates else None


def estimate(todo: list[tuple[Job, Path]], root: Path, parallel: int) -> str:
    """How long the jobs left will take: their updates left at the median CPU pace of the finished runs under
    ``root``, in CPU hours, and in hours with ``parallel`` at a time, each on a core of its own (runs are spread
    evenly, so the longest queue sets the time)."""
    if not todo:
        return "nothing to run: every run is finished."
    left = [planned_updates(job) - _updates_done(rundir) for job, rundir in todo]
    refs = sum(job.kind == "reference" for job, _ in todo)
    text = (f"{len(todo)} run(s) to do or finish ({refs} reference(s), {len(todo) - refs} continual), "
            f"{sum(left):,} updates left")
    pace = cpu_seconds_per_update(root)
    if pace is None:
        return text + "; no finished run under the root yet to time an update by."
    seconds, runs = pace
    slots = min(parallel, len(todo))
    hours = sum(left) * seconds / 3600
    return (text + f"; at {seconds:.2f} CPU s an update (median of {runs} finished run(s) here), about "
            f"{_hours(hours)} of CPU, {_hours(hours / slots)} with {slots} at a time on cores of their own.")


def _hours(hours: float) -> str:
    return f"{hours:.1f} hours" if hours >= 1 else f"{hours * 60:.0f} minutes"


def run_jobs(jobs: list[tuple[Job, Path]], args: argparse.Namespace) -> list[str]:
    """Run the jobs that still have work through the job runner (each ``python -m benchmarks.continual --worker
    <rundir>``, failed ones again from their checkpoints up to ``--retries``), holding the lock of every run
    directory this may write, after printing how long they will take; returns the names of the jobs that still
    failed. Interrupting this process stops its jobs (their checkpoints stay; the same command resumes them)."""

    def plan() -> list[sweep.Job]:
        todo = [(job, rundir) for job, rundir in jobs if prepare(job, rundir, args.fresh)]
        threads = max((job.config["train"]["threads"] for job, _ in todo), default=1) or (os.cpu_count() or 1)
        slots = args.parallel or max(1, (args.cpus or os.cpu_count() or 1) // threads)  # the runner's default
        print(estimate(todo, root=Path(args.root), parallel=slots), flush=True)
        return [process_job(job, rundir) for job, rundir in todo]

    # Locks what this sweep may write (finished runs are only read), before --fresh empties anything.
    return sweep.run_sweep(args, [rundir for _, rundir in jobs if args.fresh or not (rundir / "done.json").exists()],
                           plan)


# --------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, prog="python -m benchmarks.continual")
    p.add_argument("--sequence", help="a shipped sequence name or the path of a sequence .json file")
    p.add_argument("--strategy", nargs="+", default=["reservoir"],
                   help="one or more of fifo, reservoir, mix (each optionally +shrink_perturb or +redo, "
                        "and +taskid)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds, each a run of its own (e.g. 0 1 2)")
    p.add_argument("--root", default="runs/continual", help="where runs, references and summaries go")
    p.add_argument("--steps-per-task", type=int, help="replace every task's budget (quick runs)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="run-config overrides after the sequence's own, e.g. train.train_ratio=64")
    p.add_argument("--no-references", action="store_true", help="skip reference runs (no forward transfer)")
    p.add_argument("--references-only", action="store_true",
                   help="run only the single-task references (the cache every strategy reuses), no strategy")
    p.add_argument("--fresh", action="store_true", help="discard earlier runs of these jobs")
    p.add_argument("--out", help="also write the summary JSON here, plots beside it (README source)")
    p.add_argument("--report-only", action="store_true", help="only rebuild results, tables and plots")
    p.add_argument("--list", action="store_true", help="list shipped sequences")
    p.add_argument("--measure-random", type=int, metavar="EPISODES",
                   help="measure each task's uniform-random return over this many episodes, train nothing")
    p.add_argument("--dreamerv3-budget", action="store_true",
                   help="print where DreamerV3's curve of each DMC task reaches 75%% of its final value")
    p.add_argument("--write", action="store_true",
                   help="with --measure-random: store the means as the tasks' random_return in the file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run the job in this run directory
    sweep.add_arguments(p)
    args = p.parse_args(argv)
    return exit_status(lambda: _main(args))


def _inspect(args: argparse.Namespace) -> str:
    """The commands that train nothing: --list, --measure-random (with --write) and --dreamerv3-budget."""
    if args.list:
        return "\n".join(f"{name}: {seq.description} ({len(seq.tasks)} tasks, {len(seq.stages)} stages, "
                         f"{seq.boundaries[-1]:,} env steps, {seq.obs})"
                         for name, seq in ((n, load_sequence(n, check=False)) for n in shipped_sequences()))
    if args.measure_random is not None:
        if args.measure_random < 1:
            raise ValueError("--measure-random needs a number of episodes >= 1.")
        return measure_random(args.sequence, args.measure_random, args.write)
    if args.write:
        raise ValueError("--write goes with --measure-random.")
    seq = load_sequence(args.sequence, check=False, ranges=False)
    lines = []
    for task in seq.tasks:
        at = dreamerv3_learned_at(task.spec, seq.obs)
        lines.append(f"{task.name} ({task.spec}, {seq.obs}): budget {task.steps:,} env steps; DreamerV3's seed mean "
                     f"first reaches 75% of its final value at {'-' if at is None else f'{at:,}'} env steps")
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    from . import continual_report as report

    if args.worker:
        rundir = Path(args.worker)
        raw = read_json(rundir / "job.json")
        run_job(Job(**{**raw, "overrides": tuple(raw["overrides"])}), rundir)
        return 0
    if not args.sequence and not args.list:
        raise ValueError("--sequence is required (a shipped name, see --list, or a .json file).")
    if args.list or args.measure_random is not None or args.dreamerv3_budget or args.write:
        print(_inspect(args))
        return 0
    seq, jobs, refs = _plan(args)
    failed = [] if args.report_only else run_jobs(jobs, args)
    if args.references_only:
        print("\n".join(f"{rundir}: {'done' if (rundir / 'done.json').exists() else 'not finished'}"
                        for dirs in refs.values() for rundir in dirs.values()))
        if args.out:
            report.summarise_references(seq.to_dict(), refs, Path(args.out))
            print(f"wrote {args.out}")
        return 1 if failed else 0
    for job, rundir in jobs:
        if job.kind == "continual" and (rundir / "run.json").exists():
            report.finalise_run(rundir, {i: dirs[job.seed] for i, dirs in refs.items()})
    settings = report.settings_key(jobs[-1][0].sequence, jobs[-1][0].config)
    summary = report.summarise(Path(args.root) / seq.name, out=Path(args.out) if args.out else None, settings=settings)
    print(summary["markdown"])
    return 1 if failed else 0


def _plan(args: argparse.Namespace) -> tuple[Sequence, list[tuple[Job, Path]], dict[int, dict[int, Path]]]:
    """The sequence, this command's jobs with their run directories (references first), and the reference run
    directories of each task index by seed."""
    if min(args.seeds) < 0 or len(set(args.seeds)) < len(args.seeds):
        raise ValueError(f"--seeds must be distinct and >= 0, got {args.seeds}.")
    if args.parallel is not None and args.parallel < 1:
        raise ValueError("--parallel must be >= 1.")
    if args.seeds != [0] and len(args.seeds) == 1:  # --seeds names seeds; a count of N is --seeds 0 ... N-1
        print(f"note: --seeds {args.seeds[0]} runs seed {args.seeds[0]} alone (seeds 0 to {args.seeds[0] - 1} "
              f"are --seeds {' '.join(map(str, range(args.seeds[0])))})", file=sys.stderr, flush=True)
    if args.references_only and args.no_references:
        raise ValueError("--references-only and --no-references exclude each other.")
    seq = load_sequence(args.sequence, steps_per_task=args.steps_per_task)
    overrides, root, seeds = tuple(args.set), Path(args.root), args.seeds
    strategies = [parse_strategy(s).name for s in args.strategy]
    refs = {} if args.no_references else {
        index: {seed: job_dir(root, reference_job(seq, index, seed, overrides)) for seed in seeds}
        for index in range(len(seq.tasks))}
    jobs = [(reference_job(seq, index, seed, overrides), refs[index][seed]) for seed in seeds for index in refs]
    for strategy in [] if args.references_only else strategies:
        jobs += [(job, job_dir(root, job)) for job in (continual_job(seq, strategy, seed, overrides) for seed in seeds)]
    return seq, jobs, refs


if __name__ == "__main__":
    sys.exit(main())
