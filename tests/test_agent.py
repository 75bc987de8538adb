"""The agent seam: acting, gradient isolation, skipped non-finite updates, determinism, the actor-critic math."""

import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from agent.actor_critic import ActorCritic
from agent.agent import Agent
from agent.config import apply_overrides, preset

STATE = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)})
PIXELS = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)})
BOX = gym.spaces.Box(-1, 1, (2,), np.float32)


def debug_cfg(*overrides):
    return apply_overrides(preset("debug"), ["actor_critic.horizon=5", *overrides])


def random_batch(obs_space, act_dim, B=3, T=8, seed=0):
    rng = np.random.default_rng(seed)
    batch = {"action": rng.uniform(-1, 1, (B, T, act_dim)).astype(np.float32),
             "reward": rng.uniform(0, 1, (B, T)).astype(np.float32),
             "is_first": np.zeros((B, T), bool), "is_last": np.zeros((B, T), bool),
             "is_terminal": np.zeros((B, T), bool)}
    batch["is_first"][:, 0] = True
    if "state" in obs_space.spaces:
        batch["state"] = rng.normal(size=(B, T, *obs_space["state"].shape)).astype(np.float32)
    if "image" in obs_space.spaces:
        batch["image"] = rng.integers(0, 256, (B, T, *obs_space["image"].shape), dtype=np.uint8)
    return batch


@pytest.mark.parametrize("obs_space", [STATE, PIXELS], ids=["state", "pixels"])
def test_act_shapes_bounds_and_carry(obs_space):
    agent = Agent(obs_space, BOX, debug_cfg())
    obs = {k: v[:, 0] for k, v in random_batch(obs_space, 2, B=4).items() if k in obs_space.spaces}
    action, carry = agent.act(obs, np.ones(4, bool), None)
    assert action.shape == (4, 2) and action.dtype == np.float32 and np.abs(action).max() <= 1
    action2, carry2 = agent.act(obs, np.zeros(4, bool), carry)
    assert carry2["deter"].shape == carry["deter"].shape
    mode1, _ = agent.act(obs, np.ones(4, bool), None, explore=False)
    mode2, _ = agent.act(obs, np.ones(4, bool), None, explore=False)
    np.testing.assert_array_equal(mode1, mode2)  # the deterministic policy is deterministic


def test_discrete_actions_are_one_hot():
    agent = Agent(STATE, gym.spaces.Discrete(3), debug_cfg())
    obs = {"state": np.zeros((5, 5), np.float32)}
    action, _ = agent.act(obs, np.ones(5, bool), None)
    assert action.shape == (5, 3) and np.all(action.sum(-1) == 1) and set(np.unique(action)) <= {0.0, 1.0}
    metrics = agent.train_step(random_batch(STATE, 3))
    assert np.isfinite(metrics["train/loss/actor"])


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize("actor_grad", ["reinforce", "dynamics"])
def test_actor_critic_update_leaves_the_world_model_untouched(actor_grad):
    agent = Agent(STATE, BOX, debug_cfg(f"actor_critic.actor_grad={actor_grad}"))
    assert agent.ac.dynamics_grad == (actor_grad == "dynamics")
    batch = agent.to_torch(random_batch(STATE, 2))
    _, outputs = agent.wm.train_step(batch)
    before, actor_before = params(agent.wm), params(agent.ac.actor)
    agent.wm.zero_grad(set_to_none=True)
    start = {k: v.reshape(-1, *v.shape[2:]) for k, v in outputs["posterior"].items() if k in ("deter", "stoch")}
    agent.actor_critic_step(start, torch.ones(start["deter"].shape[0]))
    assert all(p.grad is None for p in agent.wm.parameters())
    assert all(p.requires_grad for p in agent.wm.parameters())  # unfrozen again afterwards
    for name, value in params(agent.wm).items():
        assert torch.equal(value, before[name]), name
    assert any(not torch.equal(v, actor_before[k]) for k, v in params(agent.ac.actor).items())


def test_replay_value_loss_trains_the_critic_only():
    """With ``replay_value`` on, the critic also regresses returns of the replayed sequences: its update
    differs from the one without, and the actor and the world model get nothing from that term."""
    results = []
    for scale in (0.0, 1.0):
        agent = Agent(STATE, BOX, debug_cfg(f"actor_critic.replay_value={scale}"))
        batch = random_batch(STATE, 2)
        torch.manual_seed(0)
        metrics = agent.train_step(batch)
        results.append((params(agent.ac.critic), params(agent.ac.actor), params(agent.wm), metrics))
    (critic0, actor0, wm0, m0), (critic1, actor1, wm1, m1) = results
    assert "replay/return" in m1 and "replay/return" not in m0
    assert m1["replay/return"] > 0  # rewards in [0, 1] and a zero-initialised critic
    assert any(not torch.equal(v, critic0[k]) for k, v in critic1.items())
    for name in actor0:
        assert torch.equal(actor0[name], actor1[name]), name
    for name in wm0:
        assert torch.equal(wm0[name], wm1[name]), name


def test_one_backward_gives_each_of_actor_and_critic_its_own_gradient():
    """`ActorCritic.update` backpropagates actor + critic loss at once; each module's gradient must be that of
    its own loss alone."""
    agent = Agent(STATE, BOX, debug_cfg())
    torch.manual_seed(0)
    start = {"deter": torch.randn(8, agent.wm.rssm.D),
             "stoch": torch.softmax(torch.randn(8, agent.wm.rssm.S, agent.wm.rssm.K), -1)}
    with torch.no_grad():
        traj = agent.imagine(start, torch.ones(8))
    losses, _ = agent.ac.losses(traj["feat"], traj["action"], traj["reward"], traj["continue_"])
    separate = {}
    for name, module in (("actor", agent.ac.actor), ("critic", agent.ac.critic)):
        separate[name] = torch.autograd.grad(losses[name].mean(), list(module.parameters()), retain_graph=True,
                                             allow_unused=True)
    assert all(g is not None for g in separate["critic"])
    together = torch.autograd.grad(losses["actor"].mean() + losses["critic"].mean(),
                                   [*agent.ac.actor.parameters(), *agent.ac.critic.parameters()], allow_unused=True)
    for a, b in zip(together, [*separate["actor"], *separate["critic"]]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dynamics_gradient_reaches_the_actor_through_the_model():
    """With dynamics backprop the actor's loss depends on its actions only through the imagined states;
    the actor must still receive a gradient, and a discrete action space must refuse the mode."""
    agent = Agent(STATE, BOX, debug_cfg("actor_critic.actor_grad=dynamics", "actor_critic.entropy=0"))
    for head in (agent.wm.reward, agent.ac.critic):  # zero-initialised outputs would give zero returns
        for layer in head.modules():
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=0.3)
    start = {k: v.detach() for k, v in agent.wm.initial(8).items() if k in ("deter", "stoch")}
    with torch.enable_grad():
        traj = agent.imagine(start, torch.ones(8))
    assert traj["feat"].requires_grad and traj["action"].requires_grad
    losses, _ = agent.ac.losses(traj["feat"], traj["action"], traj["reward"], traj["continue_"])
    losses["actor"].mean().backward()
    grads = [p.grad for p in agent.ac.actor.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in agent.ac.critic.parameters())
    with pytest.raises(ValueError, match="continuous"):
        Agent(STATE, gym.spaces.Discrete(3), debug_cfg("actor_critic.actor_grad=dynamics"))


def test_non_finite_batches_are_skipped_and_counted():
    agent = Agent(STATE, BOX, debug_cfg())
    batch = random_batch(STATE, 2)
    agent.train_step(batch)
    before = params(agent)
    batch["reward"][0, 3] = np.nan
    metrics = agent.train_step(batch)
    assert metrics["train/skipped_updates"] == 1.0 and agent.skipped_updates == 1
    for name, value in params(agent).items():
        assert torch.equal(value, before[name]), name
    metrics = agent.train_step(random_batch(STATE, 2, seed=1))  # training goes on
    assert metrics["train/skipped"] == 0.0 and np.isfinite(metrics["train/loss/total"])


def test_same_seed_same_parameters_after_updates():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        agent = Agent(STATE, BOX, debug_cfg("seed=3"))
        for i in range(3):
            agent.train_step(random_batch(STATE, 2, seed=i))
        runs.append(params(agent))
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name
    torch.manual_seed(0)
    other = Agent(STATE, BOX, debug_cfg("seed=4"))
    assert any(not torch.equal(v, runs[0][k]) for k, v in params(other).items())


def test_checkpoint_round_trip_restores_optimizers_and_normaliser():
    agent = Agent(STATE, BOX, debug_cfg())
    for i in range(2):
        agent.train_step(random_batch(STATE, 2, seed=i))
    state = agent.checkpoint()
    clone = Agent(STATE, BOX, debug_cfg())
    clone.restore(state)
    assert clone.ac.normalizer.high.item() == agent.ac.normalizer.high.item() != 0
    torch.manual_seed(5)
    a = agent.train_step(random_batch(STATE, 2, seed=9))
    torch.manual_seed(5)
    b = clone.train_step(random_batch(STATE, 2, seed=9))
    assert a["train/loss/actor"] == b["train/loss/actor"] and a["train/loss/total"] == b["train/loss/total"]


def test_restore_reads_the_layout_of_checkpoints_already_on_disk():
    """Checkpoints written before ``checkpoint()`` existed hold, under "agent", exactly this dict (built here
    from its parts, key by key), and runs in flight are resumed from them."""
    agent = Agent(STATE, BOX, debug_cfg())
    for i in range(2):
        agent.train_step(random_batch(STATE, 2, seed=i))
    wm, ac = agent.wm, agent.ac
    old = {"world_model": {"model": wm.state_dict(), "optimizer": wm.optimizer.state_dict(),
                           "generator": wm.generator.get_state()},
           "actor_critic": ac.state_dict(),
           "actor_critic_optim": {"actor": ac.actor_opt.state_dict(), "critic": ac.critic_opt.state_dict()},
           "skipped_updates": 3}
    new = agent.checkpoint()
    assert new.keys() == old.keys() and new["world_model"].keys() == old["world_model"].keys()
    buffer = io.BytesIO()
    torch.save(old, buffer)  # through a file's bytes, as from disk
    buffer.seek(0)
    clone = Agent(STATE, BOX, debug_cfg("seed=7"))
    clone.restore(torch.load(buffer, weights_only=False))
    assert clone.skipped_updates == 3
    for (name, a), b in zip(agent.state_dict().items(), clone.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    torch.manual_seed(5)
    a = agent.train_step(random_batch(STATE, 2, seed=9))
    torch.manual_seed(5)
    b = clone.train_step(random_batch(STATE, 2, seed=9))
    assert a["train/loss/total"] == b["train/loss/total"] and a["train/loss/actor"] == b["train/loss/actor"]


def test_critic_regresses_lambda_returns_worked_by_hand():
    """Constant reward 1, continue 1, a zero-initialised critic (value 0), H=2, lambda=0.5, discount 0.9:
    R_1 = r_2 + 0.9 * (0.5 * v_2 + 0.5 * v_2) = 1 (bootstrap v_2 = 0), R_0 = r_1 + 0.9 * (0.5 * v_1 + 0.5 * R_1)
    = 1 + 0.45 = 1.45. The imagined return metric is their mean, 1.225."""
    cfg = apply_overrides(preset("debug"), ["actor_critic.lambda_=0.5", "actor_critic.discount=0.9"]).actor_critic
    ac = ActorCritic(4, BOX, cfg)
    feat = torch.randn(3, 6, 4)
    _, metrics = ac.losses(feat, torch.zeros(3, 6, 2), torch.ones(3, 6), torch.ones(3, 6))
    assert float(metrics["imagine/return"]) == pytest.approx(1.225, abs=1e-5)
    assert float(metrics["imagine/value"]) == 0.0  # zero-initialised output layer


def test_terminal_start_weights_nothing():
    cfg = preset("debug").actor_critic
    ac = ActorCritic(4, BOX, cfg)
    feat = torch.randn(4, 2, 4)
    continue_ = torch.ones(4, 2)
    continue_[0, 1] = 0.0  # the second start state is terminal
    losses, _ = ac.losses(feat, torch.zeros(4, 2, 2), torch.ones(4, 2), continue_)
    assert torch.all(losses["critic"][:, 1] == 0) and torch.all(losses["critic"][:, 0] > 0)
