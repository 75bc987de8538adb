"""Stepping vector envs with a policy: where Gymnasium's ``terminated``/``truncated`` become step records.

Step records follow DreamerV3's convention: the record for observation t holds that observation, the
reward received on arriving at it (0 at an episode's first step), ``is_first``/``is_last``/``is_terminal``
of it, and the action the policy chose at it. ``is_last = terminated or truncated`` and ``is_terminal =
terminated``, both of the step that arrived at the observation.

Vector envs use NEXT_STEP autoreset (as ``envs.make_vec`` builds them): the step that reports an
episode's end returns that episode's last observation; the next step ignores that env's action, resets
it and returns the next episode's first observation with reward 0. So ``is_first`` of step t + 1 is
``is_last`` of step t, and the policy is shown ``is_first`` exactly on each episode's first observation
(where an agent starts a fresh latent state). Training, evaluation, the CLI's ``eval`` and the
benchmarks' recordings all step envs through ``Rollout``; none of them restates the convention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

# (obs with a leading axis of N envs, is_first (N,)) -> actions (N, ...)
Policy = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]


@dataclass
class Outcome:
    """What one step of the vector env reported besides the next observations.

    Attributes:
        info: the vector env's info dict of the step.
        ended: (E,) indices of the envs whose episode this step ended (terminated or truncated).
        returns: (E,) float64, those episodes' returns: the sum of their rewards.
        lengths: (E,) int64, their lengths in calls to ``step`` (the reset step not counted).
    """

    info: dict[str, Any]
    ended: np.ndarray
    returns: np.ndarray
    lengths: np.ndarray


class Rollout:
    """A vector env stepped by a policy, its output kept as step records (see the module docstring).

    ``act(policy)`` asks the policy for actions at the current observations and returns their records;
    ``advance()`` executes those actions and returns the step's ``Outcome``; ``step(policy)`` does both.
    A loop that records whole episodes stops between the two: the record of an episode's last
    observation holds an action that is never executed.

    Args:
        env: a vector env with NEXT_STEP autoreset; it is reset here.
        seed: the reset's seed (Gymnasium seeds env i with seed + i).
        env_action: turns the policy's actions into the env's (e.g. one-hot into indices); identity by default.
    """

    def __init__(self, env: gym.vector.VectorEnv, seed: int | None = None,
                 env_action: Callable[[np.ndarray], np.ndarray] | None = None):
        mode = env.metadata.get("autoreset_mode")
        if mode != gym.vector.AutoresetMode.NEXT_STEP:
            raise ValueError(f"Rollout needs a vector env with NEXT_STEP autoreset (as envs.make_vec builds), "
                             f"got autoreset_mode {mode!r}.")
        self.env = env
        self.env_action = env_action if env_action is not None else (lambda action: action)
        N = env.num_envs
        self.obs, _ = env.reset(seed=seed)
        self.reward = np.zeros(N, np.float32)
        self.is_first = np.ones(N, bool)
        self.is_last = np.zeros(N, bool)
        self.is_terminal = np.zeros(N, bool)
        self.episodes_ended = 0  # episodes whose end a step has reported, all envs together
        self._return = np.zeros(N, np.float64)  # of each env's current episode so far
        self._length = np.zeros(N, np.int64)
        self._action: np.ndarray | None = None

    def act(self, policy: Policy) -> dict[str, np.ndarray]:
        """The records (N, ...) of the current observations, with the actions ``policy`` chooses there."""
        self._action = policy(self.obs, self.is_first)
        return {**self.obs, "action": self._action, "reward": self.reward, "is_first": self.is_first,
                "is_last": self.is_last, "is_terminal": self.is_terminal}

    def advance(self) -> Outcome:
        """Execute the actions of the last ``act``; the env then holds the next observations."""
        if self._action is None:
            raise RuntimeError("Rollout.advance executes the actions chosen by act(); call act first.")
        obs, reward, terminated, truncated, info = self.env.step(self.env_action(self._action))
        self._action = None
        restarted = self.is_last  # these envs ignored their action and reset (NEXT_STEP autoreset)
        reward = np.where(restarted, 0.0, np.asarray(reward, np.float64))
        self._return = np.where(restarted, 0.0, self._return) + reward
        self._length = np.where(restarted, 0, self._length + 1)
        self.obs = obs
        self.reward = reward.astype(np.float32)
        self.is_first = restarted
        self.is_last = np.logical_or(terminated, truncated)
        self.is_terminal = np.asarray(terminated, bool)
        ended = np.flatnonzero(self.is_last)
        self.episodes_ended += len(ended)
        return Outcome(info, ended, self._return[ended], self._length[ended])

    def step(self, policy: Policy) -> tuple[dict[str, np.ndarray], Outcome]:
        """``act`` then ``advance``: the records of the observations acted on, and what the step reported."""
        record = self.act(policy)
        return record, self.advance()


def episode_returns(env: gym.vector.VectorEnv, policy: Policy, episodes: int, seed: int | None = None,
                    env_action: Callable[[np.ndarray], np.ndarray] | None = None) -> list[float]:
    """Returns of the first ``episodes`` episodes to end, in the order they end, from a fresh reset.

    With several envs the shorter episodes end first; every env keeps running until enough have ended.
    """
    rollout = Rollout(env, seed, env_action)
    returns: list[float] = []
    while len(returns) < episodes:
        _, outcome = rollout.step(policy)
        returns += [float(r) for r in outcome.returns]
    return returns[:episodes]
