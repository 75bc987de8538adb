import numpy as np

import envs
from agent.loop import EVAL_SEED
from benchmarks.learning import Task, trivial_returns


def test_trivial_policy_returns_follow_the_evaluation_protocol():
    """The do-nothing baseline equals a hand-run episode of zero actions from the evaluation seed, with the
    task's action repeat; the random policy differs from it."""
    task = Task("p", "gym:Pendulum-v1", "state", "debug", 0, 0.0, "", ["train.eval_episodes=1",
                                                                       "env.action_repeat=3"])
    got = trivial_returns(task)
    env = envs.make("gym:Pendulum-v1", obs="state", action_repeat=3)
    env.reset(seed=EVAL_SEED)
    total, done = 0.0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
        total += reward
        done = terminated or truncated
    assert abs(got["zero"] - total) < 1e-6
    assert abs(got["random"] - got["zero"]) > 1.0


def test_ablation_overrides_reach_every_task_and_get_their_own_name():
    import argparse

    import pytest

    from benchmarks.learning import SUITES, select_tasks

    parser = argparse.ArgumentParser()
    tasks, variant = select_tasks(parser, "cpu", None, [])
    assert [t.name for t in tasks] == [t.name for t in SUITES["cpu"]] and variant == ""
    extra = ["agent.actor_critic.actor_lr=1e-4"]
    tasks, variant = select_tasks(parser, "dmc-proprio", ["walker_walk"], extra)
    assert [t.name for t in tasks] == ["walker_walk"] and tasks[0].overrides[-1] == extra[0]
    other = select_tasks(parser, "cpu", None, ["agent.actor_critic.critic_lr=1e-4"])[1]
    assert variant.startswith("-") and variant != other
    for bad in (["agent.actor_critic.no_such_field=1"], None):
        with pytest.raises(SystemExit):  # an unknown field, or (None) an unknown task name
            select_tasks(parser, "cpu", ["nope"] if bad is None else None, bad or [])


def test_results_gather_every_finished_seed_and_judge_the_mean(tmp_path, monkeypatch):
    import json

    import benchmarks.learning as learning

    monkeypatch.setattr(learning, "trivial_returns", lambda task: {"random": 1.0, "zero": 2.0})
    task = Task("p", "gym:Pendulum-v1", "state", "debug", 100, 500.0, "")
    curves = {"p": [100, 400, 600], "p-seed2": [0, 200, 300], "p-seed1": [900, 900]}
    for name, returns in curves.items():
        run = tmp_path / name
        run.mkdir()
        rows = [{"step": 10 * i, "eval/return": r} for i, r in enumerate(returns)] + [{"step": 99, "fps/env": 1}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        if name != "p-seed1":  # seed 1 never finished
            (run / "done.json").write_text(json.dumps({"wall_s": 60.0}))
    (tmp_path / "p-seedx").mkdir()
    runs = learning.finished_runs(tmp_path, [task])
    assert [(r["seed"], r["final_return"]) for r in runs] == [(0, 500.0), (2, 250.0)]  # last two evals
    (summary,) = learning.summarize(runs)
    assert summary["seeds"] == [0, 2] and summary["final_return"] == 375.0 and not summary["passed"]
    assert learning.summarize(runs[:1])[0]["passed"]  # seed 0 alone clears 500


def test_ablation_table_lists_the_cpu_suites_ablations_only(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    import benchmarks.readme as readme
    from benchmarks.learning import SUITES, summarize

    task = SUITES["cpu"][0]
    curve = [{"env_steps": 10, "return": 50.0}, {"env_steps": 20, "return": 150.0}, {"env_steps": 30, "return": 9.0}]
    run = {"name": task.name, "seed": 0, "overrides": list(task.overrides), "steps": 20, "curve": curve,
           "final_return": 79.5, "wall_s": 60.0, "threshold": task.threshold}
    (tmp_path / "learning_cpu.json").write_text(json.dumps({"runs": [run], "tasks": summarize([run])}))
    extra = [*task.overrides, "agent.actor_critic.actor_lr=1e-4"]
    seeds = [{**run, "overrides": extra, "final_return": 250.0}, {**run, "seed": 1, "overrides": extra,
                                                                   "final_return": 350.0, "wall_s": 180.0}]
    (tmp_path / "learning_cpu-0123abcd.json").write_text(json.dumps({"runs": seeds, "tasks": summarize(seeds),
                                                                      "added_overrides": extra[-1:]}))
    (tmp_path / "learning_cpu-pixels-0123abcd.json").write_text(json.dumps({"runs": [{"name": "other"}]}))
    monkeypatch.setattr(readme, "RESULTS", Path(tmp_path))
    rows = [line for line in readme.learning_ablations().splitlines() if line.startswith(f"| {task.name}")]
    # The suite's run is read at the ablation's 20 steps: (50 + 150) / 2 = 100, not its final 79.5.
    assert rows == ["| pendulum | `agent.actor_critic.actor_lr=1e-4` | 20 | 2 | 100 | 300 (250, 350) "
                    "| 2 | `results/learning_cpu-0123abcd.json` |"]
    # An ablation made on an earlier version of the task would be compared with the wrong suite: refused.
    stale = [{**r, "overrides": ["train.eval_every=1", *extra]} for r in seeds]
    (tmp_path / "learning_cpu-0123abcd.json").write_text(json.dumps({"runs": stale, "tasks": summarize(stale),
                                                                      "added_overrides": extra[-1:]}))
    import pytest

    with pytest.raises(ValueError, match="earlier version of task"):
        readme.learning_ablations()


def test_a_finished_run_is_extended_when_the_task_asks_for_more_steps(tmp_path, monkeypatch):
    import json

    import benchmarks.learning as learning

    started = []
    monkeypatch.setattr(learning.subprocess, "Popen", lambda cmd, **kw: started.append(cmd) or "proc")
    run = tmp_path / "p"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 40}) + "\n" + json.dumps({"step": 50}) + "\n")
    (run / "done.json").write_text(json.dumps({"wall_s": 1.0}))  # an older run: steps from its metrics
    (run / "checkpoint.pt").write_bytes(b"")
    assert learning.run_steps(run) == 50
    task = Task("p", "gym:Pendulum-v1", "state", "debug", 50, 0.0, "")
    assert learning.run_task(task, 0, run, fresh=False) is None and not started
    longer = Task("p", "gym:Pendulum-v1", "state", "debug", 80, 0.0, "")
    assert learning.run_task(longer, 0, run, fresh=False) == "proc"
    assert "--resume" in started[0] and started[0][started[0].index("--steps") + 1] == "80"
    # A fresh seed-3 run passes its seed; an ablation's train.steps sets the task's budget.
    learning.run_task(task, 3, tmp_path / "p-seed3", fresh=False)
    assert started[1][started[1].index("--seed") + 1] == "3"
    import argparse

    (tuned,), _ = learning.select_tasks(argparse.ArgumentParser(), "cpu", ["pendulum"], ["train.steps=1234"])
    assert tuned.steps == 1234


def test_a_run_configured_unlike_its_task_is_neither_reused_nor_resumed(tmp_path, monkeypatch):
    """Changing a task's settings must not silently reuse runs trained under the old ones."""
    import json

    import pytest

    import benchmarks.learning as learning

    started = []
    monkeypatch.setattr(learning.subprocess, "Popen", lambda cmd, **kw: started.append(cmd) or "proc")
    monkeypatch.setattr(learning, "trivial_returns", lambda task: {})
    task = Task("p", "gym:Pendulum-v1", "state", "debug", 50, 0.0, "", ["agent.actor_critic.critic_lr=1e-4"])
    run = tmp_path / "p"
    run.mkdir()
    config = learning.task_config(task, 0)
    config["train"]["steps"] = 30  # a shorter budget is not a difference: the run gets extended
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 30, "eval/return": 1.0}) + "\n")
    (run / "done.json").write_text(json.dumps({"wall_s": 1.0, "steps": 30}))
    (run / "checkpoint.pt").write_bytes(b"")
    assert learning.config_mismatch(task, 0, run) == [] and len(learning.finished_runs(tmp_path, [task])) == 1
    changed = Task("p", "gym:Pendulum-v1", "state", "debug", 50, 0.0, "", ["agent.actor_critic.critic_lr=3e-4"])
    assert learning.config_mismatch(changed, 0, run) == ["agent.actor_critic.critic_lr: run 0.0001, task 0.0003"]
    assert learning.config_mismatch(task, 1, run) == ["agent.seed: run 0, task 1"]
    with pytest.raises(ValueError, match="critic_lr"):
        learning.run_task(changed, 0, run, fresh=False)
    with pytest.raises(ValueError, match="critic_lr"):
        learning.finished_runs(tmp_path, [changed])
    assert not started
    assert learning.run_task(changed, 0, run, fresh=True) == "proc"  # --fresh: the old run is cleared, not resumed
    assert "--resume" not in started[0] and not (run / "config.json").exists()


def test_the_command_checks_every_run_before_it_starts_one(tmp_path, monkeypatch):
    """`benchmarks.learning` stops before training when a finished run no longer matches its task, and
    with --fresh retrains it and writes results from the new run only."""
    import json
    from pathlib import Path

    import pytest

    import benchmarks.learning as learning

    old = Task("p", "gym:Pendulum-v1", "state", "debug", 50, 0.0, "", ["agent.actor_critic.critic_lr=1e-4"])
    new = Task("p", "gym:Pendulum-v1", "state", "debug", 50, 0.0, "", ["agent.actor_critic.critic_lr=3e-4"])
    started = []

    class FakeRun:  # stands in for `python -m agent train`: writes what a finished run leaves behind
        returncode = 0

        def __init__(self, cmd, **kw):
            started.append(cmd)
            logdir = Path(cmd[cmd.index("--logdir") + 1])
            (logdir / "config.json").write_text(json.dumps(learning.task_config(new, 0)))
            (logdir / "metrics.jsonl").write_text(json.dumps({"step": 50, "eval/return": 2.0}) + "\n")

        def poll(self):
            return 0

    monkeypatch.setattr(learning.subprocess, "Popen", FakeRun)
    monkeypatch.setattr(learning, "trivial_returns", lambda task: {})
    monkeypatch.setattr(learning.time, "sleep", lambda s: None)
    monkeypatch.setattr(learning, "machine_info", dict)  # it runs git through subprocess
    monkeypatch.setitem(learning.SUITES, "cpu", [new])
    run = tmp_path / "runs" / "p"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(learning.task_config(old, 0)))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 50, "eval/return": 1.0}) + "\n")
    (run / "done.json").write_text(json.dumps({"wall_s": 1.0, "steps": 50}))
    args = ["--rundir", str(tmp_path / "runs"), "--out", str(tmp_path / "out.json")]
    with pytest.raises(SystemExit):
        learning.main(args)
    assert not started and not (tmp_path / "out.json").exists()
    # --fresh retrains seed 0 only; a stale seed 1 would still be gathered into the results: refused too.
    import shutil

    shutil.copytree(run, tmp_path / "runs" / "p-seed1")
    config = learning.task_config(old, 1)
    (tmp_path / "runs" / "p-seed1" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        learning.main([*args, "--fresh"])
    assert not started
    shutil.rmtree(tmp_path / "runs" / "p-seed1")
    assert learning.main([*args, "--fresh"]) == 0
    assert len(started) == 1 and "--resume" not in started[0]
    assert [r["final_return"] for r in json.loads((tmp_path / "out.json").read_text())["runs"]] == [2.0]
