"""Checkpoint files: reading them and checking them against an env.

A checkpoint (written by ``agent.loop.Trainer.save``) holds the run config, the ``space_signature`` of the
env it was trained on, ``Agent.checkpoint()`` under "agent", and the loop's replay, counters and RNG states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from .agent import Agent


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
