"""What the world model knows: ridge probes, simulator state, open-loop windows and the insight CLI."""

import importlib.util
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from agent.agent import Agent
from agent.config import RunConfig, apply_overrides, preset
from agent.logger import read_scalars
from agent.loop import Trainer
from benchmarks import insight, readme
from benchmarks.probes import fit_ridge, fit_ridge_cv, fold_ids, r2_score, ridge_solutions

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------- probes


def test_probe_recovers_a_linear_relation_on_held_out_data():
    rng = np.random.default_rng(0)
    # Features on very different scales and offsets: standardisation must make that irrelevant.
    X = rng.normal(size=(600, 40)) * rng.uniform(0.01, 100, 40) + rng.uniform(-50, 50, 40)
    W = rng.normal(size=(40, 3))
    Y = X @ W + 3.0 + 0.01 * rng.normal(size=(600, 3)) * (X @ W).std(0)
    probe = fit_ridge_cv(X[:400], Y[:400], groups=np.arange(400) // 40)
    r2 = r2_score(Y[400:], probe.predict(X[400:]))
    assert r2.shape == (3,) and np.all(r2 > 0.99), r2


def test_probe_on_noise_scores_near_zero():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(3000, 30)), rng.normal(size=(3000, 2))
    probe = fit_ridge_cv(X[:2000], Y[:2000], groups=np.arange(2000) // 100)
    r2 = r2_score(Y[2000:], probe.predict(X[2000:]))
    assert np.all(np.abs(r2) < 0.02), r2
    assert np.all(probe.alpha >= 1.0), probe.alpha  # cross-validation chose strong shrinkage


def test_cross_validation_picks_alpha_per_column():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, 10))
    Y = np.stack([X @ rng.normal(size=10), rng.normal(size=500)], 1)  # one signal, one noise column
    probe = fit_ridge_cv(X, Y, groups=np.arange(500) // 50)
    assert probe.alpha[0] < 1e-2 < probe.alpha[1]


def test_ridge_solutions_match_the_normal_equations_in_primal_and_dual_form():
    rng = np.random.default_rng(3)
    alphas = np.array([1e-3, 0.5])
    for N, F in [(50, 8), (8, 50)]:  # F <= N uses Z'Z, F > N uses ZZ'
        Z, Y = rng.normal(size=(N, F)), rng.normal(size=(N, 2))
        expected = np.stack([np.linalg.solve(Z.T @ Z + N * a * np.eye(F), Z.T @ Y) for a in alphas])
        np.testing.assert_allclose(ridge_solutions(Z, Y, alphas), expected, rtol=1e-8, atol=1e-10)


def test_tiny_alpha_is_least_squares_and_per_column_alpha_is_used():
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(100, 5)) * 3 + 1, rng.normal(size=(100, 2))
    probe = fit_ridge(X, Y, 1e-12)
    design = np.concatenate([X, np.ones((100, 1))], 1)
    coef = np.linalg.lstsq(design, Y, rcond=None)[0]
    np.testing.assert_allclose(probe.predict(X), design @ coef, atol=1e-8)
    mixed = fit_ridge(X, Y, np.array([1e-12, 1e3]))
    np.testing.assert_allclose(mixed.predict(X)[:, 0], probe.predict(X)[:, 0], atol=1e-8)
    assert np.abs(mixed.weight[:, 1]).max() < 1e-3  # strong shrinkage on column 1 only


def test_r2_known_values_and_constant_column():
    Y = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    prediction = np.array([[1.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    r2 = r2_score(Y, prediction)
    assert r2[0] == pytest.approx(1 - 1 / 2) and np.isnan(r2[1])
    assert r2_score(Y[:, :1], np.full((3, 1), 2.0))[0] == pytest.approx(0.0)  # the mean scores 0
    reference = np.array([[0.0, 0.0], [4.0, 1.0]])  # variances 4 and 0.25
    fixed = r2_score(Y, prediction, reference)
    assert fixed[0] == pytest.approx(1 - (1 / 3) / 4) and fixed[1] == pytest.approx(1.0)


def test_folds_keep_groups_together():
    groups = np.repeat([7, 3, 9, 1, 5, 2], 4)
    fold = fold_ids(groups, 3)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    assert set(fold) == {0, 1, 2}
    assert list(fold_ids(np.zeros(6), 3)) == [0, 0, 1, 1, 2, 2]  # one group: contiguous blocks


# --------------------------------------------------------------------------------------------- simulator state


def test_recorded_dmc_state_matches_the_env_and_its_observations():
    env = envs.make("dmc:cartpole-swingup", obs="state", action_repeat=2, seed=0)
    episodes = insight.collect_episodes(None, env, ["state"], 2, seed=5, policy="random", max_steps=20)
    own = env.unwrapped.sim_state()  # DMCEnv's own reading, after the last recorded step
    np.testing.assert_array_equal(envs.sim_state(env)["qpos"], own["qpos"])
    np.testing.assert_array_equal(episodes[-1]["qpos"][-1], own["qpos"])
    np.testing.assert_array_equal(episodes[-1]["qvel"][-1], own["qvel"])
    keys = env.unwrapped.state_keys
    for ep in episodes:
        assert ep["qpos"].shape == (20, 2) and ep["qvel"].shape == (20, 2) and ep["is_first"][0]
        # Row t's simulator state belongs to observation t: cart position, cos/sin of the pole, velocities.
        position, velocity = ep["state"][:, keys["position"]], ep["state"][:, keys["velocity"]]
        np.testing.assert_allclose(position[:, 0], ep["qpos"][:, 0], atol=1e-6)
        np.testing.assert_allclose(position[:, 1], np.cos(ep["qpos"][:, 1]), atol=1e-6)
        np.testing.assert_allclose(position[:, 2], np.sin(ep["qpos"][:, 1]), atol=1e-6)
        np.testing.assert_allclose(velocity, ep["qvel"], atol=1e-5)
        assert np.abs(np.diff(ep["qpos"][:, 0])).max() > 0  # the system moved
    env.close()


def test_recorded_gymnasium_mujoco_state_matches_its_observations():
    env = envs.make("gym:InvertedPendulum-v5", obs="state", seed=0)
    (ep,) = insight.collect_episodes(None, env, ["state"], 1, seed=1, policy="random", max_steps=15)
    assert envs.sim_state_names(env)["qpos"] == ["qpos[slider]", "qpos[hinge]"]
    assert envs.unlimited_hinges(env) == []  # this hinge has a range
    np.testing.assert_allclose(ep["state"], np.concatenate([ep["qpos"], ep["qvel"]], 1), atol=1e-5)
    env.close()


# --------------------------------------------------------------------------------------------- windows


def test_windows_stay_inside_episodes():
    assert insight.window_starts(30, 5, 10, 4) == [0, 5, 10, 15]
    assert insight.window_starts(15, 5, 10, 4) == [0]
    assert insight.window_starts(14, 5, 10, 4) == []
    episodes = [{"state": np.arange(n, dtype=np.float32)[:, None] + 100 * i, "reward": np.zeros(n, np.float32),
                 "is_first": np.arange(n) == 0, "action": np.zeros((n, 1), np.float32), "qpos": np.zeros((n, 1))}
                for i, n in enumerate([30, 12, 20])]
    batch, index = insight.make_windows(episodes, 5, 10, 3)
    assert index.tolist() == [[0, 0], [0, 8], [0, 15], [2, 0], [2, 2], [2, 5]]
    assert batch["state"].shape == (6, 15, 1) and "qpos" not in batch
    np.testing.assert_array_equal(batch["state"][1, :, 0], np.arange(8, 23))
    assert batch["is_first"][:, 0].tolist() == [True, False, False, True, False, False]
    assert not batch["is_first"][:, 1:].any()
    with pytest.raises(ValueError, match="long enough"):
        insight.make_windows(episodes[1:2], 5, 10, 3)


def random_windows(obs_space, N=3, T=12, seed=0):
    rng = np.random.default_rng(seed)
    batch = {"action": rng.uniform(-1, 1, (N, T, 1)).astype(np.float32),
             "reward": rng.uniform(0, 1, (N, T)).astype(np.float32), "is_first": np.zeros((N, T), bool)}
    batch["is_first"][0, 0] = True
    if "image" in obs_space.spaces:
        batch["image"] = rng.integers(0, 256, (N, T, 64, 64, 3), dtype=np.uint8)
    if "state" in obs_space.spaces:
        batch["state"] = rng.normal(size=(N, T, 5)).astype(np.float32) * 10
    return batch


BOTH = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8),
                        "state": gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)})


@pytest.mark.parametrize("encoder", ["patch", "cnn"])
def test_openloop_on_an_untrained_model_is_finite_with_the_right_shapes(encoder):
    cfg = apply_overrides(preset("debug"), [f"world_model.encoder.kind={encoder}"])
    agent = Agent(BOTH, gym.spaces.Box(-1, 1, (1,), np.float32), cfg)
    wm, context, keep = agent.wm, 4, (0, 1, 8)
    batch = random_windows(BOTH)
    out = insight.openloop_windows(wm, batch, context, sample=True, keep=keep, frames=True)
    N, H = 3, 8
    for name in ["kl", "reward_abs", "image_mse", "state_mse", "state_mse_symlog"]:
        for suffix in ([""] if name == "kl" else ["", "_copy", "_posterior"]):
            value = out[name + suffix]
            assert value.shape == (N, H) and np.all(np.isfinite(value)) and np.all(value >= 0), name + suffix
    assert out["deter"].shape == (N, 3, 64) and out["stoch"].shape == (N, 3, 16)
    assert out["model_frames"].shape == (N, 12, 64, 64, 3) and out["model_frames"].dtype == np.uint8
    # The copy baseline predicts the last observed step for every horizon.
    truth = batch["image"] / 255.0
    expected = ((truth[:, context - 1 : context] - truth[:, context:]) ** 2).mean((-3, -2, -1))
    np.testing.assert_allclose(out["image_mse_copy"], expected, rtol=1e-5)
    np.testing.assert_allclose(out["reward_abs_copy"],
                               np.abs(batch["reward"][:, context - 1 : context] - batch["reward"][:, context:]))
    curves = insight.horizon_curves(out)
    assert len(curves["kl"]["mean"]) == H and "deter" not in curves and "model_frames" not in curves


def test_openloop_agrees_with_the_world_models_own_openloop():
    agent = Agent(BOTH, gym.spaces.Box(-1, 1, (1,), np.float32), preset("debug"))
    batch = random_windows(BOTH, seed=1)
    ours = insight.openloop_windows(agent.wm, batch, 5, sample=False)
    data = {k: torch.as_tensor(v) for k, v in batch.items()}
    theirs = agent.wm.openloop(data, 5, sample=False)
    np.testing.assert_allclose(ours["image_mse"], theirs["image_error"][:, 5:].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours["reward_abs"], (theirs["reward"][:, 5:] - data["reward"][:, 5:]).abs().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_kl_one_step_ahead_is_the_training_kl():
    from agent.math_utils import categorical_kl

    agent = Agent(BOTH, gym.spaces.Box(-1, 1, (1,), np.float32), preset("debug"))
    batch = random_windows(BOTH, seed=2)
    context = 4
    ours = insight.openloop_windows(agent.wm, batch, context, sample=False)
    # At h = 1 the imagined prior is the observe loop's own prior for that step (same start, same action).
    posterior, prior, _ = agent.wm.observe({k: torch.as_tensor(v) for k, v in batch.items()}, None, sample=False)
    expected = categorical_kl(posterior["logits"][:, context], prior["logits"][:, context]).sum(-1)
    np.testing.assert_allclose(ours["kl"][:, 0], expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(ours["kl"][:, 1:] > 0)


class _StateIsLatent:
    """A stand-in world model whose posterior deter is the observed state itself."""

    device = torch.device("cpu")
    has_image, has_state = False, True

    def observe(self, data, state, sample):
        N, T = data["is_first"].shape
        return {"deter": data["state"], "stoch": torch.zeros(N, T, 1, 2)}, None, None


def test_probes_line_latents_up_with_the_true_state_at_every_horizon():
    rng = np.random.default_rng(0)
    context, keep = 3, (0, 1, 4)
    targets = [rng.normal(size=(30, 2)) for _ in range(4)]  # white noise: any misalignment scores <= 0
    episodes = [{"state": t.astype(np.float32), "reward": np.zeros(30, np.float32), "is_first": np.arange(30) == 0,
                 "action": np.zeros((30, 1), np.float32)} for t in targets]
    _, index = insight.make_windows(episodes, context, 5, 4)
    # "Imagined" latents that are exactly the true state at step s + context - 1 + h.
    deter = np.stack([[targets[e][s + context - 1 + h] for h in keep] for e, s in index])  # (N, 3, 2)
    openloop = {"deter": deter, "stoch": np.zeros((len(index), len(keep), 2))}
    report = insight.physics_probes(_StateIsLatent(), episodes, ["a", "b"], targets, openloop, index, context,
                                    keep, 0.5, sample=True)
    assert report["train_episodes"] == 2 and report["test_windows"] == 8
    for which in ("deter", "both"):
        assert min(report["posterior_r2"][which].values()) > 0.99
        for h in ("0", "1", "4"):
            assert min(report["imagined_r2"][which][h].values()) > 0.99, (which, h)
        assert max(report["copy_r2"][which]["4"].values()) < 0.3  # the start state says nothing about h=4
    assert max(report["posterior_r2"]["stoch"].values()) < 0.05  # all zeros: nothing to read


def test_return_to_go_is_the_discounted_sum_of_the_rewards_after_each_step():
    np.testing.assert_allclose(insight.return_to_go(np.array([5.0, 1.0, 0.0, 2.0]), 0.5), [1.5, 1.0, 2.0, 0.0])


def _last_linear(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]


def test_heads_decode_a_spread_prediction_as_the_agent_does_and_in_raw_space():
    """Reward head and critic set to an even mix of the bins at 0 and at symlog value b: the agent's decoding
    is symexp(b / 2), the raw one symexp(b) / 2 (larger, by Jensen); the return-to-go is the true one."""
    space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)})
    agent = Agent(space, gym.spaces.Box(-1, 1, (1,), np.float32), preset("debug"))
    bins = agent.wm.bins
    k = len(bins) // 2 + 40
    b = float(bins[k])
    for head in (_last_linear(agent.wm.reward), _last_linear(agent.ac.critic)):
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(-1e4)
            head.bias[len(bins) // 2] = head.bias[k] = 0.0
    T = 12
    reward = np.zeros(T, np.float32)
    reward[[4, 9]] = 2.0
    episode = {"state": np.random.default_rng(0).normal(size=(T, 3)).astype(np.float32), "reward": reward,
               "is_first": np.arange(T) == 0, "action": np.zeros((T, 1), np.float32)}
    out = insight.heads(agent, [episode, episode], sample=False)
    ours, raw = np.expm1(b / 2), np.expm1(b) / 2
    hit = out["reward"]["rewarded"]
    assert hit["steps"] == 4 and hit["true"] == 2.0 and out["reward"]["unrewarded"]["steps"] == 20
    assert hit["ours"] == pytest.approx(ours, rel=1e-4) and hit["raw"] == pytest.approx(raw, rel=1e-4)
    assert out["value"]["ours"] == pytest.approx(ours, rel=1e-4) and out["value"]["raw"] == pytest.approx(raw, rel=1e-4)
    discount = agent.cfg.actor_critic.discount
    assert out["value"]["return_to_go"] == pytest.approx(insight.return_to_go(reward.astype(float), discount).mean())


def test_openloop_video_panel():
    real = np.full((2, 6, 8, 8, 3), 100, np.uint8)
    model = np.full((2, 6, 8, 8, 3), 90, np.uint8)
    video = insight.openloop_video(real, model, context=2)
    assert video.shape == (6, 3 * 8 + 4, 2 * 8, 3)
    assert tuple(video[1, 0, 0]) == (0, 200, 0) and tuple(video[2, 0, 0]) == (220, 0, 0)
    assert video[0, 4, 0, 0] == 100 and video[0, 12, 0, 0] == 90 and video[0, 20, 0, 0] == 30  # |error| x3


# --------------------------------------------------------------------------------------------- the CLI


def untrained_checkpoint(directory, spec, obs, *overrides):
    """A real checkpoint of an untrained debug agent (no training steps: fast)."""
    cfg = apply_overrides(RunConfig(agent=preset("debug")), [f"env.spec={spec}", f"env.obs={obs}", *overrides])
    env = envs.make(spec, obs=obs)
    trainer = Trainer(cfg, env.observation_space, env.action_space, directory, progress=False)
    path = trainer.save()
    trainer.close()
    env.close()
    return path


def image_tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"images": 0})
    acc.Reload()
    return sorted(acc.Tags()["images"])


SMALL = ["--episodes", "3", "--max-steps", "24", "--context", "3", "--horizon", "10", "--starts", "2",
         "--probe-horizons", "1", "5", "--video-sequences", "2"]


@pytest.mark.slow
def test_cli_compares_pixel_and_state_checkpoints(tmp_path, capsys, monkeypatch):
    pixels = untrained_checkpoint(tmp_path / "pix", "dmc:cartpole-swingup", "pixels")
    state = untrained_checkpoint(tmp_path / "state", "dmc:cartpole-swingup", "state")
    out = tmp_path / "insight"
    assert insight.main(["--checkpoint", str(pixels), str(state), "--label", "pix", "st", "--out", str(out),
                         *SMALL]) == 0
    result = json.loads((out / "insight.json").read_text())
    pix, st = result["runs"]
    assert (pix["label"], st["label"]) == ("pix", "st")
    assert len(pix["horizon"]["image_mse"]["mean"]) == 10 and "state_mse" not in pix["horizon"]
    assert len(st["horizon"]["state_mse"]["mean"]) == 10 and "image_mse" not in st["horizon"]
    assert pix["windows"] == 6 and pix["episodes"]["lengths"] == [24, 24, 24]
    quantities = ["qpos[slider]", "qpos[hinge_1]", "qvel[slider]", "qvel[hinge_1]", "cos(qpos[hinge_1])",
                  "sin(qpos[hinge_1])"]
    for run in (pix, st):
        probes = run["probes"]
        assert probes["quantities"] == quantities
        assert set(probes["posterior_r2"]) == {"deter", "stoch", "both"}
        assert set(probes["imagined_r2"]["both"]) == {"0", "1", "5"}
        assert probes["train_episodes"] == 2 and probes["test_episodes"] == 1
    for name in ["horizon.png", "probes.png", "openloop_pix.gif"]:
        assert (out / name).stat().st_size > 1000
    assert not (out / "openloop_st.gif").exists()  # no image decoder, no video
    scalars = read_scalars(out / "tensorboard" / "pix")
    assert [step for step, _ in scalars["openloop/image_mse"]] == list(range(1, 11))
    assert "probe/both/qvel[slider]" in scalars and "openloop/kl" in read_scalars(out / "tensorboard" / "st")
    assert image_tags(out / "tensorboard" / "pix") == ["insight/openloop"]
    assert image_tags(out / "tensorboard" / "compare") == ["insight/horizon", "insight/probes"]
    assert "probe R^2" in capsys.readouterr().out
    monkeypatch.setattr(readme, "RESULTS", tmp_path)  # the README renderer reads results/insight/insight.json
    text = readme.table("insight")
    assert "**pix**" in text and "| qvel[slider] |" in text and "imagined h=5" in text
    assert st["heads"]["value"]["steps"] == 72 and "| st | " in readme.insight_heads(result, "insight.json")


@pytest.mark.slow
def test_cli_without_simulator_state_skips_probes(tmp_path):
    path = untrained_checkpoint(tmp_path / "pend", "gym:Pendulum-v1", "state")
    if not torch.cuda.is_available():  # a checkpoint trained on a GPU still loads here, on the CPU
        state = torch.load(path, weights_only=False)
        state["config"]["agent"]["device"] = "cuda"
        torch.save(state, path)
    out = tmp_path / "out"
    assert insight.main(["--checkpoint", str(path), "--out", str(out), *SMALL]) == 0
    (run,) = json.loads((out / "insight.json").read_text())["runs"]
    assert run["probes"] is None and "no MuJoCo simulator state" in run["probes_skipped"]
    assert run["label"] == "pend" and np.all(np.isfinite(run["horizon"]["state_mse"]["mean"]))
    assert not (out / "probes.png").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert insight.main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert insight.main(["--checkpoint", "a.pt", "--horizon", "20", "--probe-horizons", "50"]) == 2
    assert "--probe-horizons [50]" in capsys.readouterr().err
    assert insight.main(["--checkpoint", "a.pt", "b.pt", "--label", "x"]) == 2
    assert "one label per checkpoint" in capsys.readouterr().err
    if not torch.cuda.is_available():
        path = untrained_checkpoint(tmp_path / "run", "dmc:cartpole-swingup", "state")
        assert insight.main(["--checkpoint", str(path), "--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("imageio_ffmpeg") is not None or importlib.util.find_spec("av")
                    is not None, reason="an mp4 backend is installed")
def test_mp4_without_ffmpeg_is_a_clear_error(capsys):
    assert insight.main(["--checkpoint", "a.pt", "--video-format", "mp4"]) == 2
    err = capsys.readouterr().err
    assert "imageio-ffmpeg" in err and "--video-format gif" in err and "Traceback" not in err
