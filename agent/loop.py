"""The training loop: envs, replay, train ratio, evaluation, logging and checkpoints.

The loop owns everything around the agent; the agent only acts, trains on batches and saves its state.
It receives vector envs (``gymnasium.vector`` with the NEXT_STEP autoreset of ``envs.make_vec``) from
an entry point, never building them itself.

Step records follow DreamerV3's convention: the record for observation t holds that observation, the
reward received on arriving at it (0 at an episode's first step), ``is_first``/``is_last``/
``is_terminal`` of it, and the action the agent chose at it. Gymnasium's ``terminated``/``truncated``
become these flags in ``agent.rollout`` and nowhere else; training and evaluation both step envs
through its ``Rollout``.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from . import distributed, plasticity
from .agent import Agent
from .checkpoint import CheckpointError, load_agent, load_checkpoint, space_signature
from .config import RunConfig, config_diff, config_from_dict, config_to_dict
from .logger import Logger, NullLogger, dump_json, memory_mb
from .replay import MixedReplay, Replay
from .revision import git_revision
from .rollout import Outcome, Rollout, episode_returns

CHECKPOINT = "checkpoint.pt"
EVAL_SEED = 10_000  # evaluation episodes start from this seed, the same for every evaluation of a run


def make_replay(cfg: RunConfig, directory: Path | None, seed: int | None = None) -> Replay | MixedReplay:
    """The replay the config asks for: ``fifo``, ``reservoir``, or ``mix`` (recent FIFO + reservoir), seeded
    with ``seed`` (default: the agent's seed)."""
    r, seed = cfg.replay, cfg.agent.seed if seed is None else seed
    if r.policy == "mix":
        sub = [None, None] if directory is None else [directory / "recent", directory / "reservoir"]
        return MixedReplay([Replay(r.recent_capacity, r.chunk, "fifo", sub[0], seed),
                            Replay(r.capacity, r.chunk, "reservoir", sub[1], seed + 1)],
                           [r.recent_fraction, 1.0 - r.recent_fraction])
    return Replay(r.capacity, r.chunk, r.policy, directory, seed)


def replay_dir(rank: int) -> str:
    """The replay directory of a data-parallel rank inside the run directory: ``replay`` for rank 0 (and a
    single-process run), ``replay-rank<r>`` for rank r."""
    return "replay" if rank == 0 else f"replay-rank{rank}"


class Trainer:
    """Agent, replay, logger and counters of one run; steps envs and trains at the configured ratio.

    In a data-parallel run (``torchrun``, see ``agent.distributed``) there is one Trainer per rank: each
    steps its own envs into its own replay (``replay-rank<r>/``) and trains on its own batches, with the
    gradients averaged over ranks. The env-step and update counters count the whole run (all ranks), so
    ``train.steps`` and the schedule mean the same as in one process; rank 0 alone logs, evaluates and
    writes the checkpoint, which also holds the other ranks' replay state, counters and random states.
    """

    def __init__(self, cfg: RunConfig, obs_space: gym.spaces.Dict, act_space: gym.Space, logdir: str | Path,
                 resume: bool = False, progress: bool = True):
        self._wall_start, self._cpu_start = time.perf_counter(), time.process_time()
        self.cfg = cfg
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.obs_space, self.act_space = obs_space, act_space
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        self.signature = space_signature(obs_space, act_space)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self._all_can_train = False
        torch.manual_seed(cfg.agent.seed)  # the same on every rank: identical initial parameters
        np.random.seed(cfg.agent.seed)
        random.seed(cfg.agent.seed)
        self.rng = np.random.default_rng(cfg.agent.seed)
        self.agent = Agent(obs_space, act_space, cfg.agent)
        # The seed of this rank's envs, actions, replay and latent samples (the agent's seed on rank 0).
        self.seed = distributed.rank_seed(cfg.agent.seed, self.rank)
        if self.rank > 0:
            torch.manual_seed(self.seed)
            np.random.seed(self.seed)
            random.seed(self.seed)
            self.rng = np.random.default_rng(self.seed)
            self.agent.wm.generator.manual_seed(self.seed)
        self.replay = make_replay(cfg, self.logdir / replay_dir(self.rank), self.seed)
        self.extra: dict[str, Any] = {}  # a caller's own progress (e.g. a task sequence), saved in checkpoints
        self.counters = {"env_steps": 0, "agent_steps": 0, "updates": 0, "episodes": 0, "sim_failures": 0,
                         "train_credit": 0.0, "last_log": 0, "last_eval": 0, "last_video": 0, "last_checkpoint": 0,
                         "wall_s": 0.0, "cpu_s": 0.0,  # wall_s, cpu_s: as of the last checkpoint
                         "plasticity_applications": 0}
        purge = None
        if resume:
            self.restore(self.logdir / CHECKPOINT)
            # Everything logged at the checkpoint's step was logged before it was saved: keep it.
            purge = self.counters["env_steps"] + 1
        # the parts before a resume, up to their last checkpoint
        self._wall_base, self._cpu_base = self.counters["wall_s"], self.counters["cpu_s"]
        distributed.broadcast_module(self.agent)  # a guard: every rank built or loaded the same parameters
        self.logger = Logger(self.logdir, purge_step=purge) if self.rank == 0 else NullLogger()
        self.progress = progress
        self.eval_hook: Callable[[], None] | None = None  # set by the caller: what "evaluate" means for the run
        self._bar = None
        self._train_metrics: dict[str, list[float]] = defaultdict(list)
        self._recent_returns: list[float] = []
        self._timer = {"time": time.perf_counter(), "env_steps": self.env_steps, "updates": self.updates}
        counts = self.agent.param_counts()
        if self.rank == 0:
            print(f"parameters: {counts['total']:,} "
                  f"({', '.join(f'{k} {v:,}' for k, v in counts.items() if k != 'total')})", flush=True)
        if not resume:
            self.logger.text("config", "```\n" + dump_json(config_to_dict(cfg)) + "\n```")
            self.logger.text("parameters", "\n".join(f"{k}: {v:,}" for k, v in counts.items()))

    # ----- counters

    @property
    def env_steps(self) -> int:
        return self.counters["env_steps"]

    @property
    def updates(self) -> int:
        return self.counters["updates"]

    def wall_s(self) -> float:
        """Seconds since the run started (this process's part from the Trainer's creation, plus the parts
        before a resume up to their last checkpoint): ``time/wall_s`` in the logs."""
        return self._wall_base + time.perf_counter() - self._wall_start

    def cpu_s(self) -> float:
        """CPU seconds of the training process (all its threads; env subprocesses not included), counted
        like ``wall_s``: ``time/cpu_s`` in the logs. Unlike wall time it hardly grows when other processes
        share the cores, so it says what a run costs on one otherwise idle core at ``train.threads=1``."""
        return self._cpu_base + time.process_time() - self._cpu_start

    # ----- acting in envs

    def random_action(self, N: int) -> np.ndarray:
        if self.discrete:
            return np.eye(self.act_space.n, dtype=np.float32)[self.rng.integers(self.act_space.n, size=N)]
        return self.rng.uniform(-1, 1, (N, *self.act_space.shape)).astype(np.float32)

    def env_action(self, action: np.ndarray) -> np.ndarray:
        return action.argmax(-1) if self.discrete else action

    def collect(self, env: gym.vector.VectorEnv, until_env_steps: int, seed: int | None = None,
                on_step: Callable[[], None] | None = None) -> None:
        """Step ``env`` (resetting it first) until the run has ``until_env_steps`` env steps, storing every
        step, training at the train ratio and doing the periodic work (logs, eval, video, checkpoint)."""
        t = self.cfg.train
        N = env.num_envs
        repeat = self.cfg.env.action_repeat
        rollout = Rollout(env, seed, self.env_action)
        carry, prefill = None, True
        batch_steps = t.batch_size * t.batch_length

        def policy(obs: dict[str, np.ndarray], is_first: np.ndarray) -> np.ndarray:
            nonlocal carry
            if prefill:  # uniform actions for the run's first t.prefill env steps
                return self.random_action(N)
            action, carry = self.agent.act(obs, is_first, carry, explore=True)
            return action

        while self.env_steps < until_env_steps:
            prefill = self.env_steps < t.prefill
            record, outcome = rollout.step(policy)
            self.replay.add(record)
            self.counters["env_steps"] += N * repeat * self.world  # every rank took as many steps
            self.counters["agent_steps"] += N * self.world
            self._episodes(outcome)
            if not prefill and self.can_train(t.batch_length):
                self.counters["train_credit"] += N * t.train_ratio / batch_steps
                while self.counters["train_credit"] >= 1.0:
                    self.counters["train_credit"] -= 1.0
                    self.train_once()
            self.periodic()
            if on_step is not None:
                on_step()
            if self._bar is not None:
                self._bar.update(N * repeat * self.world)

    def can_train(self, length: int) -> bool:
        """Whether the replay holds a window of ``length`` steps; with several ranks, whether every rank's
        does (all ranks must take each update together)."""
        if self.world == 1:
            return self.replay.can_sample(length)
        if not self._all_can_train:  # replays only grow: once every rank can sample, no more collectives
            self._all_can_train = distributed.all_true(self.replay.can_sample(length))
        return self._all_can_train

    def _episodes(self, outcome: Outcome) -> None:
        for ret, length in zip(outcome.returns, outcome.lengths):
            self.counters["episodes"] += 1
            self._recent_returns = (self._recent_returns + [float(ret)])[-10:]
            self.logger.scalars({"episode/return": float(ret), "episode/length": int(length)}, self.env_steps)
        info = outcome.info
        if "simulator_failure" in info:
            failures = int(np.sum(info["_simulator_failure"]))
            self.counters["sim_failures"] += failures
            self.logger.scalars({"env/simulator_failures": self.counters["sim_failures"]}, self.env_steps)

    def train_once(self) -> None:
        t = self.cfg.train
        batch = self.replay.sample(t.batch_size, t.batch_length)
        metrics = self.agent.train_step(batch)
        self.counters["updates"] += 1
        for key, value in metrics.items():
            self._train_metrics[key].append(value)
        p = self.cfg.plasticity
        if p.method != "none" and p.every > 0 and self.updates % p.every == 0:
            self.apply_plasticity(batch)

    def apply_plasticity(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """Apply ``cfg.plasticity``'s method now (ReDo scores units on ``batch``), with a fresh initialisation
        seeded by the run's seed and the application's index; log what it did at the current env step
        (``plasticity/*``) and return it. Draws nothing from the run's random streams."""
        index = self.counters.get("plasticity_applications", 0)
        fresh = plasticity.fresh_agent(self.agent, self.obs_space, plasticity.fresh_seed(self.cfg.agent.seed, index))
        values = plasticity.apply(self.agent, fresh, self.cfg.plasticity, batch)
        self.counters["plasticity_applications"] = index + 1
        values["plasticity/applications"] = float(index + 1)
        self.logger.scalars(values, self.env_steps)
        return values

    def evaluate(self, env: gym.vector.VectorEnv, episodes: int, seed: int = EVAL_SEED) -> list[float]:
        """Returns of ``episodes`` episodes with the deterministic policy (the actor's mode)."""
        carry = None

        def policy(obs: dict[str, np.ndarray], is_first: np.ndarray) -> np.ndarray:
            nonlocal carry
            action, carry = self.agent.act(obs, is_first, carry, explore=False)
            return action

        return episode_returns(env, policy, episodes, seed, self.env_action)

    # ----- periodic work

    def periodic(self) -> None:
        t, c = self.cfg.train, self.counters
        if self.rank == 0:  # other ranks neither log nor evaluate
            if self.env_steps - c["last_log"] >= t.log_every:
                self.log_now()
            if self.eval_hook is not None and t.eval_every > 0 and self.env_steps - c["last_eval"] >= t.eval_every:
                c["last_eval"] = self.env_steps
                self.eval_hook()
            if t.video_every > 0 and self.env_steps - c["last_video"] >= t.video_every and self.updates > 0:
                c["last_video"] = self.env_steps
                self.video_now()
        # Every rank at the same env step (the counters count all ranks): saving gathers their states.
        if t.checkpoint_every > 0 and self.env_steps - c["last_checkpoint"] >= t.checkpoint_every:
            self.save()

    def log_now(self) -> None:
        now = time.perf_counter()
        elapsed = max(now - self._timer["time"], 1e-9)
        t = self.cfg.train
        values = {k: float(np.mean(v)) for k, v in self._train_metrics.items()}
        values["fps/env"] = (self.env_steps - self._timer["env_steps"]) / elapsed
        values["fps/train"] = (self.updates - self._timer["updates"]) * t.batch_size * t.batch_length / elapsed
        values["replay/size"] = len(self.replay)
        values["replay/bytes_per_step"] = self.replay.bytes_per_step() if len(self.replay) else None
        values["train/updates"] = self.updates
        values["time/wall_s"], values["time/cpu_s"] = self.wall_s(), self.cpu_s()
        values.update(memory_mb())  # memory/rss_mb, memory/peak_rss_mb: a leak shows as a rising line
        self.logger.scalars(values, self.env_steps)
        self._train_metrics.clear()
        self._timer = {"time": now, "env_steps": self.env_steps, "updates": self.updates}
        self.counters["last_log"] = self.env_steps
        if self._bar is not None:
            recent = f"{np.mean(self._recent_returns):.1f}" if self._recent_returns else "-"
            self._bar.set_postfix(ret=recent, env_fps=f"{values['fps/env']:.0f}", updates=self.updates,
                                  refresh=False)

    def video_now(self) -> None:
        batch = self.replay.sample(min(4, self.cfg.train.batch_size), self.cfg.train.batch_length)
        report = self.agent.report(batch)
        self.logger.scalars({"report/openloop_reward_error": report["openloop_reward_error"]}, self.env_steps)
        if "openloop" in report:
            self.logger.video("report/openloop", report["openloop"], self.env_steps)

    # ----- checkpoints

    def save(self) -> Path:
        """Write the checkpoint atomically; only then drop replay files it no longer names.

        With several ranks every rank calls this at the same env step: rank 0 writes the checkpoint, with
        the other ranks' replay states, counters and random states under ``ranks`` (rank r at r - 1)."""
        self.counters["last_checkpoint"] = self.env_steps
        self.counters["wall_s"], self.counters["cpu_s"] = self.wall_s(), self.cpu_s()
        replay_state = self.replay.state_dict()
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
               "loop": self.rng.bit_generator.state}
        ranks = None
        if self.world > 1:
            ranks = distributed.gather_to_rank0({"replay": replay_state, "counters": dict(self.counters), "rng": rng,
                                                 "generator": self.agent.wm.generator.get_state()})
        path = self.logdir / CHECKPOINT
        if self.rank == 0:
            state = {
                "format": 1, "config": config_to_dict(self.cfg), "signature": self.signature,
                "agent": self.agent.checkpoint(), "replay": replay_state, "counters": dict(self.counters),
                "extra": self.extra, "rng": rng,
            }
            if ranks is not None:
                state.update(world_size=self.world, ranks=ranks[1:])
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            with open(tmp, "rb") as file:
                os.fsync(file.fileno())
            os.replace(tmp, path)
        distributed.barrier()  # no rank drops replay files before the checkpoint that no longer names them is on disk
        self.replay.collect_garbage(replay_state)
        self.logger.flush()
        return path

    def restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        if state.get("signature") != self.signature:
            raise CheckpointError(f"checkpoint {path} was made for observations/actions {state.get('signature')}, "
                                  f"but this env has {self.signature}.")
        # Read through config_from_dict so fields added since the checkpoint was written take their defaults.
        try:
            saved = config_to_dict(config_from_dict(state["config"], RunConfig))
        except ValueError as error:
            raise CheckpointError(f"checkpoint {path} holds a config this version cannot read: {error}") from error
        # The schedule may change on resume, nothing else.
        diff = config_diff(saved, config_to_dict(self.cfg), skip=["train"])
        if diff:
            fields = "; ".join(f"{k}: checkpoint {u!r}, now {v!r}" for k, u, v in diff)
            raise CheckpointError(f"checkpoint {path} was made with a different config ({fields}); resume with "
                                  "the run's own config.json.")
        world = state.get("world_size", 1)
        if world != self.world:
            command = f"torchrun --nproc_per_node={world} -m agent" if world > 1 else "python -m agent"
            raise CheckpointError(f"checkpoint {path} was written by a run on {world} process(es), but this one has "
                                  f"{self.world}; resume it with as many: {command} train ... --resume.")
        load_agent(self.agent, state["agent"], path)
        own = state if self.rank == 0 else state["ranks"][self.rank - 1]  # this rank's replay, counters, RNG
        self.replay.load_state_dict(own["replay"])
        self.counters.update(own["counters"])
        self.extra = state.get("extra", {})
        random.setstate(own["rng"]["python"])
        np.random.set_state(own["rng"]["numpy"])
        torch.set_rng_state(own["rng"]["torch"])
        self.rng.bit_generator.state = own["rng"]["loop"]
        if self.rank > 0:
            self.agent.wm.generator.set_state(own["generator"])

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self.logger.close()


def record_start(logdir: Path, resume: bool) -> None:
    """Append when, at which commit and with which arguments this run was started or resumed to
    ``starts.jsonl``, so results can name the code that produced them."""
    line = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "resume": resume,
            **{f"git_{k}": v for k, v in git_revision().items()}, "argv": sys.argv[1:]}
    with open(logdir / "starts.jsonl", "a") as file:
        file.write(json.dumps(line) + "\n")


def train(cfg: RunConfig, logdir: str | Path, make_env: Callable[[], gym.vector.VectorEnv],
          make_eval_env: Callable[[], gym.vector.VectorEnv] | None = None, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train one agent on one task for ``cfg.train.steps`` env steps; returns the final counters and the
    last evaluation. Writes config.json, TensorBoard events, metrics.jsonl and checkpoint.pt to logdir."""
    logdir = Path(logdir)
    env = make_env()
    eval_env = make_eval_env() if make_eval_env is not None else None
    trainer = None
    try:
        trainer = Trainer(cfg, env.single_observation_space, env.single_action_space, logdir, resume, progress)
        if trainer.rank == 0:
            # Only once the checkpoint (if any) has been accepted: a refused resume leaves the run as it was.
            (logdir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=1) + "\n")
            record_start(logdir, resume)
        evaluations: list[dict[str, Any]] = []

        def run_eval() -> None:
            if eval_env is None:
                return
            returns = trainer.evaluate(eval_env, cfg.train.eval_episodes)
            evaluations.append({"env_steps": trainer.env_steps, "returns": returns})
            trainer.logger.scalars({"eval/return": float(np.mean(returns)), "time/wall_s": trainer.wall_s()},
                                   trainer.env_steps)

        trainer.eval_hook = run_eval
        if cfg.plasticity.method != "none" and cfg.plasticity.every == 0 and trainer.rank == 0:
            print(f"note: plasticity.method={cfg.plasticity.method} with plasticity.every=0 applies only at task "
                  "boundaries (benchmarks.continual); this single-task run never applies it.", flush=True)
        if progress and trainer.rank == 0:
            from tqdm import tqdm

            # Redraw at most every 2 s; when stderr is a file (CI, nohup) tqdm prints one line per redraw.
            trainer._bar = tqdm(total=cfg.train.steps, initial=trainer.env_steps, unit="step", dynamic_ncols=True,
                                desc=cfg.env.spec, mininterval=2.0 if sys.stderr.isatty() else 30.0)
        trainer.collect(env, cfg.train.steps, seed=trainer.seed + trainer.counters["episodes"])
        if trainer.rank == 0 and trainer.counters["last_log"] != trainer.env_steps:
            trainer.log_now()
        if eval_env is not None and (not evaluations or evaluations[-1]["env_steps"] != trainer.env_steps):
            run_eval()
        trainer.save()
        return {"counters": dict(trainer.counters), "evaluations": evaluations,
                "param_counts": trainer.agent.param_counts()}
    finally:
        if trainer is not None:
            trainer.close()
        env.close()
        if eval_env is not None:
            eval_env.close()
