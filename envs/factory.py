"""``make``, ``make_vec`` and ``vector_env``: the whole wrapper stack for any task, in one place."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from .registry import Spec, parse_spec
from .rendering import default_backend
from .wrappers import ActionRepeat, DictObservation, PhysicsVariant, SeedOnFirstReset, SimulatorGuard

default_backend()  # before anything imports mujoco or dm_control


def make(spec: str, *, obs: str = "pixels", size: int = 64, action_repeat: int = 1,
         render_quality: str = "fast", camera: int | str | None = None, seed: int | None = None,
         variant: dict[str, Any] | None = None) -> gym.Env:
    """Build a task as a Gymnasium env with a Dict observation and actions in [-1, 1] (Box) or kept discrete.

    Args:
        spec: ``dmc:<domain>-<task>`` (every dm_control suite task, plus walker walk/run_backwards and
            cheetah run_backwards) or ``gym:<id>`` (every registered Gymnasium id).
        obs: ``pixels`` (``image``: uint8 size x size x 3), ``state`` (``state``: float32 vector, the task's
            observations flattened in its own key order) or ``both``.
        size: image height and width.
        action_repeat: each action is applied this many times; rewards are summed; stops at episode end.
        render_quality: ``fast`` turns off shadows and multisampling (several times faster software
            rendering, slightly different images); ``full`` keeps the task's own look.
        camera: camera id or name (dm_control default: 0, quadruped 2; Gymnasium: the env's default).
        seed: seeds the first reset (when ``reset`` gets no seed) and the action space.
        variant: physics/reward changes applied at every reset, see ``envs.variants``.

    The suite's or Gymnasium's time limit ends episodes as ``truncated`` after ``max_episode_steps`` env
    steps (``env.get_wrapper_attr('max_episode_steps')``, action repeat included). At an episode's end
    ``info['episode']`` holds its return ``r`` and length ``l`` (calls to ``step``) and ``info['task']`` names
    the task and variant.
    """
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}.")
    parsed = parse_spec(spec)
    if variant is not None and not isinstance(variant, dict):
        raise ValueError(f"variant must be a dict such as {{'gravity': 0.5}}, got {variant!r}.")
    variant = {**parsed.implied_variant, **(variant or {})}
    if obs not in DictObservation.MODES:
        raise ValueError(f"obs must be one of {DictObservation.MODES}, got {obs!r}.")
    if render_quality not in ("fast", "full"):
        raise ValueError(f"render_quality must be 'fast' or 'full', got {render_quality!r}.")
    env = _base_env(parsed, size, camera, render_quality, pixels=obs != "state")
    raw_limit = getattr(env.unwrapped, "max_episode_steps", None) or (env.spec and env.spec.max_episode_steps)
    env = SimulatorGuard(env)
    env = PhysicsVariant(env, variant, str(parsed), implied=parsed.implied_variant)
    if isinstance(env.action_space, gym.spaces.Box):
        env = gym.wrappers.RescaleAction(env, np.float32(-1.0), np.float32(1.0))
    env = ActionRepeat(env, action_repeat)
    env.max_episode_steps = math.ceil(raw_limit / action_repeat) if raw_limit else None
    env = DictObservation(env, obs, size)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env = SeedOnFirstReset(env, seed)
    return env


def _base_env(spec: Spec, size: int, camera: int | str | None, render_quality: str, pixels: bool) -> gym.Env:
    if spec.kind == "dmc":
        from .dmc import DMCEnv

        return DMCEnv(spec.domain, spec.task, size=size, camera=camera, render_quality=render_quality)
    entry = gym.spec(spec.name).entry_point
    is_mujoco = isinstance(entry, str) and entry.startswith("gymnasium.envs.mujoco")
    kwargs: dict[str, Any] = {}
    if pixels:
        kwargs["render_mode"] = "rgb_array"
        if is_mujoco:
            kwargs.update(width=size, height=size)
            if camera is not None:
                kwargs["camera_name" if isinstance(camera, str) else "camera_id"] = camera
    elif camera is not None:
        raise ValueError("camera only applies to obs='pixels' or 'both'.")
    # The passive checker only warns, and check_env is run by our tests instead.
    env = gym.make(spec.name, disable_env_checker=True, **kwargs)
    if is_mujoco and render_quality == "fast":
        quality = env.unwrapped.model.vis.quality
        quality.shadowsize, quality.offsamples = 0, 0
    return env


def make_vec(spec: str, num_envs: int, *, seed: int | None = None, context: str = "spawn",
             **options: Any) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``make(spec, **options)``, in subprocesses (in-process for ``num_envs=1``).

    Autoreset mode: ``NEXT_STEP``. When sub-env i ends an episode (terminated or truncated), the step
    that reports it returns that episode's final observation; the NEXT ``step`` call ignores action i,
    resets sub-env i and returns its first observation with reward 0 and both flags False. So each
    returned observation is a real one, and the step after an episode's end starts the next episode.
    Env i is seeded with ``seed + i``.
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}.")
    make(spec, **options).close()  # fail here, in this process, on a bad spec or option
    return vector_env([functools.partial(make, spec, seed=None if seed is None else seed + i, **options)
                       for i in range(num_envs)], context)


def vector_env(fns: list[Callable[[], gym.Env]], context: str = "spawn") -> gym.vector.VectorEnv:
    """The envs ``fns`` build as one vector env with ``NEXT_STEP`` autoreset (see ``make_vec``): in this process
    for one env, in subprocesses started by ``context`` for more."""
    mode = gym.vector.AutoresetMode.NEXT_STEP
    if len(fns) == 1:
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    return gym.vector.AsyncVectorEnv(fns, context=context, autoreset_mode=mode)
