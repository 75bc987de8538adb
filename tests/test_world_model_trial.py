"""The world-model trial (benchmarks.world_model, benchmarks.wm_data): recorded data, policies, training,
probes, FLOP counts, and the grid command end to end on a tiny scale."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from agent.config import apply_overrides, preset
from benchmarks import readme, wm_data
from benchmarks import world_model as wmt
from benchmarks.insight import record_episode

torch.set_num_threads(1)


def _env(**kwargs):
    return envs.make("dmc:cartpole-swingup", obs="both", action_repeat=2, seed=0, **kwargs)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Two smooth-policy episodes of 40 steps, as record_split writes them."""
    root = tmp_path_factory.mktemp("data")
    env = _env()
    try:
        wm_data.record_split(env, root / "train", "train", 2, ["random", "smooth"], 3, None, 0.95, 0.8,
                             max_steps=40, progress=lambda line: None)
    finally:
        env.close()
    return root


# --------------------------------------------------------------------------------------------- recording


def test_recorded_qpos_qvel_are_the_physics_after_each_step(tmp_path):
    env = _env()
    try:
        policy = wm_data.SmoothRandomPolicy(env.action_space.shape, np.random.default_rng(0))
        episode = record_episode(env, ["image", "state"], policy, seed=11, max_steps=25)
        wm_data.write_episode(tmp_path, 0, episode)
        (loaded,) = wm_data.load_segments(tmp_path)
    finally:
        env.close()
    for key, value in episode.items():
        np.testing.assert_array_equal(loaded[key], value)
    # Re-simulate the recorded actions in a fresh env: row t + 1 must hold the physics after step t.
    replay = _env()
    try:
        replay.reset(seed=11)
        physics = replay.unwrapped.physics
        rows = [(physics.data.qpos.copy(), physics.data.qvel.copy())]
        for action in loaded["action"][:-1]:  # the last row's action is never executed
            replay.step(action)
            rows.append((physics.data.qpos.copy(), physics.data.qvel.copy()))
    finally:
        replay.close()
    np.testing.assert_allclose(loaded["qpos"], np.stack([r[0] for r in rows]), atol=1e-12)
    np.testing.assert_allclose(loaded["qvel"], np.stack([r[1] for r in rows]), atol=1e-12)
    assert np.abs(np.diff(loaded["qpos"], axis=0)).max() > 1e-3  # the cart and pole did move
    # cartpole's state vector is (cart position, cos, sin of the pole angle, velocities): the same physics.
    state, qpos, qvel = loaded["state"], loaded["qpos"], loaded["qvel"]
    np.testing.assert_allclose(state[:, 0], qpos[:, 0], atol=1e-5)
    np.testing.assert_allclose(state[:, 1:3], np.stack([np.cos(qpos[:, 1]), np.sin(qpos[:, 1])], 1), atol=1e-5)
    np.testing.assert_allclose(state[:, 3:5], qvel, atol=1e-4)
    assert loaded["image"].shape == (25, 64, 64, 3) and loaded["image"].dtype == np.uint8
    assert loaded["is_first"][0] and not loaded["is_first"][1:].any()


def _lag1(x: np.ndarray) -> float:
    return float(np.corrcoef(x[:-1], x[1:])[0, 1])


def test_smooth_policy_is_correlated_and_uniform_is_not():
    rng = np.random.default_rng(0)
    smooth = wm_data.SmoothRandomPolicy((2,), rng, rho=0.95, sigma=0.8)
    uniform = wm_data.uniform_policy((2,), rng)
    first = np.array([True])
    a_smooth = np.concatenate([smooth({}, first if t == 0 else ~first) for t in range(5000)])  # (5000, 2)
    a_uniform = np.concatenate([uniform({}, first) for _ in range(5000)])
    for d in range(2):
        assert _lag1(a_smooth[:, d]) > 0.85, _lag1(a_smooth[:, d])
        assert abs(_lag1(a_uniform[:, d])) < 0.05
    assert np.abs(a_smooth).max() <= 1.0 and a_smooth.std() > 0.4  # it explores the whole range
    # A new episode restarts the process: the first action does not follow the last one.
    restarts = np.array([smooth({}, first)[0, 0] for _ in range(2000)])
    assert abs(_lag1(restarts)) < 0.06


def test_episode_mix_and_seeds(tiny_dataset):
    files = wm_data.chunk_files(tiny_dataset / "train")
    assert [f.name for f in files] == ["chunk-ep000000.npz", "chunk-ep000001.npz"]
    segments = wm_data.load_segments(tiny_dataset / "train")
    keys = {"image", "state", "action", "reward", "is_first", "is_last", "is_terminal", "qpos", "qvel"}
    assert keys <= set(segments[0])
    random_actions, smooth_actions = segments[0]["action"], segments[1]["action"]
    assert _lag1(smooth_actions[:, 0]) > 0.6 > _lag1(random_actions[:, 0])
    assert wm_data.episode_seed(3, "heldout", 1) != wm_data.episode_seed(3, "train", 1)


def test_sampler_windows_stay_in_segments_and_split_episodes():
    segments = [{"is_first": np.eye(1, n, dtype=bool)[0], "x": np.arange(n) + 1000 * i}
                for i, n in enumerate([5, 12, 30])]
    sampler = wm_data.WindowSampler(segments, 8, seed=0)
    assert sampler.windows.tolist() == [5, 23]  # the 5-step segment holds no window
    batch = sampler.sample(500)
    assert batch["x"].shape == (500, 8)
    assert np.all(np.diff(batch["x"], axis=1) == 1)  # consecutive steps of one segment
    counts = np.bincount(batch["x"][:, 0] // 1000, minlength=3)
    assert counts[0] == 0 and 0.1 < counts[1] / counts[2] < 0.4  # uniform over windows: 5 against 23
    state = sampler.state_dict()
    again = sampler.sample(4)
    sampler.load_state_dict(state)
    np.testing.assert_array_equal(sampler.sample(4)["x"], again["x"])
    joined = {"is_first": np.array([1, 0, 0, 1, 0], bool), "x": np.arange(5)}
    tail = {"is_first": np.array([0, 0, 1, 0], bool), "x": np.arange(4)}
    parts = wm_data.split_episodes([joined, tail])
    assert [p["x"].tolist() for p in parts] == [[0, 1, 2], [3, 4], [2, 3]]


def test_a_training_runs_replay_directory_is_a_dataset(tmp_path):
    from agent.replay import Replay

    replay = Replay(capacity=64, chunk=16, directory=tmp_path)
    for t in range(40):  # two streams, as a run with two envs: 2 closed chunks each and an open one
        replay.add({"image": np.full((2, 64, 64, 3), t, np.uint8), "action": np.zeros((2, 1), np.float32),
                    "reward": np.full(2, t, np.float32), "is_first": np.array([t == 0] * 2),
                    "is_last": np.zeros(2, bool), "is_terminal": np.zeros(2, bool)})
    replay.state_dict()  # writes the open chunks, as a checkpoint does
    segments = wm_data.load_segments(tmp_path, ["image", "action", "reward", "is_first", "is_terminal"])
    assert sorted(len(s["reward"]) for s in segments) == [8, 8, 16, 16, 16, 16]
    batch = wm_data.WindowSampler(segments, 8, seed=0).sample(64)
    assert np.all(np.diff(batch["reward"], axis=1) == 1)  # consecutive steps, never across chunk files
    with pytest.raises(ValueError, match="lacks"):
        wm_data.load_segments(tmp_path, ["qpos"])


def test_agent_policy_restarts_its_latent_state_at_episode_starts():
    seen = []

    class FakeAgent:
        def act(self, obs, is_first, carry, explore):
            seen.append((carry, explore))
            return np.zeros((1, 1), np.float32), (carry or 0) + 1

    policy = wm_data.agent_policy(FakeAgent(), ["state"])
    for first in [True, False, False, True, False]:
        policy({"state": np.zeros((1, 3)), "image": None}, np.array([first]))
    assert seen == [(None, True), (1, True), (2, True), (None, True), (1, True)]


# --------------------------------------------------------------------------------------------- training


def _model_and_sampler(data, seed=0):
    cfg = wmt.trial_config("debug", "patch2", seed, [], False, 16)
    segments = wm_data.load_segments(data / "train", ["image", "action", "reward", "is_first", "is_terminal"])
    wm = wmt.build_model(cfg, segments[0]["action"].shape[-1], ["image"])
    return wm, wm_data.WindowSampler(segments, 16, seed)


def test_training_on_a_tiny_dataset_lowers_the_loss(tiny_dataset):
    wm, sampler = _model_and_sampler(tiny_dataset)
    state = {"updates": 0, "train_s": 0.0, "train_cpu_s": 0.0, "history": []}
    wmt.train_updates(wm, sampler, state, 40, batch=4)
    losses = [h["loss/total"] for h in state["history"]]
    assert state["updates"] == 40 and len(losses) == 40
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), (losses[:5], losses[-5:])
    curve = wmt.binned_curve(state["history"], 10)
    assert [c["update"] for c in curve] == [10, 20, 30, 40]
    assert curve[-1]["loss/image"] < curve[0]["loss/image"]


def test_resumed_training_is_the_uninterrupted_one(tiny_dataset, tmp_path):
    wm, sampler = _model_and_sampler(tiny_dataset)
    state = {"updates": 0, "train_s": 0.0, "train_cpu_s": 0.0, "history": []}
    wmt.train_updates(wm, sampler, state, 6, batch=2)
    config = {"name": "test"}
    wmt.save_checkpoint(tmp_path, config, wm, sampler, state)
    wmt.train_updates(wm, sampler, state, 9, batch=2)
    resumed, resumed_sampler = _model_and_sampler(tiny_dataset)
    progress = wmt._load_or_start(tmp_path, config, resumed, resumed_sampler, fresh=False)
    assert progress["updates"] == 6
    wmt.train_updates(resumed, resumed_sampler, progress, 9, batch=2)
    for (name, a), b in zip(wm.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(ValueError, match="another configuration"):
        wmt._load_or_start(tmp_path, {"name": "other"}, resumed, resumed_sampler, fresh=False)


def test_probes_read_a_linear_signal_from_the_right_source():
    rng = np.random.default_rng(0)

    def outputs(n):
        targets = rng.normal(size=(n, 3))
        embed = np.concatenate([targets @ MIX, rng.normal(size=(n, 5))], 1)  # the signal, mixed, and noise
        return {"embed": embed, "deter": rng.normal(size=(n, 6)), "stoch": rng.normal(size=(n, 4))}, targets

    MIX = rng.normal(size=(3, 3))
    fit, test = [outputs(200) for _ in range(4)], [outputs(200) for _ in range(2)]
    report = wmt.probe_scores([o for o, _ in fit], [o for o, _ in test], [t for _, t in fit], [t for _, t in test],
                              ["qpos[a]", "qvel[a]", "qvel[b]"], {"qpos": ["qpos[a]"], "qvel": ["qvel[a]", "qvel[b]"]},
                              pca=8)
    assert report["embed"]["qpos"] > 0.99 and report["embed"]["qvel"] > 0.99
    assert report["pca"] == 8 and report["embed_pca"]["qvel"] > 0.99  # all 8 components: the same information
    assert abs(report["posterior"]["qpos"]) < 0.05 and abs(report["posterior"]["qvel"]) < 0.05
    assert set(report["embed"]["r2"]) == {"qpos[a]", "qvel[a]", "qvel[b]"}


def test_probe_groups_replace_winding_angles_by_cos_and_sin():
    names = {"qpos": ["qpos[slider]", "qpos[hinge_1]"], "qvel": ["qvel[slider]", "qvel[hinge_1]"]}
    groups = wmt.probe_quantities(names, ["qpos[hinge_1]"])
    assert groups == {"qpos": ["qpos[slider]", "cos(qpos[hinge_1])", "sin(qpos[hinge_1])"],
                      "qvel": ["qvel[slider]", "qvel[hinge_1]"]}
    walker = {"qpos": ["qpos[rootz]", "qpos[rootx]", "qpos[rooty]"], "qvel": ["qvel[rootz]", "qvel[rootx]"]}
    assert wmt.probe_quantities(walker, ["qpos[rooty]"])["qpos"] == ["qpos[rootz]", "cos(qpos[rooty])",
                                                                     "sin(qpos[rooty])"]


# --------------------------------------------------------------------------------------------- FLOPs


def test_tubelet_flops_grow_by_the_tubelet_matmul_only():
    base = preset("debug")
    e = base.world_model.encoder
    N, ppc, D, T = (64 // e.patch) ** 2, e.patch * e.patch * 3, e.width, 16

    def cost(k):
        return wmt.encoder_cost(apply_overrides(base, wmt.encoder_overrides(f"patch{k}")), T)

    one = cost(1)
    for k in (2, 4):
        c = cost(k)
        # Each of the T + k - 1 frames is multiplied with all k kernel slices: (T + k - 1) * k frame-slices,
        # against T for k = 1; an online step reads k frames with k slices.
        assert c["flops_per_frame"] * T - one["flops_per_frame"] * T == 2 * N * ppc * D * ((T + k - 1) * k - T)
        assert c["flops_online_step"] - one["flops_online_step"] == 2 * N * ppc * D * (k * k - 1)
        assert c["params"] - one["params"] == (k - 1) * ppc * D  # the Conv3d's extra kernel slices
    cnn = [wmt.encoder_cost(apply_overrides(base, [*wmt.encoder_overrides("cnn"),
                                                   f"world_model.encoder.tubelet_frames={k}"]), T) for k in (1, 4)]
    assert cnn[0]["flops_per_frame"] == cnn[1]["flops_per_frame"] > 0


def test_equal_flops_width_is_the_closest_to_the_cnn():
    base = preset("debug")
    target = wmt.encoder_cost(apply_overrides(base, wmt.encoder_overrides("cnn")), 16)["flops_per_frame"]
    for k in (1, 4):
        width = wmt.equal_flops_width(base, k, 16)
        gaps = {}
        for w in (width - 4, width, width + 4):
            if w > 0:
                cfg = apply_overrides(base, [*wmt.encoder_overrides(f"patch{k}"), f"world_model.encoder.width={w}"])
                gaps[w] = abs(np.log(wmt.encoder_cost(cfg, 16)["flops_per_frame"] / target))
        assert min(gaps, key=gaps.get) == width, gaps
    matched = wmt.trial_config("debug", "patch4", 0, [], True, 16)
    assert matched.world_model.encoder.width == wmt.equal_flops_width(base, 4, 16)
    unmatched = wmt.trial_config("debug", "patch4", 0, [], False, 16)
    assert unmatched.world_model.encoder.width == base.world_model.encoder.width
    with pytest.raises(ValueError, match="patch<k>"):
        wmt.encoder_overrides("patchy")


# --------------------------------------------------------------------------------------------- end to end


def test_grid_records_trains_evaluates_and_reports(tmp_path, capsys):
    out = tmp_path / "results" / "wm.json"
    argv = ["--grid", "--no-ray", "--tasks", "dmc:cartpole-swingup", "--encoders", "cnn", "patch2", "--seeds", "0",
            "--preset", "debug", "--updates", "3", "--batch-size", "2", "--batch-length", "8",
            "--episodes", "2", "--heldout", "2", "--max-steps", "40", "--horizon", "10", "--starts", "2",
            "--probe-episodes", "2", "--data-root", str(tmp_path / "data"), "--root", str(tmp_path / "runs"),
            "--out", str(out)]
    assert wmt.main(argv) == 0
    payload = json.loads(out.read_text())
    assert sorted(r["encoder"] for r in payload["runs"]) == ["cnn", "patch2"]
    run = payload["runs"][0]
    assert run["updates"] == 3 and run["task"] == "dmc:cartpole-swingup"
    curves = run["eval"]["openloop"]["curves"]
    assert len(curves["image_mse"]["mean"]) == 10 and len(curves["image_mse_copy"]["mean"]) == 10
    assert run["eval"]["recon_mse"] > 0 and run["eval"]["probes"]["fit_episodes"] == 2
    assert set(payload["encoders"]) == {"cnn", "patch2"}
    report = out.with_suffix(".md").read_text()
    assert "| cartpole_swingup | patch2 | 1 |" in report and "MFLOP/frame" in report
    assert (tmp_path / "results" / "wm_horizon.png").exists() and (tmp_path / "results" / "wm_probes.png").exists()
    # A second call finds every run finished; --report-only rewrites the same report from the results file.
    assert wmt.main(argv) == 0
    assert "0 runs to train" in capsys.readouterr().out
    # --fresh plans every run again, its directory emptied so that it starts over instead of resuming.
    planned = wmt.grid_jobs(wmt.arguments().parse_args([*argv, "--fresh"]))
    assert len(planned) == 2 and all((Path(job.rundir) / "result.json").exists() for job in planned)
    assert wmt.start_over(planned, fresh=True) == planned
    assert not any(Path(job.rundir).exists() and any(Path(job.rundir).iterdir()) for job in planned)
    out.with_suffix(".md").unlink()
    assert wmt.main(["--report-only", "--out", str(out)]) == 0
    assert out.with_suffix(".md").read_text() == report
    # The README section renders from the same results file: its rows, the velocity test and the grid's cost.
    section = readme.world_model(payload, "results/wm.json")
    assert "| cartpole_swingup | cnn | 1 |" in section and "| cartpole_swingup | patch2 | 1 |" in section
    assert "encoders cnn, patch2; seeds 0" in section and "- cartpole_swingup: cnn " in section
    assert "(18 runs of 5,000 updates" in section and "![probes](results/wm_probes.png)" in section
