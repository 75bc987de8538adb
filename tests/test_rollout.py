"""Env stepping: step records, episode starts and returns against a scripted env whose episodes are known."""

import types

import gymnasium as gym
import numpy as np
import pytest
import torch

from agent.loop import Trainer
from agent.rollout import Rollout, episode_returns

NEXT_STEP = gym.vector.AutoresetMode.NEXT_STEP


class Scripted(gym.Env):
    """Episode k of this env ends after 3 steps (terminated) when k + offset is even, else after 5
    (truncated). The observation is (k, s) after s steps of episode k; arriving at it pays 10 k + s."""

    observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)})
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, offset: int = 0):
        self.offset, self.episode, self.t = offset, -1, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode = -1 if seed is not None else self.episode
        self.episode, self.t = self.episode + 1, 0
        return self._obs(), {}

    def step(self, action):
        terminates = (self.episode + self.offset) % 2 == 0
        length = 3 if terminates else 5
        assert self.t < length, "stepped past the end of an episode"
        self.t += 1
        end = self.t == length
        return self._obs(), float(10 * self.episode + self.t), terminates and end, not terminates and end, {}

    def _obs(self):
        return {"state": np.array([self.episode, self.t], np.float32)}


def scripted_vec(num_envs: int) -> gym.vector.VectorEnv:
    # RecordEpisodeStatistics as in envs.make, so code that reads info["episode"] can run here too.
    return gym.vector.SyncVectorEnv([lambda i=i: gym.wrappers.RecordEpisodeStatistics(Scripted(i))
                                     for i in range(num_envs)], autoreset_mode=NEXT_STEP)


def expected_flags(state: np.ndarray, offset: int) -> dict[str, np.ndarray]:
    """Flags and reward of observations (..., 2) = (episode, step) of the env with ``offset``, by hand."""
    k, s = state[..., 0].astype(int), state[..., 1].astype(int)
    terminates = (k + offset) % 2 == 0
    last = s == np.where(terminates, 3, 5)
    return {"is_first": s == 0, "is_last": last, "is_terminal": last & terminates,
            "reward": np.where(s == 0, 0.0, 10 * k + s)}


def episode_ends(num_envs: int, calls: int) -> list[tuple[int, int, float, int]]:
    """(call of step that ends it, env, return, length) of every episode ending within ``calls`` calls,
    in the order they end: episodes run back to back, with one extra call (the reset) between them."""
    ends = []
    for i in range(num_envs):
        call, k = 0, 0
        while True:
            length = 3 if (k + i) % 2 == 0 else 5
            call += length
            if call > calls:
                break
            ends.append((call, i, float(sum(10 * k + s for s in range(1, length + 1))), length))
            call, k = call + 1, k + 1
    return sorted(ends)


class Recorder:
    """A policy that remembers what it was shown and numbers its actions."""

    def __init__(self):
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, obs, is_first):
        self.seen.append((obs["state"].copy(), np.array(is_first)))
        return np.full((len(is_first), 1), len(self.seen), np.float32)


def test_records_mark_episode_starts_and_ends_where_they_are():
    env = scripted_vec(2)
    policy, rollout = Recorder(), Rollout(env, seed=0)
    records, ended = [], []
    for call in range(1, 31):
        record, outcome = rollout.step(policy)
        records.append(record)
        ended += [(call, int(i), float(r), int(n)) for i, r, n in zip(outcome.ended, outcome.returns, outcome.lengths)]
    state = np.stack([r["state"] for r in records])  # (T, N, 2)
    for i in range(2):
        want = expected_flags(state[:, i], offset=i)
        for key in ("is_first", "is_last", "is_terminal"):
            np.testing.assert_array_equal(np.array([r[key][i] for r in records]), want[key], err_msg=key)
        np.testing.assert_array_equal(np.array([r["reward"][i] for r in records]), want["reward"])
        # Every observation is seen once: episode k runs s = 0..L, then episode k + 1 starts at s = 0.
        k, s = state[:, i, 0], state[:, i, 1]
        assert np.all((np.diff(s) == 1) & (np.diff(k) == 0) | (s[1:] == 0) & (np.diff(k) == 1) & want["is_last"][:-1])
        # The policy is told is_first exactly at each episode's first observation.
        np.testing.assert_array_equal([f[i] for _, f in policy.seen], s == 0)
    np.testing.assert_array_equal([r["action"][0, 0] for r in records], np.arange(1, 31))
    assert ended == episode_ends(2, 30) and rollout.episodes_ended == len(ended)
    assert [n for _, _, _, n in ended[:4]] == [3, 5, 5, 3]
    env.close()


def test_act_without_advance_leaves_the_env_at_the_last_observation():
    env = scripted_vec(1)
    rollout = Rollout(env, seed=0)
    while rollout.episodes_ended < 1:
        rollout.step(Recorder())
    record = rollout.act(Recorder())
    assert record["state"][0].tolist() == [0, 3] and record["is_last"][0] and record["is_terminal"][0]
    rollout.advance()
    with pytest.raises(RuntimeError, match="act"):
        rollout.advance()
    env.close()


def test_rollout_refuses_same_step_autoreset():
    env = gym.vector.SyncVectorEnv([Scripted], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    with pytest.raises(ValueError, match="NEXT_STEP"):
        Rollout(env)


@pytest.mark.parametrize("num_envs", [1, 2])
def test_episode_returns_counts_each_episode_once(num_envs):
    env = scripted_vec(num_envs)
    got = episode_returns(env, Recorder(), 5, seed=0)
    assert got == [r for _, _, r, _ in episode_ends(num_envs, 100)[:5]]
    env.close()


class FakeAgent:
    """``act`` as the Agent's, remembering the observations and ``is_first`` it was given."""

    def __init__(self):
        self.policy = Recorder()
        self.wm = types.SimpleNamespace(generator=torch.Generator())

    def act(self, obs, is_first, carry, explore=True):
        return self.policy(obs, is_first), carry

    def eval(self):
        return self


@pytest.mark.parametrize("num_envs", [1, 2])
def test_evaluate_starts_the_agent_afresh_on_each_first_observation(num_envs):
    """An episode's first observation (the step after the one that reports its end) has is_first; the
    observation that reports the end does not."""
    agent = FakeAgent()
    trainer = types.SimpleNamespace(agent=agent, env_action=lambda action: action)
    env = scripted_vec(num_envs)
    returns = Trainer.evaluate(trainer, env, 4, seed=0)
    assert returns == [r for _, _, r, _ in episode_ends(num_envs, 100)[:4]]
    state = np.stack([s for s, _ in agent.policy.seen])  # (calls, N, 2)
    is_first = np.stack([f for _, f in agent.policy.seen])
    np.testing.assert_array_equal(is_first, state[..., 1] == 0)
    assert is_first[1:].any()  # later episodes were started, not only the first
    env.close()


def test_cli_eval_starts_the_agent_afresh_on_each_first_observation(monkeypatch, capsys):
    import agent.checkpoint
    import agent.cli
    from agent.config import RunConfig, apply_overrides, config_to_dict

    env = scripted_vec(1)
    fake = FakeAgent()
    cfg = apply_overrides(RunConfig(), [f"train.threads={torch.get_num_threads()}"])
    signature = agent.checkpoint.space_signature(env.single_observation_space, env.single_action_space)
    monkeypatch.setattr(agent.checkpoint, "load_checkpoint", lambda path: {"config": config_to_dict(cfg),
                                                                          "signature": signature, "agent": None})
    monkeypatch.setattr(agent.checkpoint, "load_agent", lambda *args: None)
    monkeypatch.setattr(agent.checkpoint, "Agent", lambda *args: fake)
    monkeypatch.setattr(agent.cli, "env_factory", lambda *args, **kwargs: lambda: env)
    assert agent.cli.main(["eval", "--checkpoint", "fake.pt", "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    for n, (_, _, ret, _) in enumerate(episode_ends(1, 100)[:3], 1):
        assert f"episode {n}: return {ret:.1f}" in out
    state = np.stack([s for s, _ in fake.policy.seen])
    np.testing.assert_array_equal(np.stack([f for _, f in fake.policy.seen]), state[..., 1] == 0)


def test_recorded_heldout_episodes_follow_the_convention():
    from benchmarks.continual import record_episodes

    trainer = types.SimpleNamespace(agent=FakeAgent(), env_action=lambda action: action)
    env = scripted_vec(1)
    data = record_episodes(trainer, env, 3, seed=0)
    # Episodes of 3, 5 and 3 steps: 4 + 6 + 4 records, the last one the third episode's final observation.
    assert data["state"][:, 1].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    want = expected_flags(data["state"], offset=0)
    for key in ("is_first", "is_last", "is_terminal", "reward"):
        np.testing.assert_array_equal(data[key], want[key], err_msg=key)
    np.testing.assert_array_equal(data["action"][:, 0], np.arange(1, 15))
    env.close()


def test_insight_episodes_follow_the_convention():
    from benchmarks.insight import collect_episodes

    env = Scripted(1)  # episode 0 is truncated after 5 steps; every episode here starts from a seeded reset
    episodes = collect_episodes(FakeAgent(), env, ["state"], 2, seed=0, policy="mode")
    for ep in episodes:
        assert ep["state"][:, 1].tolist() == [0, 1, 2, 3, 4, 5]
        want = expected_flags(ep["state"], offset=1)
        for key in ("is_first", "is_terminal", "reward"):
            np.testing.assert_array_equal(ep[key], want[key], err_msg=key)
    (cut,) = collect_episodes(FakeAgent(), env, ["state"], 1, seed=0, policy="random", max_steps=4)
    assert cut["state"][:, 1].tolist() == [0, 1, 2, 3] and not cut["is_terminal"].any()
