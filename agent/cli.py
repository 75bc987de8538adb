"""Command line: ``python -m agent train|eval|presets`` (also installed as ``tubedreamer``).

This is the entry point that wires concrete envs (``envs.make_vec``) to the agent and the loop.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n if n > 0 else max(1, os.cpu_count() or 1))


def env_factory(cfg: Any, num_envs: int, eval_env: bool = False, rank: int = 0):
    """A function that builds the run's vector env (train or eval) from the env config section; a
    data-parallel rank's envs get seeds of their own (``agent.distributed.rank_seed``)."""
    import envs

    from .distributed import rank_seed

    seed = rank_seed(cfg.agent.seed, rank) + (1000 if eval_env else 0)
    return functools.partial(envs.make_vec, cfg.env.spec, num_envs, seed=seed, **cfg.env.make_kwargs())


def build_config(args: argparse.Namespace):
    """Preset + env flags + ``--set`` overrides, validated before any work starts."""
    from .config import RunConfig, apply_overrides, config_from_dict, default_job, preset, validate_run

    logdir = Path(args.logdir)
    if args.resume:
        path = logdir / "config.json"
        if not path.exists():
            raise ValueError(f"--resume: {path} does not exist; is {logdir} a run directory?")
        cfg = config_from_dict(json.loads(path.read_text()), RunConfig)
        # Only the schedule may change on resume (e.g. train longer); the rest must match the checkpoint.
        bad = [o for o in args.set if not o.startswith("train.")]
        if bad or args.env or args.seed is not None:
            raise ValueError(f"--resume only accepts --steps and train.* overrides, got {bad or '--env/--seed'}.")
        flags = [f"train.steps={args.steps}"] if args.steps is not None else []
        return validate_run(apply_overrides(cfg, [*flags, *args.set]))
    if args.preset is None and args.env is None:
        import torch

        cfg = default_job(cuda=torch.cuda.is_available())
    else:
        cfg = RunConfig(agent=preset(args.preset or "cpu"))
    flags = [f"env.spec={args.env}"] if args.env else []
    flags += [f"agent.seed={args.seed}"] if args.seed is not None else []
    flags += [f"train.steps={args.steps}"] if args.steps is not None else []
    return validate_run(apply_overrides(cfg, [*flags, *args.set]))


def cmd_train(args: argparse.Namespace) -> int:
    from . import distributed
    from .loop import train

    cfg = build_config(args)
    logdir = Path(args.logdir)
    if not args.resume and (logdir / "checkpoint.pt").exists():
        raise ValueError(f"{logdir} already holds a run; pass --resume to continue it or choose another --logdir.")
    logdir.mkdir(parents=True, exist_ok=True)
    _threads(cfg.train.threads)
    # Under torchrun (WORLD_SIZE > 1) this process is one rank of a data-parallel run; else nothing changes.
    distributed.init_from_env(cfg.agent.device)
    try:
        rank = distributed.rank()
        make_env = env_factory(cfg, cfg.env.num_envs, rank=rank)
        evaluate = cfg.train.eval_episodes > 0 and rank == 0  # rank 0 alone evaluates
        make_eval = env_factory(cfg, cfg.env.eval_envs, eval_env=True) if evaluate else None
        summary = train(cfg, logdir, make_env, make_eval, resume=args.resume, progress=not args.no_progress)
    finally:
        distributed.shutdown()
    if rank > 0:
        return 0
    if summary["evaluations"]:
        last = summary["evaluations"][-1]
        print(f"final eval return: {sum(last['returns']) / len(last['returns']):.1f} over "
              f"{len(last['returns'])} episodes at {last['env_steps']} env steps")
    print(f"logs and checkpoint in {logdir}; watch with: tensorboard --logdir {logdir.parent}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from .checkpoint import agent_for_env
    from .config import apply_overrides
    from .rollout import Rollout

    def make_env(cfg: Any) -> Any:
        if args.video and cfg.env.obs == "state":
            cfg = apply_overrides(cfg, ["env.obs=both"])  # frames for the video; the agent still sees the state
        return env_factory(cfg, 1, eval_env=True)()

    agent, cfg, env, keys = agent_for_env(args.checkpoint, make_env, spec=args.env)
    _threads(cfg.train.threads)
    try:
        discrete = hasattr(env.single_action_space, "n")
        carry, returns, frames = None, [], []

        def policy(obs: dict[str, np.ndarray], is_first: np.ndarray) -> np.ndarray:
            nonlocal carry
            action, carry = agent.act({k: obs[k] for k in keys}, is_first, carry, explore=False)
            return action

        rollout = Rollout(env, args.seed, lambda action: action.argmax(-1) if discrete else action)
        while len(returns) < args.episodes:
            if args.video and not returns:
                frames.append(rollout.obs["image"][0])
            _, outcome = rollout.step(policy)
            for ret in outcome.returns:
                returns.append(float(ret))
                print(f"episode {len(returns)}: return {ret:.1f}", flush=True)
    finally:
        env.close()
    print(f"mean return over {len(returns)} episodes: {np.mean(returns):.1f} (std {np.std(returns):.1f})")
    if args.video:
        write_video(args.video, np.stack(frames))
        print(f"wrote {args.video}")
    return 0


def write_video(path: str, frames: Any, fps: int = 25) -> None:
    """Frames (T, H, W, 3) uint8 to .gif (always available) or .mp4 (needs imageio-ffmpeg)."""
    import imageio.v3 as iio

    if path.endswith(".gif"):
        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
        return
    try:
        iio.imwrite(path, frames, fps=fps)
    except Exception as error:
        raise ValueError(f"could not write {path} ({error}); use a .gif path, or pip install imageio-ffmpeg "
                         "for mp4.") from error


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import PRESETS

    for name in PRESETS:
        print(name)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent", description="Train and evaluate Dreamer-style agents.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an agent on one task")
    t.add_argument("--env", help="env spec, e.g. dmc:cartpole-balance or gym:Pendulum-v1")
    t.add_argument("--preset", help="agent preset: debug, cpu, small, 12m, 25m, 50m, 100m, 200m (default cpu); "
                   "with neither --env nor --preset: the default job (see README)")
    t.add_argument("--seed", type=int, help="seed of the agent, envs and replay")
    t.add_argument("--steps", type=int, help="env steps to train for (action repeat included)")
    t.add_argument("--logdir", required=True, help="run directory (config, TensorBoard events, checkpoint)")
    t.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override config fields, e.g. train.batch_size=8 agent.world_model.encoder.kind=cnn")
    t.add_argument("--resume", action="store_true", help="continue the run in --logdir from its checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("--checkpoint", required=True, help="path to checkpoint.pt")
    e.add_argument("--episodes", type=int, default=5, help="episodes to run")
    e.add_argument("--env", help="evaluate on another env spec with the same spaces")
    e.add_argument("--seed", type=int, default=12345, help="seed of the evaluation episodes")
    e.add_argument("--video", help="write the first episode to this .gif (or .mp4 with imageio-ffmpeg)")
    e.set_defaults(func=cmd_eval)
    s = sub.add_parser("presets", help="list agent presets")
    s.set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:  # bad config, spec, checkpoint: one clear line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
