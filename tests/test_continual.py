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


def test_steps_to_reach_counts_from_the_stage_start_to_the_first_evaluation_at_the_threshold():
    steps = np.arange(0, 8001, 1000)
    # a fresh agent's step curve: random until 5,000, learned from 6,000 (the references' shape)
    fresh = np.array([0, 0, 0, 0, 0.2, 0.4, 0.9, 0.9, 0.95])
    assert cm.steps_to_reach(steps, fresh, 0, 8000, threshold=0.5) == 6000
    assert cm.steps_to_reach(steps, fresh, 0, 8000, threshold=0.3) == 5000
    assert cm.steps_to_reach(steps, fresh, 2000, 8000, threshold=0.5) == 4000  # counted from the window's start
    assert cm.steps_to_reach(steps, fresh, 0, 5000, threshold=0.5) == np.inf  # not inside the window
    assert cm.steps_to_reach(steps, fresh, 6000, 8000) == 0  # already there at the start: 0 steps
    assert cm.LEARNED == 0.5
    with pytest.raises(ValueError, match="empty"):
        cm.steps_to_reach(steps, fresh, 5000, 5000)
    # per stage of a run [task 0, task 1, task 0]: the run's own task's column in each stage's window
    run_steps = np.arange(0, 9001, 1000)
    perf = np.array([[0, 0], [0.1, 0], [0.6, 0], [0.9, 0], [0.2, 0.3], [0.1, 0.8],  # stage 1 learns task 1
                     [0.1, 0.9], [0.3, 0.9], [0.7, 0.9], [0.9, 0.9]])  # stage 2 relearns task 0
    np.testing.assert_array_equal(cm.stage_steps_to_reach(run_steps, perf, np.array([0, 3000, 6000, 9000]),
                                                          [0, 1, 0]), [2000, 2000, 2000])
    assert cm.repeated_stages([0, 1, 0]) == [2] and cm.repeated_stages([0, 1, 2]) == []
    assert cm.repeated_stages([0, 1, 0, 1]) == [2, 3]


def test_learning_savings_compare_with_the_fresh_agents_steps():
    # 1 - T / T_ref: twice as fast 0.5, as fast 0, twice as slow -1, learned at the start 1
    np.testing.assert_allclose(cm.learning_savings([3000, 6000, 12000, 0], [6000, 6000, 6000, 6000], 14000),
                               [0.5, 0.0, -1.0, 1.0])
    # never reached within a 7,000-step stage: counted as the whole budget, an upper bound
    assert cm.learning_savings(np.inf, 5000, 7000) == pytest.approx(1 - 7000 / 5000)
    # a reference that never reached the threshold, or was there at once: no speed to compare with
    savings = cm.learning_savings([2000, 2000, np.inf], [np.inf, 0, np.nan], 7000)
    assert np.all(np.isnan(savings))


def test_report_learning_speed_and_plasticity_around_boundaries():
    from benchmarks import continual_report as report

    def evaluations(curve, step=1000):
        return [{"env_steps": step * k, "returns": {name: [v] for name, v in values.items()}}
                for k, values in enumerate(curve)]

    tasks = [{"name": "a", "random_return": 0.0, "best_return": 1.0, "steps": 3000},
             {"name": "b", "random_return": 0.0, "best_return": 1.0, "steps": 3000}]
    # run [a, b, a]: a learned after 2,000 steps, forgotten in b's stage, relearned at once in stage 2
    curve = [{"a": 0.0, "b": 0.0}, {"a": 0.1, "b": 0.0}, {"a": 0.6, "b": 0.0}, {"a": 0.9, "b": 0.1},
             {"a": 0.2, "b": 0.7}, {"a": 0.1, "b": 0.8}, {"a": 0.0, "b": 0.9}, {"a": 0.6, "b": 0.9},
             {"a": 0.8, "b": 0.9}, {"a": 0.9, "b": 0.9}]
    measured = [{"env_steps": 1000 * k, **{m: {"dormant": 0.1 * (k == 3) + 0.01 * k, "effective_rank": 10.0 + k}
                                           for m in report.MODULES}} for k in range(1, 10)]
    record = {"tasks": ["a", "b"], "stages": [0, 1, 0], "boundaries": [0, 3000, 6000, 9000],
              "sequence": {"tasks": tasks, "end_evaluations": 1}, "evaluations": evaluations(curve),
              "wm_loss": [], "plasticity": measured, "strategy": {"name": "fifo+redo", "plasticity": "redo"},
              "plasticity_resets": [{"stage": 0, "env_steps": 3000,
                                     "after": {m: {"dormant": 0.0, "effective_rank": 20.0} for m in report.MODULES}}]}
    fresh = {"tasks": ["a"], "boundaries": [0, 3000], "sequence": {"tasks": tasks[:1]},
             "evaluations": evaluations([{"a": 0.0}, {"a": 0.0}, {"a": 0.0}, {"a": 0.6}])}  # 3,000 steps from scratch
    metrics = report.run_metrics(record, {0: fresh, 1: {**fresh, "tasks": ["b"], "sequence": {"tasks": tasks[1:]},
                                                        "evaluations": evaluations([{"b": 0.0}, {"b": 0.7}])}})
    assert metrics["steps_to_learn"] == {"a": 2000, "b": 1000, "a#2": 1000}
    assert metrics["reference_steps_to_learn"] == {"a": 3000, "b": 1000, "a#2": 3000}
    assert metrics["learning_savings"] == pytest.approx({"a": 1 / 3, "b": 0.0, "a#2": 2 / 3})
    assert metrics["learning_savings_later"] == pytest.approx(1 / 3)  # stages b and a#2
    assert metrics["relearning_savings"] == pytest.approx(2 / 3)  # a#2 only
    first, second = metrics["plasticity_boundaries"]
    assert first["before"]["rssm"] == {"dormant": pytest.approx(0.13), "effective_rank": 13.0}
    assert first["after_reset"]["rssm"] == {"dormant": 0.0, "effective_rank": 20.0}
    assert first["next"]["rssm"]["effective_rank"] == 14.0
    assert "after_reset" not in second  # a method ran, but nothing was measured after it
    around = metrics["plasticity_around_boundaries"]
    assert around["before"]["effective_rank"]["all"] == pytest.approx((13 + 16) / 2)
    assert around["after_reset"]["dormant"]["all"] == 0.0
    # without a method the state right after the boundary is the state at it
    plain = report.run_metrics({**record, "strategy": {"name": "fifo"}, "plasticity_resets": []}, {})
    assert plain["plasticity_boundaries"][1]["after_reset"] == plain["plasticity_boundaries"][1]["before"]
    assert np.isnan(plain["learning_savings_later"])  # no references: nothing to compare with
    table = report.plasticity_table(report.aggregate({"fifo+redo": [{"seed": 0, "wall_s": 60.0, "metrics": metrics}]}))
    # boundaries at 3,000 and 6,000: dormant (0.13 + 0.06) / 2 before, 0 after the one measured reset, then
    # (0.04 + 0.07) / 2 an evaluation later; the rank (13 + 16) / 2, 20, (14 + 17) / 2
    assert "| fifo+redo | 1 | 0.095 → 0.000 → 0.055 | 14.5 → 20.0 → 15.5 | 0.33 | 0.67 |" in table
    assert "| reservoir | not run yet |" in table and "| mix+shrink_perturb | not run yet |" in table


def test_normalise_model_forgetting_and_spread():
    # One score range per task (column): a Pendulum-like task [-1200, 0] and a DMC-like one [50, 1000].
    returns = np.array([[-1200.0, 50.0], [-300.0, 525.0], [0.0, 1000.0], [-1500.0, 1100.0]])
    np.testing.assert_allclose(cm.normalise(returns, [-1200.0, 50.0], [0.0, 1000.0]),
                               [[0, 0], [0.75, 0.5], [1, 1], [-0.25, 1050 / 950]])  # not clipped
    np.testing.assert_allclose(cm.normalise([0, 500, 1000], 0.0, 1000.0), [0, 0.5, 1])
    for low, high in ((0.0, 0.0), (10.0, 5.0), (np.nan, 1.0)):
        with pytest.raises(ValueError, match="best_return > random_return"):
            cm.normalise([1.0], low, high)
    assert cm.model_forgetting({"state": 1.0, "reward": 0.5}, {"state": 1.5, "reward": 0.25}) == \
        {"state": 0.5, "reward": -0.25}
    assert cm.mean_and_spread([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert cm.mean_and_spread([4.0, np.nan]) == (4.0, 0.0, 1)
    # 95% t interval of the mean over seeds: t(0.975, 2 dof) = 4.303, std 1 over 3 values.
    mean, half, n = cm.interval95([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.303 / np.sqrt(3))
    assert cm.interval95([5.0, 7.0])[1] == pytest.approx(12.706)  # std sqrt(2) over sqrt(2) values
    assert np.isnan(cm.interval95([4.0, np.nan])[1])


# --------------------------------------------------------------------------------------------- plasticity


def test_dormant_fraction_uses_redo_scores():
    # Mean |h| per unit: 1, 1, 1, 0.01 -> scores 1.33, 1.33, 1.33, 0.013; only the last is <= 0.025.
    h = torch.tensor([1.0, 1.0, 1.0, 0.01])
    assert dormant_fraction([h]) == pytest.approx(0.25)
    assert dormant_fraction([h], tau=0.0) == 0.0  # tau 0 counts only dead units
    dead = torch.zeros(4)
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
    "tasks": [{"name": "default", "spec": "dmc:cartpole-swingup", "random_return": 25.0, "best_return": 1000},
              {"name": "inverted", "spec": "dmc:cartpole-swingup", "variant": {"gear": -1}, "random_return": 25.0,
               "best_return": 1000}],
}
RANGE = {"random_return": 0.0, "best_return": 1000.0}


def write_sequence(tmp_path, **changes):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**TINY, **changes}))
    return path


CPU_SEQUENCES = ("pendulum-conflict", "pendulum-physics")


@pytest.mark.parametrize("name", continual.shipped_sequences())
def test_shipped_sequences_load_and_share_spaces(name):
    seq = continual.load_sequence(name)  # builds every task's env once
    assert seq.name == name and len(seq.tasks) >= 2 and len(set(t.name for t in seq.tasks)) == len(seq.tasks)
    assert seq.replay_capacity * seq.action_repeat < seq.boundaries[-1]  # FIFO must be able to forget
    for strategy in continual.STRATEGIES:
        cfg = continual.run_config(seq, continual.parse_strategy(strategy), seed=0)
        held = cfg.replay.capacity + (cfg.replay.recent_capacity if strategy == "mix" else 0)
        assert held == seq.replay_capacity and cfg.train.steps == seq.boundaries[-1]
    assert seq.replay_capacity == max(t.steps for t in seq.tasks) // seq.action_repeat  # one task's budget
    assert continual.load_sequence(name, check=False, steps_per_task=10_000).replay_capacity == 5000
    short = continual.load_sequence(name, check=False, steps_per_task=100)
    assert short.boundaries == [100 * j for j in range(len(seq.stages) + 1)]
    # Every task has a score range, measured by the command its file names.
    low, high = seq.score_ranges
    assert np.all(np.isfinite(low)) and np.all(high > low)
    assert "--measure-random" in seq.score_range_source and seq.budget_source
    if seq.tasks[0].spec.startswith("dmc:"):
        assert np.all(high == 1000) and np.all(low > 0)
    else:  # Pendulum: rewards are minus a cost, random actions score far below 0
        assert np.all(high == 0) and np.all(low < -500)


def test_cpu_sequences_conflict_and_share_structure():
    conflict = continual.load_sequence("pendulum-conflict", check=False)
    assert conflict.stages == (0, 1, 0) and conflict.tasks[1].variant == {"gear": -1}
    physics = continual.load_sequence("pendulum-physics", check=False)
    assert all(set(t.variant) <= {"gravity", "mass", "length"} for t in physics.tasks)
    for seq in (conflict, physics):
        assert seq.preset == "cpu" and seq.boundaries[-1] <= 21_000  # about an hour on one core (README)


def test_a_user_sequence_file_loads_with_defaults(tmp_path):
    seq = continual.load_sequence(write_sequence(tmp_path, cycles=2))
    assert seq.name == "tiny" and seq.stages == (0, 1, 0, 1) and seq.boundaries == [0, 400, 800, 1200, 1600]
    assert seq.tasks[1].variant == {"gear": -1}
    assert continual.load_sequence(write_sequence(tmp_path, order=[1, 0, 1])).stages == (1, 0, 1)
    path = tmp_path / "short.json"
    path.write_text(json.dumps({"tasks": [{"spec": "dmc:cartpole-swingup", **RANGE}], "steps_per_task": 1000}))
    short = continual.load_sequence(path)
    assert short.tasks[0].name == "cartpole-swingup" and short.eval_every == 100
    assert short.replay_capacity == 500  # one task's budget in agent steps (action repeat 2)


@pytest.mark.parametrize("changes,words", [
    ({"tasks": [{"name": "a", "spec": "dmc:cartpole-swingup", **RANGE},
                {"name": "b", "spec": "dmc:walker-walk", **RANGE}]},
     ["'b'", "dmc:walker-walk", "'a'", "share observation and action spaces"]),
    ({"tasks": [{"name": "a", "spec": "dmc:cartpole-swingup", "variant": {"mass": {"pole": 2.0}}, **RANGE}]},
     ["task 'a'", "pole_1"]),
    ({"tasks": [{"name": "a", "spec": "dmc:cartpole-swingup", **RANGE},
                {"name": "a", "spec": "dmc:cartpole-swingup", **RANGE}]},
     ["unique", "'a'", "cycles"]),
    ({"tasks": [{"name": "a", "spce": "dmc:cartpole-swingup"}]}, ["'spce'", "'spec'"]),
    ({"tasks": [{"name": "a", "spec": "dmc:cartpole-swingup"}]},
     ["task 'a'", "random_return and best_return", "--measure-random", "1000 for DMC"]),
    ({"tasks": [{"name": "a", "spec": "dmc:cartpole-swingup", "best_return": 1000}]}, ["task 'a'", "random_return"]),
    ({"tasks": [{"name": "a", "spec": "dmc:cartpole-swingup", "random_return": 5, "best_return": 1}]},
     ["task 'a'", "best_return > random_return"]),
    ({"max_return": 1000}, ["max_return", "unknown field"]),
    ({"order": [0, 2]}, ["order", "0..1", "[2]"]),
    ({"order": [1, 1]}, ["order", "'default'", "never"]),
    ({"order": [0, 1], "cycles": 2}, ["order", "cycles"]),
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


PENDULUM = {"obs": "state", "steps_per_task": 1000,
            "tasks": [{"name": "default", "spec": "gym:Pendulum-v1", "best_return": 0},
                      {"name": "inverted", "spec": "gym:Pendulum-v1", "variant": {"gear": -1}, "best_return": 0}]}


def test_measure_random_fills_in_the_score_range(tmp_path, capsys):
    path = tmp_path / "pend.json"
    path.write_text(json.dumps(PENDULUM))
    with pytest.raises(ValueError, match="random_return"):
        continual.load_sequence(path)
    assert continual.main(["--sequence", str(path), "--measure-random", "3"]) == 0
    assert "default: random-policy return" in capsys.readouterr().out
    assert json.loads(path.read_text()) == PENDULUM  # measured, not written
    assert continual.main(["--sequence", str(path), "--measure-random", "3", "--write"]) == 0
    seq = continual.load_sequence(path)
    unfilled = continual.load_sequence(path, ranges=False)
    for i, task in enumerate(seq.tasks):
        returns = continual.random_returns(unfilled, i, 3)
        assert task.random_return == round(float(returns.mean()), 1)
        assert np.all(returns < 0) and len(set(returns.tolist())) == 3  # Pendulum's costs; three episodes
    np.testing.assert_array_equal(continual.random_returns(seq, 1, 3), continual.random_returns(seq, 1, 3))
    assert seq.tasks[1].variant == {"gear": -1} and path.read_text().count("\n  {") == 2  # a task a line


def test_reference_key_ignores_the_score_range():
    seq = continual.sequence_from_dict(TINY)
    key = continual.reference_key(continual.reference_job(seq, 0, 0, ()))
    other_range = continual.sequence_from_dict(
        {**TINY, "tasks": [{**t, "random_return": 100.0} for t in TINY["tasks"]], "score_range_source": "x"})
    assert continual.reference_key(continual.reference_job(other_range, 0, 0, ())) == key
    other_task = continual.sequence_from_dict({**TINY, "tasks": TINY["tasks"][::-1]})
    assert continual.reference_key(continual.reference_job(other_task, 0, 0, ())) != key


def test_reference_key_leaves_out_the_compile_mode_unless_compiling():
    """A setting that does nothing in the run (like a new field at its default) keeps the cached references."""
    seq = continual.sequence_from_dict(TINY)

    def key(*overrides):
        return continual.reference_key(continual.reference_job(seq, 0, 0, overrides))

    mode = "agent.world_model.rssm.compile_mode=reduce-overhead"
    assert key(mode) == key()
    compiled = "agent.world_model.rssm.compile=true"
    assert key(compiled, mode) != key(compiled) != key()
    assert key(compiled, "agent.world_model.rssm.compile_mode=default") == key(compiled)


def test_settings_key_of_a_run_saved_before_the_compile_mode_existed_is_unchanged():
    from benchmarks.continual_report import settings_key

    seq = continual.sequence_from_dict(TINY)
    job = continual.continual_job(seq, "fifo", 0, ())
    old = json.loads(json.dumps(job.config))
    del old["agent"]["world_model"]["rssm"]["compile_mode"]
    assert settings_key(job.sequence, job.config) == settings_key(job.sequence, old)
    graphs = continual.continual_job(seq, "fifo", 0, ("agent.world_model.rssm.compile=true",
                                                      "agent.world_model.rssm.compile_mode=reduce-overhead"))
    assert settings_key(job.sequence, graphs.config) != settings_key(job.sequence, job.config)


def test_a_run_saved_before_a_config_field_existed_is_still_the_same_job(tmp_path):
    seq = continual.sequence_from_dict(TINY)
    job = continual.continual_job(seq, "fifo", 0, ())
    rundir = tmp_path / "run"
    assert continual.prepare(job, rundir, fresh=False)
    saved = json.loads((rundir / "job.json").read_text())
    del saved["config"]["agent"]["world_model"]["rssm"]["compile_mode"]  # as written before the field
    (rundir / "job.json").write_text(json.dumps(saved))
    assert continual.prepare(job, rundir, fresh=False)
    saved["config"]["agent"]["world_model"]["rssm"]["compile"] = True  # a setting that does differ
    (rundir / "job.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="other settings"):
        continual.prepare(job, rundir, fresh=False)


def test_a_reference_shared_by_two_sequences_is_reused_by_both(tmp_path):
    first = continual.sequence_from_dict(TINY, default_name="first")
    # another sequence with the same first task under another score range and other notes: the same reference
    second = continual.sequence_from_dict({**TINY, "description": "other", "budget_source": "other",
                                           "tasks": [{**TINY["tasks"][0], "random_return": 0.0},
                                                     {**TINY["tasks"][1], "variant": {"gear": -2}}]},
                                          default_name="second")
    job = continual.reference_job(first, 0, 0, ())
    rundir = continual.job_dir(tmp_path, job)
    assert continual.prepare(job, rundir, fresh=False)
    (rundir / "done.json").write_text("{}")
    shared = continual.reference_job(second, 0, 0, ())
    assert continual.job_dir(tmp_path, shared) == rundir and shared.sequence != job.sequence
    assert not continual.prepare(shared, rundir, fresh=False)  # finished: reused, not an error
    other = continual.reference_job(second, 1, 0, ())  # gear -2: another curve, another key
    with pytest.raises(ValueError, match="other settings"):
        continual.prepare(other, rundir, fresh=False)
    with pytest.raises(ValueError, match="other settings"):  # a continual run is never taken for a reference
        continual.prepare(continual.continual_job(first, "fifo", 0, ()), rundir, fresh=False)


def test_report_normalises_by_each_tasks_range():
    from benchmarks import continual_report as report

    evaluations = [{"env_steps": 0, "returns": {"a": [-1200.0], "b": [100.0]}},
                   {"env_steps": 10, "returns": {"a": [-300.0, -300.0], "b": [550.0]}}]
    tasks = [{"name": "a", "random_return": -1200.0, "best_return": 0.0},
             {"name": "b", "random_return": 100.0, "best_return": 1000.0}]
    record = {"tasks": ["a", "b"], "evaluations": evaluations, "sequence": {"tasks": tasks}}
    steps, perf = report.curves(record)
    np.testing.assert_allclose(steps, [0, 10])
    np.testing.assert_allclose(perf, [[0, 0], [0.75, 0.5]])
    # A reference (one task) is normalised by the continual run's range of that task, not its own record's.
    reference = {"tasks": ["b"], "evaluations": [{"env_steps": 0, "returns": {"b": [550.0]}}],
                 "sequence": {"tasks": [{"name": "b", "random_return": 0.0, "best_return": 10.0}]}}
    np.testing.assert_allclose(report.curves(reference, report.task_range(record, 1))[1], [[0.5]])


def test_the_estimate_counts_updates_left_at_the_pace_of_finished_runs(tmp_path):
    seq = continual.sequence_from_dict(TINY)
    ref = continual.reference_job(seq, 0, 0, ())
    run = continual.continual_job(seq, "fifo", 0, ())
    # (steps - prefill) / action repeat x train ratio / (batch 4 x 16): (400 - 100) / 8 x 16 / 64 = 9.375
    assert continual.planned_updates(ref) == 9 and continual.planned_updates(run) == 21  # (800 - 100) / 8 / 4
    todo = [(ref, tmp_path / "ref"), (run, tmp_path / "run")]
    assert "no finished run" in continual.estimate(todo, tmp_path, parallel=2)
    (tmp_path / "done").mkdir()
    # wall time counts waiting for a shared core; the pace is the CPU time (a run without it is left out)
    (tmp_path / "done" / "run.json").write_text(json.dumps({"wall_s": 900.0, "counters": {"updates": 10,
                                                                                       "cpu_s": 360.0}}))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.json").write_text(json.dumps({"wall_s": 90.0, "counters": {"updates": 10}}))
    (tmp_path / "run").mkdir()  # an interrupted run that had made 11 of its updates
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "train/updates": 11.0}\n')
    text = continual.estimate(todo, tmp_path, parallel=1)
    # 9 + 10 updates left at 36 CPU s each: 684 s; one at a time as long, two at a time half
    assert "2 run(s)" in text and "19 updates left" in text and "36.00 CPU s an update (median of 1 " in text
    assert "about 11 minutes of CPU, 11 minutes with 1 at a time" in text
    assert "11 minutes of CPU, 6 minutes with 2 at a time" in continual.estimate(todo, tmp_path, parallel=2)
    assert "nothing to run" in continual.estimate([], tmp_path, parallel=1)


def test_reference_table_reads_the_curves_and_judges_the_bar(tmp_path):
    from benchmarks import continual_report as report

    seq = continual.sequence_from_dict({**TINY, "end_evaluations": 2}).to_dict()

    def reference(returns):
        return {"boundaries": [0, 400], "wall_s": 60.0, "tasks": ["x"],
                "evaluations": [{"env_steps": 200 * k, "returns": {"x": [r]}} for k, r in enumerate(returns)]}

    dirs = {0: {0: tmp_path / "a"}, 1: {0: tmp_path / "b", 1: tmp_path / "c"}}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    # range [25, 1000]: p 0, 0.6, 1.0 -> end of stage (last 2) 0.8: reaches 0.7
    (tmp_path / "a" / "run.json").write_text(json.dumps(reference([25.0, 610.0, 1000.0])))
    # p 0, 0.4, 0.8: the last evaluation passes, the end of the stage (0.6) does not
    (tmp_path / "b" / "run.json").write_text(json.dumps(reference([25.0, 415.0, 805.0])))
    summary = report.summarise_references(seq, dirs, tmp_path / "out" / "refs.json")
    a, b, c = summary["references"]
    assert a["p"] == pytest.approx([0, 0.6, 1.0]) and a["p_end_of_stage"] == pytest.approx(0.8) and a["reaches_bar"]
    assert a["steps_to_learn"] == 200
    assert b["p_last"] == pytest.approx(0.8) and b["p_end_of_stage"] == pytest.approx(0.6) and not b["reaches_bar"]
    assert not c["finished"]
    assert (tmp_path / "out" / "refs.png").read_bytes()[:4] == b"\x89PNG"
    text = report.references_section(summary, "results/refs.json")
    assert "| default | 0 | 400 | 0.00 (25) | 0.60 (610) | 1.00 (1000) | 0.80 | 1.00 | 200 | yes |" in text
    assert "| inverted | 0 | 400 | 0.00 (25) | 0.40 (415) | 0.80 (805) | 0.60 | 0.80 | 400 | no |" in text
    assert "| inverted | 1 | 400 |  |  |  | not finished |" in text


def test_dreamerv3_learned_at_reads_the_curve(tmp_path, monkeypatch):
    from benchmarks import learning

    curves = {"proprio": {"cartpole_swingup": {"x": [10_000 * i for i in range(1, 11)],
                                               "mean": [0, 10, 50, 74, 76, 100, 100, 100, 100, 100]}},
              "vision": {"cartpole_swingup": {"x": [10_000, 20_000, 30_000, 40_000, 50_000, 60_000],
                                              "mean": [0, 81, 100, 100, 100, 100]}}}
    path = tmp_path / "curves.json"
    path.write_text(json.dumps(curves))
    monkeypatch.setattr(learning, "CURVES", path)
    # final value: the mean of the last 5 bins (proprio 100: 76 at 50K is the first bin >= 75; vision 96.2)
    assert continual.dreamerv3_learned_at("dmc:cartpole-swingup", "state") == 50_000
    assert continual.dreamerv3_learned_at("dmc:cartpole-swingup", "pixels") == 20_000
    assert continual.dreamerv3_learned_at("dmc:cartpole-swingup", "state", fraction=0.5) == 30_000
    assert continual.dreamerv3_learned_at("dmc:walker-walk_backwards", "state") is None
    assert continual.dreamerv3_learned_at("gym:Pendulum-v1", "state") is None


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


def test_seeds_are_a_list_of_seed_ids(tmp_path, capsys):
    """--seeds names the seeds (as the learning and world-model benchmarks do): references of exactly those."""
    argv = ["--sequence", str(write_sequence(tmp_path)), "--root", str(tmp_path / "runs"), "--references-only",
            "--report-only", "--seeds", "2", "5"]
    assert continual.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.endswith(": not finished") for line in lines)  # 2 tasks x 2 seeds
    assert sorted(line.split("/")[-1].split("-")[1] for line in lines) == ["seed2", "seed2", "seed5", "seed5"]
    assert continual.main([*argv[:-3], "--seeds", "1", "1"]) != 0
    assert "--seeds must be distinct" in capsys.readouterr().err
    assert continual.main([*argv[:-3], "--seeds", "3"]) == 0  # a count where seed ids are meant: said on stderr
    assert "runs seed 3 alone (seeds 0 to 2 are --seeds 0 1 2)" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_a_tiny_sequence_end_to_end(tmp_path, capsys):
    from agent.logger import read_scalars

    root, out = tmp_path / "runs", tmp_path / "results" / "continual_tiny.json"
    argv = ["--sequence", str(write_sequence(tmp_path)), "--strategy", "fifo", "--seeds", "0", "--parallel", "2",
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
    first_part_s = state["counters"]["wall_s"]
    monkeypatch.setattr(Trainer, "train_once", original)
    with pytest.raises(ValueError, match="other settings"):
        continual.prepare(continual.continual_job(seq, "fifo", 0, ()), rundir, fresh=False)
    record = continual.run_job(job, rundir)
    assert [e["env_steps"] for e in record["evaluations"]] == [0, 200, 400, 600, 800]
    assert [e["stage"] for e in record["evaluations"]] == [0, 0, 0, 1, 1]
    assert [(e["after_stage"], e["stage"]) for e in record["wm_loss"]] == [(0, 0), (1, 0), (1, 1)]
    assert record["counters"]["env_steps"] == 800 and (rundir / "done.json").exists()
    assert first_part_s > 0 and record["wall_s"] > first_part_s  # the parts before the resume count
    steps = [step for step, _ in read_scalars(rundir)["eval/inverted/return"]]
    assert steps == [0, 200, 400, 600, 800]  # nothing logged twice
