"""The continual benchmark: metrics on hand-made curves and matrices, plasticity measures, sequence files and
their validation, and tiny end-to-end runs (CLI, results, plots, TensorBoard tags, resume)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from agent.replay import MixedReplay, Replay
from benchmarks import continual
from benchmarks import continual_metrics as cm
from benchmarks.plasticity import dormant_fraction, effective_rank, measure

# --------------------------------------------------------------------------------------------- metrics


def test_stage_end_values_average_the_last_evaluations_inside_each_stage():
    steps = np.array([0, 10, 20, 30, 40, 50, 60])
    perf = np.array([[0.0, 0.0], [0.2, 0.0], [0.4, 0.1], [0.6, 0.1],  # stage 0: (0, 30]
                     [0.5, 0.3], [0.3, 0.7], [0.1, 0.9]])  # stage 1: (30, 60]
    matrix = cm.stage_end_values(steps, perf, np.array([0, 30, 60]), last=2)
    np.testing.assert_allclose(matrix, [[0.5, 0.1], [0.2, 0.8]])
    # the evaluation at step 0 belongs to no stage's end; a stage with no evaluation inside is an error
    np.testing.assert_allclose(cm.stage_end_values(steps, perf, np.array([0, 30, 60]), last=10)[0],
                               [0.4, 0.2 / 3])
    with pytest.raises(ValueError, match="stage 1"):
        cm.stage_end_values(steps, perf, np.array([0, 60, 70]))


def test_average_performance_and_forgetting_on_a_known_matrix():
    # rows: after stage j; columns: task i. Task 0 learned to 0.9 then fell to 0.3; task 1 learned to 0.8,
    # then improved to 0.85 while task 2 was trained (negative forgetting = backward transfer).
    matrix = np.array([[0.9, 0.1, 0.0],
                       [0.5, 0.8, 0.1],
                       [0.3, 0.85, 0.7]])
    assert cm.average_performance(matrix) == pytest.approx((0.3 + 0.85 + 0.7) / 3)
    np.testing.assert_allclose(cm.forgetting(matrix, [0, 1, 2]), [0.6, -0.05])
    assert cm.nanmean(cm.forgetting(matrix, [0, 1, 2])) == pytest.approx(0.275)
    # Two cycles over two tasks: stages [0, 1, 0, 1]; stage 2 retrains task 0.
    cycles = np.array([[0.9, 0.0], [0.2, 0.8], [0.95, 0.4], [0.5, 0.9]])
    np.testing.assert_allclose(cm.forgetting(cycles, [0, 1, 0, 1]), [0.4, -0.1, 0.45])
    with pytest.raises(ValueError, match="stages"):
        cm.forgetting(matrix, [0, 1])


def test_window_auc_is_the_mean_height_of_the_curve():
    steps = np.array([0, 5, 10, 15, 20])
    assert cm.window_auc(steps, np.full(5, 0.4), 0, 20) == pytest.approx(0.4)
    assert cm.window_auc(steps, steps / 20, 0, 20) == pytest.approx(0.5)  # a ramp from 0 to 1
    assert cm.window_auc(steps, steps / 20, 10, 20) == pytest.approx(0.75)  # only the window counts
    # no point at the window's start: the first point inside is held flat back to the start
    assert cm.window_auc(np.array([5, 10]), np.array([0.2, 0.6]), 0, 10) == pytest.approx((5 * 0.2 + 5 * 0.4) / 10)
    with pytest.raises(ValueError, match="no evaluation"):
        cm.window_auc(steps, steps, 21, 30)


def test_forward_transfer_follows_continual_world():
    # FT = (AUC - AUC_ref) / (1 - AUC_ref)
    np.testing.assert_allclose(cm.forward_transfer([0.6, 0.2, 0.1, 1.0], [0.2, 0.2, 0.4, 0.5]),
                               [0.5, 0.0, -0.5, 1.0])
    ft = cm.forward_transfer([0.9, 1.0, 0.6], [1.0, 1.0, 0.2])  # a perfect reference: undefined, not inf
    assert np.isnan(ft[0]) and np.isnan(ft[1]) and ft[2] == pytest.approx(0.5)
    assert cm.nanmean(ft) == pytest.approx(0.5)
    assert np.isnan(cm.nanmean([np.nan]))
    steps, perf = np.array([0, 10, 20, 30, 40]), np.array([[0.0], [0.5], [1.0], [0.0], [0.5]])
    np.testing.assert_allclose(cm.stage_aucs(steps, np.hstack([perf, perf]), np.array([0, 20, 40]), [0, 1]),
                               [0.5, 0.375])


def test_normalise_model_forgetting_and_spread():
    np.testing.assert_allclose(cm.normalise([0, 500, 1000]), [0, 0.5, 1])
    with pytest.raises(ValueError):
        cm.normalise([1.0], max_return=0)
    assert cm.model_forgetting({"state": 1.0, "reward": 0.5}, {"state": 1.5, "reward": 0.25}) == \
        {"state": 0.5, "reward": -0.25}
    assert cm.mean_and_spread([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert cm.mean_and_spread([4.0, np.nan]) == (4.0, 0.0, 1)


# --------------------------------------------------------------------------------------------- plasticity


def test_dormant_fraction_uses_redo_scores():
    # Mean |h| per unit: 1, 1, 1, 0.01 -> scores 1.33, 1.33, 1.33, 0.013; only the last is <= 0.025.
    h = torch.tensor([[1.0, -1.0, 1.0, 0.01], [-1.0, 1.0, -1.0, -0.01]])
    assert dormant_fraction([h]) == pytest.approx(0.25)
    assert dormant_fraction([h], tau=0.0) == 0.0  # tau 0 counts only dead units
    dead = torch.zeros(2, 4)
    assert dormant_fraction([h, dead]) == pytest.approx(5 / 8)  # over all units of all layers


def test_effective_rank_counts_equal_singular_values():
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)
    assert effective_rank(torch.diag(torch.tensor([3.0, 3.0, 0.0, 0.0]))) == pytest.approx(2.0)
    g = torch.Generator().manual_seed(0)
    rank_one = torch.randn(50, 1, generator=g) @ torch.randn(1, 8, generator=g)
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-4)  # float32 rounding: tiny other values
    assert effective_rank(torch.zeros(3, 3)) == 0.0
    assert 1.0 < effective_rank(torch.diag(torch.tensor([4.0, 1.0]))) < 2.0


def _debug_agent(state_dim=5):
    import gymnasium as gym

    from agent.agent import Agent
    from agent.config import preset

    obs = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)})
    return Agent(obs, gym.spaces.Box(-1, 1, (1,), np.float32), preset("debug"))


def _batch(B=3, T=6, state_dim=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"state": rng.normal(size=(B, T, state_dim)).astype(np.float32),
            "action": rng.uniform(-1, 1, (B, T, 1)).astype(np.float32),
            "reward": rng.uniform(0, 1, (B, T)).astype(np.float32),
            "is_first": np.eye(T, dtype=bool)[[0] * B], "is_last": np.zeros((B, T), bool),
            "is_terminal": np.zeros((B, T), bool)}


def test_measure_sees_every_module_and_finds_killed_units():
    agent = _debug_agent()
    before = measure(agent, _batch())
    assert set(before) == {"encoder", "rssm", "actor", "critic"}
    for values in before.values():
        assert 0.0 <= values["dormant"] < 0.5 and values["effective_rank"] >= 1.0
    # Kill half the actor's last hidden units: their pre-norm input is constant, and the norm's own
    # weight set to 0 makes the SiLU output exactly 0 for them.
    norm = [m for m in agent.ac.actor.body.net if isinstance(m, nn.LayerNorm)][-1]
    units = norm.weight.shape[0]
    with torch.no_grad():
        norm.weight[: units // 2] = 0.0
        norm.bias[: units // 2] = 0.0
    after = measure(agent, _batch())
    layers = sum(isinstance(m, nn.SiLU) for m in agent.ac.actor.modules())
    assert after["actor"]["dormant"] >= before["actor"]["dormant"] + 0.5 / layers - 1e-6
    assert after["actor"]["effective_rank"] < before["actor"]["effective_rank"]
    assert after["critic"] == before["critic"]  # other modules untouched
    for module in agent.modules():  # every hook was removed
        assert not module._forward_hooks


def test_probe_batch_leaves_the_replays_sampling_stream_untouched():
    for make in (lambda: Replay(256, 32, "fifo", None, seed=3),
                 lambda: MixedReplay([Replay(128, 32, "fifo", None, 3), Replay(128, 32, "reservoir", None, 4)],
                                     [0.5, 0.5])):
        a, b = make(), make()
        for replay in (a, b):
            for i in range(200):
                replay.add({"state": np.full((1, 2), i, np.float32), "is_first": np.array([i % 50 == 0])})
        probe = continual.probe_batch(a, 4, 8, seed=0)
        assert probe["state"].shape == (4, 8, 2)
        np.testing.assert_array_equal(continual.probe_batch(a, 4, 8, seed=0)["state"], probe["state"])
        np.testing.assert_array_equal(a.sample(4, 8)["state"], b.sample(4, 8)["state"])


# --------------------------------------------------------------------------------------------- sequences

TINY = {
    "description": "two cartpole tasks for tests", "obs": "state", "action_repeat": 8, "steps_per_task": 400,
    "preset": "debug",
    "overrides": ["train.prefill=100", "train.batch_size=4", "train.batch_length=16", "train.train_ratio=16",
                  "train.log_every=100", "replay.chunk=32", "agent.actor_critic.horizon=5", "train.threads=1",
                  "train.checkpoint_every=200", "train.video_every=0"],
    "replay_capacity": 128, "eval_every": 200, "eval_episodes": 1, "end_evaluations": 2, "heldout_episodes": 1,
    "tasks": [{"name": "default", "spec": "dmc:cartpole-swingup"},
              {"name": "inverted", "spec": "dmc:cartpole-swingup", "variant": {"gear": -1}}],
}


def write_sequence(tmp_path, **changes):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**TINY, **changes}))
    return path


@pytest.mark.parametrize("name", ["cartpole-shift", "walker-reward", "cheetah-dynamics"])
def test_shipped_sequences_load_and_share_spaces(name):
    seq = continual.load_sequence(name)  # builds every task's env once
    assert seq.name == name and len(seq.tasks) == 4 and len(set(t.name for t in seq.tasks)) == 4
    assert seq.replay_capacity * seq.action_repeat < seq.boundaries[-1]  # FIFO must be able to forget
    for strategy in continual.STRATEGIES:
        cfg = continual.run_config(seq, continual.parse_strategy(strategy), seed=0)
        held = cfg.replay.capacity + (cfg.replay.recent_capacity if strategy == "mix" else 0)
        assert held == seq.replay_capacity and cfg.train.steps == seq.boundaries[-1]
    assert seq.replay_capacity == seq.tasks[0].steps // seq.action_repeat  # one task's budget in agent steps
    assert continual.load_sequence(name, check=False, steps_per_task=10_000).replay_capacity == 5000
    assert continual.load_sequence(name, check=False, steps_per_task=100).boundaries == [0, 100, 200, 300, 400]


def test_a_user_sequence_file_loads_with_defaults(tmp_path):
    seq = continual.load_sequence(write_sequence(tmp_path, cycles=2))
    assert seq.name == "tiny" and seq.stages == (0, 1, 0, 1) and seq.boundaries == [0, 400, 800, 1200, 1600]
    assert seq.tasks[1].variant == {"gear": -1}
    path = tmp_path / "short.json"
    path.write_text(json.dumps({"tasks": [{"spec": "dmc:cartpole-swingup"}], "steps_per_task": 1000}))
    short = continual.load_sequence(path)
    assert short.tasks[0].name == "cartpole-swingup" and short.eval_every == 100
    assert short.replay_capacity == 500  # one task's budget in agent steps (action repeat 2)


@pytest.mark.parametrize("changes,words", [
    ({"tasks": [{"name": "a", "spec": "dmc:cartpole-swingup"}, {"name": "b", "spec": "dmc:walker-walk"}]},
     ["'b'", "dmc:walker-walk", "'a'", "share observation and action spaces"]),
    ({"tasks": [{"name": "a", "spec": "dmc:cartpole-swingup", "variant": {"mass": {"pole": 2.0}}}]},
     ["task 'a'", "pole_1"]),
    ({"tasks": [{"name": "a", "spec": "dmc:cartpole-swingup"}, {"name": "a", "spec": "dmc:cartpole-swingup"}]},
     ["unique", "'a'", "cycles"]),
    ({"tasks": [{"name": "a", "spce": "dmc:cartpole-swingup"}]}, ["'spce'", "'spec'"]),
    ({"eval_evry": 5}, ["'eval_evry'", "'eval_every'"]),
    ({"tasks": []}, ["tasks", "non-empty"]),
    ({"cycles": 0}, ["cycles", ">= 1"]),
    ({"action_repeat": "2"}, ["action_repeat", "expected int"]),
    ({"tasks": [{"name": "a/b", "spec": "dmc:cartpole-swingup"}]}, ["'a/b'"]),
])
def test_bad_sequences_are_clear_errors(tmp_path, changes, words):
    with pytest.raises(ValueError) as error:
        continual.load_sequence(write_sequence(tmp_path, **changes))
    for word in words:
        assert word in str(error.value), (word, str(error.value))


def test_unknown_names_and_reserved_overrides_are_errors(tmp_path):
    with pytest.raises(ValueError, match="cartpole-shift"):
        continual.load_sequence("cartpole-shfit")
    with pytest.raises(ValueError, match="fifo, reservoir, mix"):
        continual.parse_strategy("lifo")
    assert continual.parse_strategy("mix+taskid") == continual.Strategy("mix+taskid", "mix", True)
    seq = continual.load_sequence(write_sequence(tmp_path), check=False)
    with pytest.raises(ValueError, match="replay.capacity"):
        continual.run_config(seq, continual.parse_strategy("fifo"), 0, ("replay.capacity=5000",))


def test_task_id_is_appended_to_the_state():
    seq = continual.sequence_from_dict(TINY)
    env = continual.task_env(seq, 1, 1, seed=0, task_id=True)
    obs, _ = env.reset(seed=0)
    assert env.single_observation_space["state"].shape == (5 + 2,)
    np.testing.assert_array_equal(obs["state"][0, -2:], [0.0, 1.0])
    env.close()
    pixels = continual.sequence_from_dict({**TINY, "obs": "pixels"})
    with pytest.raises(ValueError, match="state vector"):
        continual.task_env(pixels, 0, 1, seed=0, task_id=True)


# --------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cli_runs_a_tiny_sequence_end_to_end(tmp_path, capsys):
    from agent.logger import read_scalars

    root, out = tmp_path / "runs", tmp_path / "results" / "continual_tiny.json"
    argv = ["--sequence", str(write_sequence(tmp_path)), "--strategy", "fifo", "--seeds", "1", "--parallel", "2",
            "--root", str(root), "--out", str(out)]
    assert continual.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| fifo | 1 |" in printed
    run = root / "tiny" / "fifo" / "seed_0"
    results = json.loads((run / "results.json").read_text())
    assert results["tasks"] == ["default", "inverted"] and results["boundaries"] == [0, 400, 800]
    assert results["curves"]["inverted"]["env_steps"] == [0, 200, 400, 600, 800]  # every task, all run long
    metrics = results["metrics"]
    assert np.array(metrics["matrix"]).shape == (2, 2) and list(metrics["forgetting"]) == ["default"]
    for key in ("average_performance", "forgetting_mean", "forward_transfer_mean"):
        assert np.isfinite(metrics[key]), key
    assert set(metrics["wm_forgetting"]["default"]) == {"state", "reward", "continue_", "kl"}
    assert set(metrics["plasticity_final"]) == {"encoder", "rssm", "actor", "critic"}
    # Evaluations, held-out data and plasticity probes draw no random numbers from the training run, so
    # the FIFO run's first stage is exactly its reference run from scratch: forward transfer 0.
    ref = results["reference_curves"]["default"]
    assert ref["p"] == results["curves"]["default"]["p"][:3]
    assert metrics["forward_transfer"]["default"] == 0.0
    for name in ("curves.png", "matrix.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"
    tags = read_scalars(run)
    for tag in ["eval/default/return", "eval/inverted/return", "continual/stage", "continual/task_index",
                "continual/average_performance", "continual/forgetting_mean", "continual/wm_loss/default/state",
                "continual/dormant/rssm", "continual/effective_rank/actor", "continual/forward_transfer_mean",
                "train/loss/state"]:
        assert tag in tags, tag
    assert [step for step, _ in tags["continual/stage"]] == [0, 200, 400, 600, 800]
    summary = json.loads(out.read_text())
    assert summary["strategies"]["fifo"]["scalars"]["average_performance"]["n"] == 1
    assert "| fifo | 1 |" in (root / "tiny" / "summary.md").read_text()
    for name in ("continual_tiny.png", "continual_tiny_matrix.png", "continual_tiny_plasticity.png"):
        assert (out.parent / name).read_bytes()[:4] == b"\x89PNG"
    # A second call reuses the finished runs and the cached references.
    assert continual.main([*argv, "--report-only"]) == 0
    assert continual.main(argv) == 0
    assert "started" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_killed_run_resumes_at_its_checkpoint(tmp_path, monkeypatch):
    from agent.logger import read_scalars
    from agent.loop import Trainer

    seq = continual.load_sequence(write_sequence(tmp_path))
    job = continual.continual_job(seq, "reservoir", 0, ())
    rundir = tmp_path / "run"
    assert continual.prepare(job, rundir, fresh=False)
    original, calls = Trainer.train_once, {"n": 0}

    def crash_in_stage_1(self):
        calls["n"] += 1
        if self.env_steps > 600:  # after the checkpoint at 600, in the second task
            raise KeyboardInterrupt("killed")
        original(self)

    monkeypatch.setattr(Trainer, "train_once", crash_in_stage_1)
    with pytest.raises(KeyboardInterrupt):
        continual.run_job(job, rundir)
    state = torch.load(rundir / "checkpoint.pt", weights_only=False)
    assert state["counters"]["env_steps"] == 600 and state["extra"]["stages_done"] == [0]
    monkeypatch.setattr(Trainer, "train_once", original)
    with pytest.raises(ValueError, match="other settings"):
        continual.prepare(continual.continual_job(seq, "fifo", 0, ()), rundir, fresh=False)
    record = continual.run_job(job, rundir)
    assert [e["env_steps"] for e in record["evaluations"]] == [0, 200, 400, 600, 800]
    assert [e["stage"] for e in record["evaluations"]] == [0, 0, 0, 1, 1]
    assert [(e["after_stage"], e["stage"]) for e in record["wm_loss"]] == [(0, 0), (1, 0), (1, 1)]
    assert record["counters"]["env_steps"] == 800 and (rundir / "done.json").exists()
    steps = [step for step, _ in read_scalars(rundir)["eval/inverted/return"]]
    assert steps == [0, 200, 400, 600, 800]  # nothing logged twice
