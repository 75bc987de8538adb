"""WorldModel: shapes, gradients, determinism, checkpoints, step/sequence agreement, causality, overfit."""


import gymnasium.spaces as spaces
import numpy as np
import pytest
import torch

from agent.config import PRESETS, apply_overrides
from agent.world_model import WorldModel

SIZE, N_STATE, A = 32, 5, 2  # 32x32 images keep the debug model fast; the overfit test uses 64x64


def _space(obs: str, size: int = SIZE) -> spaces.Dict:
    parts = {}
    if obs in ("pixels", "both"):
        parts["image"] = spaces.Box(0, 255, (size, size, 3), np.uint8)
    if obs in ("state", "both"):
        parts["state"] = spaces.Box(-np.inf, np.inf, (N_STATE,), np.float32)
    return spaces.Dict(parts)


def _model(obs: str = "both", encoder: str = "patch", *overrides: str, act_space=None, size: int = SIZE):
    cfg = apply_overrides(PRESETS["debug"], [f"world_model.encoder.kind={encoder}", *overrides])
    return WorldModel(_space(obs, size), act_space or spaces.Box(-1, 1, (A,), np.float32), cfg)


def _batch(wm: WorldModel, B: int, T: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    flags = {k: torch.zeros(B, T, dtype=torch.bool) for k in ("is_first", "is_last", "is_terminal")}
    batch = {"action": torch.rand(B, T, wm.action_dim, generator=g) * 2 - 1,
             "reward": torch.randn(B, T, generator=g), **flags}
    batch["is_first"][:, 0] = True
    if wm.has_image:
        batch["image"] = torch.randint(0, 256, (B, T, *wm.image_shape), generator=g, dtype=torch.uint8)
    if wm.has_state:
        batch["state"] = torch.randn(B, T, N_STATE, generator=g)
    return batch


def _obs_at(batch, t):
    return {k: batch[k][:, t] for k in ("image", "state") if k in batch}


def wm_obs(obs: str) -> set[str]:
    return {"pixels": {"image"}, "state": {"state"}, "both": {"image", "state"}}[obs]


COMBOS = [("pixels", "patch"), ("pixels", "cnn"), ("state", "patch"), ("both", "patch"), ("both", "cnn")]


@pytest.mark.parametrize("obs, encoder", COMBOS)
@pytest.mark.parametrize("B, T", [(1, 1), (2, 5), (3, 8)])
def test_loss_shapes_for_every_observation_and_encoder(obs, encoder, B, T):
    wm = _model(obs, encoder)
    total, losses, metrics, posterior, last = wm.loss(_batch(wm, B, T))
    expected = {"reward", "continue_", "dyn", "rep"} | {k for k in ("image", "state") if k in wm_obs(obs)}
    assert set(losses) == expected
    assert all(v.shape == (B, T) for v in losses.values())
    assert total.shape == () and torch.isfinite(total)
    rssm = wm.cfg.world_model.rssm
    assert posterior["deter"].shape == (B, T, rssm.deter)
    assert posterior["stoch"].shape == (B, T, rssm.stoch, rssm.classes)
    assert last["deter"].shape == (B, rssm.deter) and last["action"].shape == (B, A)
    assert ("frames" in last) == (wm.has_image and encoder == "patch")
    first = torch.ones(B, dtype=torch.bool)
    feat, carry = wm.obs_step(wm.initial(B), _obs_at(_batch(wm, B, 1), 0), None, first)
    assert feat.shape == (B, wm.rssm.feat_dim) and set(carry) == set(last)


def test_discrete_actions_are_one_hot_inputs():
    wm = _model("state", act_space=spaces.Discrete(4))
    batch = _batch(wm, 2, 3)
    batch["action"] = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 3)), 4).float()
    metrics, _ = wm.train_step(batch)
    assert wm.action_dim == 4 and np.isfinite(metrics["loss/total"])


def test_gradients_reach_every_module_and_are_finite():
    wm = _model("both", "patch")
    total, losses, *_ = wm.loss(_batch(wm, 2, 6))
    total.backward()
    # Free bits: at initialisation the KL is below 1 nat, so the prior gets no gradient at all.
    assert losses["dyn"].eq(1.0).all() and wm.rssm.prior_out.weight.grad.eq(0).all()
    wm = _model("both", "patch", "world_model.loss.free_nats=0.0")
    total, *_ = wm.loss(_batch(wm, 2, 6))
    total.backward()
    for name, module in wm.modules_by_name().items():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads, f"{name} got no gradient"
        assert all(torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, f"{name} gradients are all zero"
    for param in (wm.encoder.image.tubelet.weight, wm.encoder.state.mlp.net[0].weight, wm.rssm.initial_deter,
                  wm.rssm.gru_gates.weight, wm.rssm.prior_out.weight, wm.rssm.post_embed.weight):
        assert param.grad.abs().sum() > 0


def test_train_step_metrics_and_outputs():
    wm = _model("both", "patch")
    metrics, outputs = wm.train_step(_batch(wm, 2, 4))
    for key in ("loss/total", "loss/image", "loss/dyn", "grad_norm/encoder", "grad_norm/rssm",
                "grad_norm/total", "kl", "prior_entropy"):
        assert isinstance(metrics[key], float) and np.isfinite(metrics[key]), key
    assert metrics["loss/dyn"] >= 1.0 and metrics["loss/rep"] >= 1.0  # free bits clip from below
    posterior = outputs["posterior"]
    assert not posterior["deter"].requires_grad and posterior["deter"].shape[:2] == (2, 4)
    assert not any(v.requires_grad for v in outputs["last_state"].values())


def _params(wm):
    return torch.cat([p.detach().flatten() for p in wm.parameters()])


def test_same_seed_same_parameters_after_two_steps():
    runs = []
    for seed in (0, 0, 1):
        wm = _model("both", "patch", f"seed={seed}")
        batch = _batch(wm, 2, 4)
        for _ in range(2):
            metrics, _ = wm.train_step(batch)
        runs.append((_params(wm), metrics))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][0], runs[2][0])


def test_checkpoint_restores_parameters_optimizer_and_sampling():
    a = _model("both", "patch")
    batch = _batch(a, 2, 4)
    a.train_step(batch)
    saved = a.checkpoint()
    b = _model("both", "patch", "seed=3")
    b.restore(saved)
    ma, _ = a.train_step(batch)
    mb, _ = b.train_step(batch)
    assert torch.equal(_params(a), _params(b)) and ma == mb
    # state_dict is nn.Module's own (parameters and buffers only), with or without a parent's arguments.
    assert saved["model"].keys() == a.state_dict().keys() and "optimizer" not in a.state_dict()
    assert set(a.state_dict(prefix="x.")) == {f"x.{k}" for k in saved["model"]}


@pytest.mark.parametrize("encoder", ["patch", "cnn"])
def test_sequence_and_online_steps_agree(encoder):
    wm = _model("both", encoder, "world_model.encoder.tubelet_frames=3")
    batch = _batch(wm, 2, 7)
    batch["is_first"][1, 4] = True
    posterior, _, _ = wm.observe(batch, sample=False)
    feat_seq = wm.rssm.features(posterior)
    carry = wm.initial(2)
    for t in range(7):
        prev_action = carry["action"] if t == 0 else batch["action"][:, t - 1]
        is_first = batch["is_first"][:, t]
        feat, carry = wm.obs_step(carry, _obs_at(batch, t), prev_action, is_first, sample=False)
        torch.testing.assert_close(feat, feat_seq[:, t], rtol=1e-5, atol=1e-5)


def test_windows_continue_through_the_carried_state():
    wm = _model("both", "patch", "world_model.encoder.tubelet_frames=3")
    batch = _batch(wm, 2, 8)
    full, _, _ = wm.observe(batch, sample=False)
    head, _, last = wm.observe({k: v[:, :4] for k, v in batch.items()}, sample=False)
    tail = {k: v[:, 4:] for k, v in batch.items()}
    cont, _, _ = wm.observe(tail, last, sample=False)
    for key in ("deter", "logits"):  # logits see the embedding directly; mode samples may hide a change
        torch.testing.assert_close(cont[key], full[key][:, 4:], rtol=1e-5, atol=1e-5)
    fresh, _, _ = wm.observe(tail, None, sample=False)  # no context: must differ, or the test proves nothing
    assert (fresh["logits"][:, 0] - full["logits"][:, 4]).abs().max() > 1e-4
    assert (fresh["deter"][:, 0] - full["deter"][:, 4]).abs().max() > 1e-3


def test_features_are_causal_in_the_observations():
    wm = _model("both", "patch")
    batch = _batch(wm, 2, 8)
    base, _, _ = wm.observe(batch, sample=False)
    batch["image"][:, 5:] = 255 - batch["image"][:, 5:]
    batch["state"][:, 5:] += 5.0
    batch["action"][:, 5:] += 1.0  # action_t is chosen at t: it may only affect steps after t
    changed, _, _ = wm.observe(batch, sample=False)
    torch.testing.assert_close(changed["deter"][:, :6], base["deter"][:, :6], rtol=0, atol=1e-6)
    torch.testing.assert_close(changed["logits"][:, :5], base["logits"][:, :5], rtol=0, atol=1e-6)
    assert (changed["logits"][:, 5] - base["logits"][:, 5]).abs().max() > 1e-4
    assert (changed["deter"][:, 6] - base["deter"][:, 6]).abs().max() > 1e-3


def test_reward_and_continue_targets_are_aligned_with_their_rows():
    wm = _model("state")
    with torch.no_grad():  # the zero-initialised output layer predicts uniform bins, whatever the target
        wm.reward.out.weight.normal_()
    batch = _batch(wm, 2, 6)
    rng = wm.generator.get_state()
    _, base, *_ = wm.loss(batch)
    batch["reward"][0, 3] = 50.0
    wm.generator.set_state(rng)  # the same latent samples
    _, changed, *_ = wm.loss(batch)
    diff = (changed["reward"] - base["reward"]).abs() > 1e-6
    assert diff.nonzero().tolist() == [[0, 3]]
    with torch.no_grad():  # a continue head that is sure the episode continues
        wm.continue_.out.weight.zero_()
        wm.continue_.out.bias.fill_(20.0)
    batch["is_terminal"][1, 5] = True
    _, losses, *_ = wm.loss(batch)
    assert losses["continue_"][1, 5].item() == pytest.approx(20.0, abs=1e-3)  # -log sigmoid(-20)
    assert losses["continue_"].flatten()[:-1].max() < 1e-6


def test_reward_head_predicts_exactly_zero_at_initialisation():
    wm = _model("state")
    assert wm.decode(torch.randn(3, 4, wm.rssm.feat_dim))["reward"].eq(0).all()


def test_openloop_shapes_and_action_alignment():
    wm = _model("both", "patch")
    batch = _batch(wm, 2, 6)
    out = wm.openloop(batch, context=3, sample=False)
    assert out["image"].shape == batch["image"].shape and out["state"].shape == batch["state"].shape
    assert out["reward"].shape == out["continue_"].shape == out["image_error"].shape == (2, 6)
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
    last_action = dict(batch, action=batch["action"].clone())
    last_action["action"][:, 5] += 1.0  # chosen at the last step: never consumed
    torch.testing.assert_close(wm.openloop(last_action, 3, sample=False)["image"], out["image"])
    moved = dict(batch, action=batch["action"].clone())
    moved["action"][:, 3] += 1.0  # consumed by the prediction of step 4
    changed = wm.openloop(moved, 3, sample=False)["image"]
    torch.testing.assert_close(changed[:, :4], out["image"][:, :4])
    assert (changed[:, 4] - out["image"][:, 4]).abs().max() > 1e-4


def _cartpole_frames(B: int, T: int, repeat: int = 8) -> np.ndarray:
    """Real dm_control frames (B, T, 64, 64, 3) uint8 from cartpole swingup under random actions, one
    frame every `repeat` control steps so that consecutive frames differ visibly."""
    from dm_control import suite

    env = suite.load("cartpole", "swingup", task_kwargs={"random": 0})
    env.physics.model.vis.quality.shadowsize = 0  # before the first render: no shadows, no multisampling
    env.physics.model.vis.quality.offsamples = 0
    rng = np.random.default_rng(0)
    frames = np.zeros((B, T, 64, 64, 3), np.uint8)
    for b in range(B):
        env.reset()
        for t in range(T):
            frames[b, t] = env.physics.render(64, 64, camera_id=0)
            action = rng.uniform(-1, 1, size=1)
            for _ in range(repeat):
                env.step(action)
    return frames


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["patch", "cnn"])
def test_overfits_a_batch_of_real_frames(encoder):
    B, T = 2, 12
    frames = torch.from_numpy(_cartpole_frames(B, T))
    wm = _model("pixels", encoder, "world_model.optim.lr=1e-3", size=64)
    batch = _batch(wm, B, T)
    batch["image"] = frames
    first, _ = wm.train_step(batch)
    for _ in range(40):  # seen: about 1300 -> 160 for both encoders (mean-image baseline of these frames: 17)
        metrics, _ = wm.train_step(batch)
    assert metrics["loss/image"] < 0.5 * first["loss/image"], (first["loss/image"], metrics["loss/image"])
