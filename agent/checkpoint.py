"""Checkpoint files: reading them, checking them against an env, and loading an agent from one.

A checkpoint (written by ``agent.loop.Trainer.save``) holds the run config, the ``space_signature`` of the
env it was trained on, ``Agent.checkpoint()`` under "agent", and the loop's replay, counters and RNG states.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from .agent import Agent
from .config import RunConfig, apply_overrides, config_from_dict


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, truncated, or made for another model or env."""


def space_signature(obs_space: gym.spaces.Dict, act_space: gym.Space) -> dict[str, Any]:
    """What a checkpoint must agree on with an env: observation keys and shapes, action space."""
    obs = {k: [list(v.shape), str(v.dtype)] for k, v in obs_space.spaces.items()}
    act = {"discrete": int(act_space.n)} if isinstance(act_space, gym.spaces.Discrete) else \
        {"box": list(act_space.shape)}
    return {"obs": obs, "action": act}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint, turning unreadable files into a ``CheckpointError`` that says so."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated zip, bad pickle, ... all mean the same to the user
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {error}).") \
            from error


def load_agent(agent: Agent, state: dict[str, Any], path: str | Path) -> None:
    """Restore ``Agent.checkpoint()``'s ``state``, explaining a mismatch instead of dumping a key list."""
    try:
        agent.restore(state)
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} does not match this agent's architecture: {error}") from error


def agent_for_env(path: str | Path, make_env: Callable[[RunConfig], Any], spec: str | None = None,
                  device: str | None = None) -> tuple[Agent, RunConfig, Any, list[str]]:
    """A checkpoint's agent, in eval mode, and an env it can act in: (agent, run config, env, the agent's
    observation keys).

    ``make_env`` builds a single or a vector env from the run config; its observation space may hold more
    keys than the agent reads (e.g. images for a video), the agent's keys and the action space must match
    the checkpoint's. ``spec`` replaces the checkpoint's env spec (the spaces must agree); ``device`` the torch
    device it was trained on (None: keep it, or use the CPU when it names CUDA and there is none).
    """
    state = load_checkpoint(path)
    cfg = apply_overrides(config_from_dict(state["config"], RunConfig), [f"env.spec={spec}"] if spec else [])
    if device is None and cfg.agent.device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device}: this torch has no CUDA device; use cpu.")
    if device:
        cfg = apply_overrides(cfg, [f"agent.device={device}"])
    env = make_env(cfg)
    keys = list(state["signature"]["obs"])
    vector = isinstance(env, gym.vector.VectorEnv)
    obs_space = env.single_observation_space if vector else env.observation_space
    act_space = env.single_action_space if vector else env.action_space
    obs_space = gym.spaces.Dict({k: v for k, v in obs_space.spaces.items() if k in keys})
    try:
        signature = space_signature(obs_space, act_space)
        if signature != state["signature"]:
            raise CheckpointError(f"checkpoint {path} expects {state['signature']}, but {cfg.env.spec} gives "
                                  f"{signature}.")
        agent = Agent(obs_space, act_space, cfg.agent)
        load_agent(agent, state["agent"], path)
    except BaseException:
        env.close()
        raise
    return agent.eval(), cfg, env, keys
