"""A dm_control suite task as a Gymnasium env: flat float32 state observations, native action bounds.

Pixels, action scaling, action repeat and variants are wrappers (see ``envs.make``); this class only
translates dm_control's TimeStep protocol into Gymnasium's and renders on request.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import gymnasium as gym
import numpy as np
from dm_control import suite
from dm_control.rl import control

from .rendering import rendering_error


class _BackwardPhysics:
    """A view of the physics whose forward speed is negated, for 'move backwards' rewards."""

    def __init__(self, physics: Any):
        self._physics = physics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._physics, name)

    def horizontal_velocity(self) -> float:  # walker
        return -self._physics.horizontal_velocity()

    def speed(self) -> float:  # cheetah
        return -self._physics.speed()


class DMCEnv(gym.Env):
    """One dm_control suite task. Observation: the task's observations flattened in the suite's key order.

    The suite's time limit ends an episode as ``truncated``; a zero discount (a real terminal state)
    as ``terminated``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, domain: str, task: str, size: int = 64, camera: int | str | None = None,
                 render_quality: str = "fast"):
        if render_quality not in ("fast", "full"):
            raise ValueError(f"render_quality must be 'fast' or 'full', got {render_quality!r}.")
        self._env = suite.load(domain, task, task_kwargs={"random": 0})
        self.render_mode = "rgb_array"
        self.size = size
        self.camera = (2 if domain == "quadruped" else 0) if camera is None else camera
        self.render_quality = render_quality
        self.reward_direction = 1  # set to -1 by the 'direction' variant
        task_obj = self._env.task
        # Tasks whose reward is about forward speed: walker walk/run (not stand) and cheetah run.
        self.supports_direction = (domain == "walker" and task_obj._move_speed > 0) or domain == "cheetah"
        forward_reward = task_obj.get_reward
        # Reward variants look at the same body through a mirrored view of its speed.
        task_obj.get_reward = lambda physics: forward_reward(
            physics if self.reward_direction > 0 else _BackwardPhysics(physics))

        obs_spec = self._env.observation_spec()
        self.state_keys: OrderedDict[str, slice] = OrderedDict()
        start = 0
        for key, spec in obs_spec.items():
            n = int(np.prod(spec.shape))
            self.state_keys[key] = slice(start, start + n)
            start += n
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (start,), np.float32)
        act = self._env.action_spec()
        self.action_space = gym.spaces.Box(act.minimum.astype(np.float32), act.maximum.astype(np.float32),
                                           act.shape, np.float32)
        self.max_episode_steps = int(np.ceil(self._env._step_limit))
        self._quality_set = False

    @property
    def physics(self) -> Any:
        """The dm_control Physics (named access to the MuJoCo model and data)."""
        return self._env.physics

    @property
    def model(self) -> Any:
        """The raw ``mujoco.MjModel``, shared with dm_control."""
        return self._env.physics.model.ptr

    @property
    def data(self) -> Any:
        """The raw ``mujoco.MjData``, shared with dm_control."""
        return self._env.physics.data.ptr

    def sim_state(self) -> dict[str, np.ndarray]:
        """The simulator's true generalised positions and velocities (for probes)."""
        data = self._env.physics.data
        return {"qpos": data.qpos.copy(), "qvel": data.qvel.copy()}

    def _flat(self, observation: dict[str, Any]) -> np.ndarray:
        return np.concatenate([np.asarray(v, np.float32).reshape(-1) for v in observation.values()])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # dm_control tasks draw initial states from their own RandomState.
            self._env.task._random = np.random.RandomState(seed)
        timestep = self._env.reset()
        return self._flat(timestep.observation), {}

    def step(self, action: np.ndarray):
        timestep = self._env.step(action)
        terminated = timestep.last() and timestep.discount == 0.0
        truncated = timestep.last() and not terminated
        return self._flat(timestep.observation), float(timestep.reward or 0.0), bool(terminated), truncated, {}

    def render(self) -> np.ndarray:
        physics = self._env.physics
        if not self._quality_set:
            if self.render_quality == "fast":
                # A 64x64 frame does not need a 2048^2 shadow map or 4x multisampling; both must be set
                # before the first render creates the GL context.
                physics.model.vis.quality.shadowsize = 0
                physics.model.vis.quality.offsamples = 0
            self._quality_set = True
        try:
            return physics.render(self.size, self.size, camera_id=self.camera)
        except Exception as error:  # backend failures surface as many different types
            if isinstance(error, (control.PhysicsError, ValueError)):
                raise
            raise rendering_error(error) from error

    def close(self) -> None:
        try:
            self._env.close()
        except Exception:  # freeing a GL context at exit must not mask the real outcome
            pass
