"""Wrappers that build the agent's view of any task. One wrapper, one job; ``envs.make`` stacks them."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from .classic import CLASSIC_SPECS, classic_physics
from .variants import PhysicsDefaults, check_variant, variant_label

_INSTABILITY_WARNINGS = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL,
                         mujoco.mjtWarning.mjWARN_BADQACC)


def mujoco_model(env: gym.Env) -> Any:
    """The ``mujoco.MjModel`` behind a dm_control or Gymnasium MuJoCo env, or None."""
    return getattr(env.unwrapped, "model", None)


class SeedOnFirstReset(gym.Wrapper):
    """Uses ``seed`` for the first reset when the caller gives none, and seeds the action space with it,
    so that ``make(spec, seed=s)`` alone fixes everything random in the env."""

    def __init__(self, env: gym.Env, seed: int | None):
        super().__init__(env)
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)

    @property
    def spec(self) -> None:
        # gymnasium.make cannot rebuild this stack from the inner env's registration, so expose none.
        return None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            seed = self._pending_seed
        self._pending_seed = None
        return self.env.reset(seed=seed, options=options)


class SimulatorGuard(gym.Wrapper):
    """Ends the episode (as truncated) instead of crashing when the simulator diverges.

    dm_control raises ``PhysicsError``; MuJoCo under Gymnasium silently resets its data and counts a
    warning; other envs may return non-finite numbers. Each way the step reports
    ``info['simulator_failure'] = True`` and the caller resets, so a long run goes on.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._last_obs = None
        data = getattr(env.unwrapped, "data", None)
        self._mj_data = data if isinstance(data, mujoco.MjData) else None

    def _instabilities(self) -> int:
        if self._mj_data is None:
            return 0
        warning = self._mj_data.warning
        return sum(int(warning[w].number) for w in _INSTABILITY_WARNINGS)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._last_obs = obs
        return obs, info

    def step(self, action):
        from dm_control.rl.control import PhysicsError

        before = self._instabilities()
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except PhysicsError as error:
            return self._failed(f"{type(error).__name__}: {error}")
        if self._instabilities() > before:
            return self._failed("MuJoCo reset its state after a numerical instability")
        if not np.isfinite(reward) or (isinstance(obs, np.ndarray) and not np.all(np.isfinite(obs))):
            return self._failed("non-finite observation or reward")
        self._last_obs = obs
        return obs, reward, terminated, truncated, info

    def _failed(self, why: str):
        return self._last_obs, 0.0, False, True, {"simulator_failure": True, "simulator_error": why}


class PhysicsVariant(gym.Wrapper):
    """Applies a task variant (``envs.variants``, ``envs.classic``) before every reset and names it in
    ``info['task']``. Sits below action rescaling, so classic-control actions are in the env's own units."""

    def __init__(self, env: gym.Env, variant: dict[str, Any] | None, task_name: str,
                 implied: dict[str, Any] | None = None):
        super().__init__(env)
        model = mujoco_model(env)
        base = env.unwrapped
        self._classic = classic_physics(base, task_name) if model is None else None
        physics_keys = set(variant or {}) - {"direction"}
        if model is None and self._classic is None and physics_keys:
            raise ValueError(f"variant keys {sorted(physics_keys)} need a MuJoCo env or one of the classic-control "
                             f"envs ({', '.join(CLASSIC_SPECS)}); {task_name} is neither.")
        if self._classic is not None:
            self.variant = self._classic.check(variant)
        else:
            self.variant = check_variant(variant, model, getattr(base, "supports_direction", False))
        # A spec such as dmc:walker-walk_backwards already names its implied variant.
        label = variant_label({k: v for k, v in self.variant.items() if (implied or {}).get(k) != v})
        self.task_label = f"{task_name}[{label}]" if label else task_name
        self._defaults = PhysicsDefaults(model) if model is not None else None
        if "direction" in self.variant:
            base.reward_direction = self.variant["direction"]

    def reset(self, **kwargs):
        if self._defaults is not None:
            self._defaults.apply(mujoco_model(self.env), self.variant)
        if self._classic is not None:
            self._classic.apply(self.env.unwrapped, self.variant)
        obs, info = self.env.reset(**kwargs)
        info["task"] = self.task_label
        return obs, info

    def step(self, action):
        if self._classic is not None:
            action = self._classic.action(action, self.variant)
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            info["task"] = self.task_label
        return obs, reward, terminated, truncated, info


class ActionRepeat(gym.Wrapper):
    """Repeats each action ``repeat`` times, summing rewards and stopping early at the episode's end."""

    def __init__(self, env: gym.Env, repeat: int):
        if not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"action_repeat must be an integer >= 1, got {repeat!r}.")
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += reward
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class DictObservation(gym.Wrapper):
    """The agent's observation: a Dict with ``image`` (uint8 size x size x 3) and/or ``state`` (float32).

    The state is the inner observation flattened with ``gymnasium.spaces.flatten``; the image comes from
    the inner env's ``render()``, resized when the renderer cannot produce the size directly.
    """

    MODES = ("pixels", "state", "both")

    def __init__(self, env: gym.Env, obs: str, size: int):
        if obs not in self.MODES:
            raise ValueError(f"obs must be one of {self.MODES}, got {obs!r}.")
        super().__init__(env)
        self.mode, self.size = obs, size
        self._inner_space = env.observation_space
        spaces = {}
        if obs in ("pixels", "both"):
            spaces["image"] = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        if obs in ("state", "both"):
            flat = gym.spaces.flatten_space(env.observation_space)
            spaces["state"] = gym.spaces.Box(-np.inf, np.inf, flat.shape, np.float32)
        self.observation_space = gym.spaces.Dict(spaces)

    def _convert(self, inner_obs) -> dict[str, np.ndarray]:
        out = {}
        if "image" in self.observation_space.spaces:
            out["image"] = self._frame()
        if "state" in self.observation_space.spaces:
            out["state"] = np.asarray(gym.spaces.flatten(self._inner_space, inner_obs), np.float32)
        return out

    def _frame(self) -> np.ndarray:
        frame = np.asarray(self.env.render())
        if frame.shape[:2] != (self.size, self.size):
            frame = resize(frame, self.size)
        return np.ascontiguousarray(frame[..., :3], dtype=np.uint8)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._convert(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._convert(obs), reward, terminated, truncated, info


def resize(frame: np.ndarray, size: int) -> np.ndarray:
    """Area-average a frame down to ``size x size`` (Pillow's box filter)."""
    from PIL import Image

    return np.asarray(Image.fromarray(frame[..., :3]).resize((size, size), Image.Resampling.BOX))
