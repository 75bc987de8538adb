from dataclasses import replace
from pathlib import Path

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
    import pytest

    from benchmarks.learning import SUITES, select_tasks

    tasks, variant = select_tasks("cpu", None, [])
    assert [t.name for t in tasks] == [t.name for t in SUITES["cpu"]] and variant == ""
    extra = ["agent.actor_critic.actor_lr=1e-4"]
    tasks, variant = select_tasks("dmc-proprio", ["walker_walk"], extra)
    assert [t.name for t in tasks] == ["walker_walk"] and tasks[0].overrides[-1] == extra[0]
    other = select_tasks("cpu", None, ["agent.actor_critic.critic_lr=1e-4"])[1]
    assert variant.startswith("-") and variant != other
    with pytest.raises(ValueError, match="no_such_field"):
        select_tasks("cpu", None, ["agent.actor_critic.no_such_field=1"])
    with pytest.raises(ValueError, match="unknown task"):
        select_tasks("cpu", ["nope"], [])


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
            (run / "done.json").write_text(json.dumps({"steps": 100}))
    (tmp_path / "p-seedx").mkdir()
    runs = learning.finished_runs(tmp_path, [task])
    assert [(r["seed"], r["final_return"]) for r in runs] == [(0, 500.0), (2, 250.0)]  # last two evals
    (summary,) = learning.summarize(runs)
    assert summary["seeds"] == [0, 2] and summary["final_return"] == 375.0 and not summary["passed"]
    assert learning.summarize(runs[:1])[0]["passed"]  # seed 0 alone clears 500


def _write_run(rundir, episodes, evals, steps, wall_s=60.0, commit="abc1234", cpu_s=50.0, cpu_from_start=True):
    """A finished run as `python -m agent train` and the benchmark leave it: training episodes, evals and
    periodic logs (with time/wall_s and time/cpu_s; ``cpu_from_start`` False: the first log lacks cpu_s, as
    in a run begun before it was logged) in metrics.jsonl, done.json, starts.jsonl."""
    import json

    rundir.mkdir(parents=True)
    rows = [{"step": s, "episode/return": r, "episode/length": 500.0} for s, r in episodes]
    first_log = {"step": steps // 2, "fps/env": 10.0, "time/wall_s": wall_s / 2}
    if cpu_from_start:
        first_log["time/cpu_s"] = cpu_s / 2
    rows += [{"step": s, "eval/return": r, "time/wall_s": wall_s * s / steps} for s, r in evals] + [first_log]
    rows += [{"step": steps, "fps/env": 10.0, "time/wall_s": wall_s, "time/cpu_s": cpu_s}]
    rows.sort(key=lambda row: row["step"])
    (rundir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (rundir / "done.json").write_text(json.dumps({"steps": steps}))
    (rundir / "starts.jsonl").write_text(json.dumps({"git_commit": commit, "git_dirty": False}) + "\n")


def test_a_sweep_tells_where_unfinished_runs_stand_and_the_cpu_hours_left(tmp_path):
    """A task's pace is the median CPU seconds per env step of its own finished seeds that logged CPU time
    from the start, else of every such run under the root; an unfinished run stands at its last periodic log
    (a later evaluation row does not count)."""
    import json

    import benchmarks.learning as learning

    a, b, c = (Task(name, "gym:Pendulum-v1", "state", "cpu", 100, 0.0, "") for name in ("a", "b", "c"))
    assert "no finished run" in learning.time_left([(a, 1000)], tmp_path)
    _write_run(tmp_path / "a", [], [], steps=100, cpu_s=50.0)
    _write_run(tmp_path / "a-seed1", [], [], steps=100, cpu_s=90.0)
    _write_run(tmp_path / "b", [], [], steps=100, cpu_s=5.0)
    _write_run(tmp_path / "b-seed1", [], [], steps=100, cpu_s=5000.0, cpu_from_start=False)  # not timed whole
    assert learning.cpu_pace([tmp_path / "a", tmp_path / "a-seed1"]) == 0.7
    assert learning.cpu_pace([tmp_path / "b-seed1"]) is None
    # a at its own 0.7 s a step, b at its 0.05, c (no run of its own) at the median of all: 0.5
    line = learning.time_left([(a, 3600), (b, 36_000), (c, 7200)], tmp_path)
    assert line.startswith("46,800 env steps left, about 2.2 CPU hours at the pace of each task's")
    running = tmp_path / "c-seed1"
    running.mkdir()
    rows = [{"step": 20, "time/wall_s": 1.0, "time/cpu_s": 1.0}, {"step": 40, "time/wall_s": 2.0, "time/cpu_s": 2.0},
            {"step": 50, "eval/return": 3.0, "time/wall_s": 2.5}]
    (running / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert learning.logged_steps(running) == 40 and learning.logged_steps(tmp_path / "none") == 0
    assert learning.cpu_pace([running]) is None  # an unfinished run sets no pace


def test_exploration_counts_episodes_with_reward_and_what_the_actor_saw_per_bin(tmp_path):
    import json

    import benchmarks.learning as learning

    _write_run(tmp_path / "run", [(1_000, 0.0), (12_000, 3.0), (13_000, 0.0), (25_000, 7.0)], evals=[],
               steps=30_000)
    rows = [{"step": s, "time/wall_s": 1.0, "actor/entropy": e, "actor/advantage_std": a, "actor/return_scale": 1.0}
            for s, e, a in [(5_000, 1.4, 1e-5), (9_000, 1.3, 2e-4), (21_000, 0.5, 0.03)]]
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
    assert learning.exploration(tmp_path / "run") == {
        "episodes": 4, "nonzero_episodes": 2, "first_nonzero_at": 12_000,
        "actor": [{"env_steps": 10_000, "entropy": 1.3, "advantage_std": 2e-4, "return_scale": 1.0},
                  {"env_steps": 30_000, "entropy": 0.5, "advantage_std": 0.03, "return_scale": 1.0}]}


def test_training_episodes_are_binned_by_the_env_step_they_ended_at(tmp_path):
    """DreamerV3's bins are (x - 10,000, x]: an episode ending exactly at 10,000 counts for 10K, one ending at
    10,001 for 20K; an empty bin is None; evals and other scalars are not training episodes."""
    import benchmarks.learning as learning

    episodes = [(9_000, 100.0), (10_000, 300.0), (10_001, 50.0), (25_000, 7.0), (41_000, 1e6)]
    _write_run(tmp_path / "run", episodes, evals=[(10_000, 999.0), (20_000, 999.0)], steps=40_000)
    assert learning.training_episodes(tmp_path / "run") == episodes
    curve = learning.binned_returns(learning.training_episodes(tmp_path / "run"), 40_000)
    assert curve == [{"env_steps": 10_000, "return": 200.0, "episodes": 2},
                     {"env_steps": 20_000, "return": 50.0, "episodes": 1},
                     {"env_steps": 30_000, "return": 7.0, "episodes": 1},
                     {"env_steps": 40_000, "return": None, "episodes": 0}]  # 41,000 lies past the run's steps
    assert learning.bin_value(curve, 20_000) == 50.0 and learning.bin_value(curve, 40_000) is None
    assert learning.bin_value(curve, 50_000) is None
    assert learning.binned_returns(episodes, 25_000, width=5_000)[:3] == [
        {"env_steps": 5_000, "return": None, "episodes": 0}, {"env_steps": 10_000, "return": 200.0, "episodes": 2},
        {"env_steps": 15_000, "return": 50.0, "episodes": 1}]


def _fake_curves(tmp_path, monkeypatch, mean_100k):
    """A stand-in for DreamerV3's curves file: cartpole_balance with three seeds over 12 bins."""
    import json

    import benchmarks.learning as learning

    x = [10_000 * (i + 1) for i in range(12)]
    seeds = [[10.0 * i for i in range(12)], [20.0 * i for i in range(12)], [30.0 * i for i in range(12)]]
    mean = [20.0 * i for i in range(12)]
    mean[9] = mean_100k
    seeds[1][9] = None  # a missing seed value is left out of the band
    path = tmp_path / "curves.json"
    path.write_text(json.dumps({"source": "test curves", "proprio": {"cartpole_balance": {
        "x": x, "mean": mean, "seeds": seeds}}}))
    monkeypatch.setattr(learning, "CURVES", path)


def _two_seeds(root):
    """Seed 0: 50K bin 200 (two episodes), 100K bin 900; seed 1: 50K bin 400, 100K bin 700."""
    first = [(41_000, 100.0), (50_000, 300.0), (60_000, 5.0), (99_000, 900.0), (100_001, 0.0)]
    _write_run(root / "cartpole_balance", first, [(50_000, 10.0), (100_000, 30.0)], 100_000, wall_s=6000.0,
               commit="aaa1111", cpu_s=3600.0)
    _write_run(root / "cartpole_balance-seed1", [(45_000, 400.0), (100_000, 700.0)],
               [(50_000, 20.0), (100_000, 50.0)], 100_000, wall_s=7200.0, commit="bbb2222", cpu_from_start=False)


def test_ours_at_100k_is_the_seed_mean_of_the_bin_and_passes_at_dreamerv3s_mean(tmp_path, monkeypatch):
    import benchmarks.learning as learning

    monkeypatch.setattr(learning, "trivial_returns", lambda task: {})
    _two_seeds(tmp_path)
    tasks = [t for t in learning.SUITES["dmc-proprio"] if t.name == "cartpole_balance"]
    runs = learning.finished_runs(tmp_path, tasks)
    assert [len(r["train_curve"]) for r in runs] == [10, 10]
    for mean_100k, passed in ((800.0, True), (800.5, False)):
        _fake_curves(tmp_path, monkeypatch, mean_100k)
        (task,) = learning.compare_with_dreamerv3(runs)
        assert task["seeds"] == [0, 1] and task["ours_100k_seeds"] == [900.0, 700.0]
        assert task["ours_100k"] == 800.0 and task["ours_50k"] == 300.0 and task["ours_50k_seeds"] == [200.0, 400.0]
        assert task["dreamerv3_100k"] == mean_100k and task["passed"] is passed
        assert (task["dreamerv3_100k_min"], task["dreamerv3_100k_max"]) == (90.0, 270.0)  # seed 1's None skipped
        assert (task["dreamerv3_50k"], task["dreamerv3_50k_min"], task["dreamerv3_50k_max"]) == (80.0, 40.0, 120.0)
        assert task["final_evals"] == [20.0, 35.0] and task["wall_s"] == [6000.0, 7200.0]  # the loop's time/wall_s
        assert task["cpu_s"] == [3600.0, None]  # seed 1 did not log CPU time from its start
        assert task["trained_at"] == [["aaa1111"], ["bbb2222"]]
    summary = learning.suite_summary([task], learning.SUITES["dmc-proprio"])
    assert summary["tasks_in_mean"] == ["cartpole_balance"] and summary["runs"] == 2
    assert summary["at_or_above_dreamerv3_100k"] == 0 and len(summary["tasks_not_run"]) == 5
    assert (summary["ours_100k_mean"], summary["dreamerv3_100k_mean"]) == (800.0, 800.5)


def test_the_dmc_proprio_command_writes_results_plot_and_readme_section(tmp_path, monkeypatch):
    """`--suite dmc-proprio --report-only` with its default run root and results path: no run starts, the
    finished runs are judged on DreamerV3's metric, the plot is written and the README section renders."""
    import json

    import benchmarks.learning as learning
    import benchmarks.readme as readme

    started = []
    monkeypatch.setattr(learning.jobs, "run_attempt", lambda job, cwd: started.append(job))
    monkeypatch.setattr(learning, "trivial_returns", lambda task: {})
    monkeypatch.setattr(learning, "machine_info", lambda: {"cpu_count": 2})
    _fake_curves(tmp_path, monkeypatch, 790.0)
    monkeypatch.chdir(tmp_path)
    _two_seeds(tmp_path / "runs" / "dmc_proprio")
    assert learning.main(["--suite", "dmc-proprio", "--seeds", "0", "1", "--report-only"]) == 0
    assert not started
    out = tmp_path / "results" / "learning_dmc_proprio.json"
    data = json.loads(out.read_text())
    (task,) = data["tasks"]
    assert task["ours_100k"] == 800.0 and task["passed"] and data["summary"]["at_or_above_dreamerv3_100k"] == 1
    assert data["runs"][1]["train_curve"][4] == {"env_steps": 50_000, "return": 400.0, "episodes": 1}
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setattr(readme, "RESULTS", tmp_path / "results")
    section = readme.table("learning_dmc_proprio")
    # Final eval (deterministic): seeds (10 + 30) / 2 and (20 + 50) / 2, mean 27.5; wall: 6000 s and 7200 s.
    assert "| cartpole_balance | 0, 1 | 300 (200, 400) | 80 (40-120) | 800 (900, 700) | 790 (90-270) | yes " \
           "| 28 | 100, 120 |" in section
    assert "| suite mean, 1 of 6 tasks | 2 runs | 300 | 80 | 800 | 790 | 1 of 1 |  |  |" in section
    assert "aaa1111, bbb2222" in section and "No finished run yet: cartpole_swingup" in section
    data["tasks"][0]["wall_s"] = [6000.0, None]  # a run without a periodic log of its time: '-', not a crash
    assert "| 28 | 100, - |" in readme.learning_dmc_proprio(data, "x")
    # Without its results file, the section says so instead of showing numbers.
    out.unlink()
    text = "<!-- table:learning_dmc_proprio -->\nold numbers\n<!-- end -->"
    assert "Not run yet" in readme.render(text) and "old numbers" not in readme.render(text)


def test_the_cpu_table_shows_the_seed_mean_and_each_seed(tmp_path, monkeypatch):
    import json

    import benchmarks.readme as readme
    from benchmarks.learning import summarize

    run = {"name": "pendulum", "seed": 0, "spec": "gym:Pendulum-v1", "obs": "state", "preset": "cpu",
           "steps": 15_000, "curve": [{"env_steps": 1000, "return": -1200.0}], "final_return": -90.0,
           "wall_s": 600.0, "threshold": -300.0, "trivial": {"random": -1100.0}}
    other = {**run, "seed": 1, "final_return": -110.0, "curve": [{"env_steps": 1000, "return": -1000.0}]}
    (tmp_path / "learning_cpu.json").write_text(json.dumps({"suite": "cpu", "runs": [run, other],
                                                            "tasks": summarize([run, other])}))
    monkeypatch.setattr(readme, "RESULTS", tmp_path)
    assert "| pendulum | gym:Pendulum-v1 | state | cpu | 15,000 | 2 | -1100 | -100 (-90, -110) | -300 | yes " \
           "| -1100 | - | 10 |" in readme.table("learning")


def test_a_finished_run_is_extended_when_the_task_asks_for_more_steps(tmp_path, monkeypatch):
    import json

    import benchmarks.learning as learning

    run = tmp_path / "p"
    run.mkdir()
    (run / "done.json").write_text(json.dumps({"steps": 50}))
    (run / "checkpoint.pt").write_bytes(b"")
    task = Task("p", "gym:Pendulum-v1", "state", "debug", 50, 0.0, "")
    assert learning.run_task(task, 0, run, fresh=False) is None
    longer = Task("p", "gym:Pendulum-v1", "state", "debug", 80, 0.0, "")
    cmd = learning.run_task(longer, 0, run, fresh=False).command()
    assert "--resume" in cmd and cmd[cmd.index("--steps") + 1] == "80"
    # A fresh seed-3 run passes its seed, and resumes once it has a checkpoint (a retry after a crash).
    job = learning.run_task(task, 3, tmp_path / "p-seed3", fresh=False)
    assert job.command()[job.command().index("--seed") + 1] == "3" and "--resume" not in job.command()
    assert job.gpus == 0.0 and Path(job.rundir).is_absolute()
    import os

    assert job.cpus == os.cpu_count()  # the debug preset's train.threads=0: all of them
    one = learning.run_task(replace(task, overrides=["train.threads=1"]), 4, tmp_path / "p-seed4", fresh=False)
    assert one.cpus == 1.0
    (tmp_path / "p-seed3" / "checkpoint.pt").write_bytes(b"")
    assert "--resume" in job.command()
    # An ablation's train.steps sets the task's budget.
    (tuned,), _ = learning.select_tasks("cpu", ["pendulum"], ["train.steps=1234"])
    assert tuned.steps == 1234


def test_a_run_configured_unlike_its_task_is_neither_reused_nor_resumed(tmp_path, monkeypatch):
    """Changing a task's settings must not silently reuse runs trained under the old ones."""
    import json

    import pytest

    import benchmarks.learning as learning

    monkeypatch.setattr(learning, "trivial_returns", lambda task: {})
    task = Task("p", "gym:Pendulum-v1", "state", "debug", 50, 0.0, "", ["agent.actor_critic.critic_lr=1e-4"])
    run = tmp_path / "p"
    run.mkdir()
    config = learning.task_config(task, 0)
    config["train"]["steps"] = 30  # a shorter budget is not a difference: the run gets extended
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 30, "eval/return": 1.0}) + "\n")
    (run / "done.json").write_text(json.dumps({"steps": 30}))
    (run / "checkpoint.pt").write_bytes(b"")
    assert learning.config_mismatch(task, 0, run) == [] and len(learning.finished_runs(tmp_path, [task])) == 1
    changed = Task("p", "gym:Pendulum-v1", "state", "debug", 50, 0.0, "", ["agent.actor_critic.critic_lr=3e-4"])
    assert learning.config_mismatch(changed, 0, run) == ["agent.actor_critic.critic_lr: run 0.0001, task 0.0003"]
    assert learning.config_mismatch(task, 1, run) == ["agent.seed: run 0, task 1"]
    # The image networks' settings do not matter to a state run; from pixels they do.
    image = Task("p", "gym:Pendulum-v1", "state", "debug", 50, 0.0, "",
                 [*task.overrides, "agent.world_model.encoder.mlp_ratio=3", "agent.world_model.decoder.cnn_depth=8"])
    assert learning.config_mismatch(image, 0, run) == []
    pixels = replace(image, obs="pixels")
    assert [d.split(":")[0] for d in learning.config_mismatch(pixels, 0, run)] == [
        "env.obs", "agent.world_model.encoder.mlp_ratio", "agent.world_model.decoder.cnn_depth"]
    with pytest.raises(ValueError, match="critic_lr"):  # to resume it
        learning.check_runs_before_start([(changed, 0)], [], tmp_path, fresh=False)
    with pytest.raises(ValueError, match="critic_lr"):  # to gather it into results
        learning.check_runs_before_start([], [changed], tmp_path, fresh=False)
    learning.check_runs_before_start([(changed, 0)], [], tmp_path, fresh=True)  # --fresh retrains it
    job = learning.run_task(changed, 0, run, fresh=True)  # --fresh: the old run is cleared, not resumed
    assert "--resume" not in job.command() and not (run / "config.json").exists()


def test_the_command_checks_every_run_before_it_starts_one(tmp_path, monkeypatch):
    """`benchmarks.learning` stops before training when a finished run no longer matches its task, and
    with --fresh retrains it and writes results from the new run only."""
    import json
    from pathlib import Path

    import benchmarks.learning as learning

    old = Task("p", "gym:Pendulum-v1", "state", "debug", 50, 0.0, "", ["agent.actor_critic.critic_lr=1e-4"])
    new = Task("p", "gym:Pendulum-v1", "state", "debug", 50, 0.0, "", ["agent.actor_critic.critic_lr=3e-4"])
    started = []

    def fake_run(job, cwd):  # stands in for `python -m agent train`: writes what a finished run leaves behind
        cmd = job.command()
        started.append(cmd)
        logdir = Path(cmd[cmd.index("--logdir") + 1])
        (logdir / "config.json").write_text(json.dumps(learning.task_config(new, 0)))
        rows = [{"step": 50, "time/wall_s": 4.0, "time/cpu_s": 3.5}, {"step": 50, "eval/return": 2.0}]
        (logdir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        return {"returncode": 0, "wall_s": 3.0}

    monkeypatch.setattr(learning.jobs, "run_attempt", fake_run)
    monkeypatch.setattr(learning, "trivial_returns", lambda task: {})
    monkeypatch.setattr(learning, "machine_info", dict)  # it runs git through subprocess
    monkeypatch.setitem(learning.SUITES, "cpu", [new])
    run = tmp_path / "runs" / "p"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(learning.task_config(old, 0)))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 50, "eval/return": 1.0}) + "\n")
    (run / "done.json").write_text(json.dumps({"steps": 50}))
    args = ["--rundir", str(tmp_path / "runs"), "--out", str(tmp_path / "out.json"), "--no-ray"]
    assert learning.main(args) == 2
    assert not started and not (tmp_path / "out.json").exists()
    # --fresh retrains seed 0 only; a stale seed 1 would still be gathered into the results: refused too.
    import shutil

    shutil.copytree(run, tmp_path / "runs" / "p-seed1")
    config = learning.task_config(old, 1)
    (tmp_path / "runs" / "p-seed1" / "config.json").write_text(json.dumps(config))
    assert learning.main([*args, "--fresh"]) == 2
    assert not started
    shutil.rmtree(tmp_path / "runs" / "p-seed1")
    assert learning.main([*args, "--fresh"]) == 0
    assert len(started) == 1 and "--resume" not in started[0]
    assert json.loads((run / "done.json").read_text()) == {"steps": 50}
    results = json.loads((tmp_path / "out.json").read_text())["runs"]
    # the wall time is the run's own over all its parts (the loop's time/wall_s), not this attempt's
    assert [r["final_return"] for r in results] == [2.0] and [r["wall_s"] for r in results] == [4.0]


def test_bad_input_is_one_line_on_stderr_and_exit_status_2(tmp_path, capsys):
    """As in the other benchmarks: no usage dump, no traceback, status 2."""
    import benchmarks.default_job as default_job
    import benchmarks.learning as learning

    assert learning.main(["--set", "agent.seed=1", "--rundir", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip() == "error: give seeds with --seeds, not --set agent.seed=..."
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "metrics.jsonl").write_text("")
    assert default_job.main(["--logdir", str(tmp_path / "used")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_sweep_with_a_failed_run_says_which_returns_1_and_writes_no_results(tmp_path, monkeypatch, capsys):
    import benchmarks.learning as learning

    monkeypatch.setitem(learning.SUITES, "cpu", [Task("p", "gym:Pendulum-v1", "state", "debug", 50, 0.0, "")])
    monkeypatch.setattr(learning.jobs, "run_attempt",
                        lambda job, cwd: {"returncode": 1, "wall_s": 1.0, "error": "exit 1", "log_tail": "boom"})
    out = tmp_path / "out.json"
    assert learning.main(["--rundir", str(tmp_path / "runs"), "--out", str(out), "--no-ray", "--retries", "0"]) == 1
    assert "1 run(s) failed: p; the same command resumes them" in capsys.readouterr().err
    assert not out.exists()
