"""The default-job benchmark: threshold from the learning suite, evaluations read from a growing
metrics.jsonl with their times, the machine's load, and one short real run stopped at a threshold."""

import json
from dataclasses import replace

import pytest

from benchmarks import default_job, readme
from benchmarks.default_job import MetricsFollower, first_reaching, machine_load, memory_timeline, threshold_task
from benchmarks.learning import SUITES


def test_threshold_is_the_learning_benchmarks_pendulum_task():
    suite, task = threshold_task("gym:Pendulum-v1", "state")
    pendulum = next(t for t in SUITES["cpu"] if t.name == "pendulum")
    assert (suite, task) == ("cpu", pendulum) and task.threshold == pendulum.threshold
    with pytest.raises(ValueError, match="gym:Pendulum-v1 from pixels"):
        threshold_task("gym:Pendulum-v1", "pixels")


def test_evaluations_are_read_as_the_file_grows_and_timed_from_the_start(tmp_path):
    path = tmp_path / "metrics.jsonl"
    now = [100.0]
    follower = MetricsFollower(path, start=100.0, clock=lambda: now[0])
    assert follower.poll() == []  # no file yet

    def write(text):
        with open(path, "a") as file:
            file.write(text)

    rows = [{"step": 1000, "fps/env": 50.0, "time/wall_s": 20.0},
            {"step": 2500, "eval/return": -1100.0, "time/wall_s": 50.0},
            {"step": 5000, "eval/return": -450.0, "time/wall_s": 110.0},
            {"step": 7500, "episode/return": -200.0},
            {"step": 7500, "eval/return": -250.0, "time/wall_s": 170.0},
            {"step": 10000, "eval/return": -150.0, "time/wall_s": 230.0}]
    lines = [json.dumps(row) + "\n" for row in rows]
    now[0] = 160.0
    write(lines[0] + lines[1] + lines[2][:10])  # the third line is still being written
    assert follower.poll() == [{"env_steps": 2500, "return": -1100.0, "wall_s": 60.0, "run_wall_s": 50.0}]
    now[0] = 230.0
    write(lines[2][10:] + lines[3] + lines[4])
    curve = follower.poll()
    assert [(p["env_steps"], p["wall_s"]) for p in curve] == [(5000, 130.0), (7500, 130.0)]
    now[0] = 300.0
    write(lines[5])
    curve += follower.poll()
    assert follower.poll() == [] and len(follower.rows) == 6
    threshold = threshold_task("gym:Pendulum-v1", "state")[1].threshold  # -300
    assert first_reaching(curve, threshold) == {"env_steps": 7500, "return": -250.0, "wall_s": 130.0,
                                                "run_wall_s": 170.0}
    assert first_reaching(curve, -100.0) is None


def test_other_processes_load_is_the_machines_cpu_time_less_the_jobs():
    start = {"loadavg": [2.0, 1.0, 1.0], "busy_s": 1000.0, "steal_s": 10.0, "children_cpu_s": 5.0}
    end = {"loadavg": [3.0, 2.0, 1.0], "busy_s": 1300.0, "steal_s": 10.0, "children_cpu_s": 105.0}
    load = machine_load(start, end, wall_s=100.0)  # 300 CPU s in 100 s, 100 of them the job's
    assert load["other_processes_cores"] == 2.0 and load["shared"] and load["job_cpu_s"] == 100.0
    assert "shared machine" in load["note"] and load["loadavg_start"] == [2.0, 1.0, 1.0]
    quiet = machine_load(start, {**end, "busy_s": 1101.0}, wall_s=100.0)
    assert quiet["other_processes_cores"] == 0.01 and not quiet["shared"]
    stolen = machine_load(start, {**end, "busy_s": 1101.0, "steal_s": 60.0}, wall_s=100.0)
    assert stolen["steal_cores"] == 0.5 and stolen["shared"]  # a hypervisor's other guests slow it down too
    assert machine_load({**start, "busy_s": None, "steal_s": None}, end, 100.0)["other_processes_cores"] is None


@pytest.mark.slow
def test_a_real_run_is_stopped_at_the_threshold(tmp_path, monkeypatch):
    """The real job with a long budget and an early first evaluation; a threshold any return reaches makes the
    command stop it there and record the time and steps."""
    suite, task = threshold_task("gym:Pendulum-v1", "state")
    monkeypatch.setattr(default_job, "threshold_task", lambda spec, obs: (suite, replace(task, threshold=-1e9)))
    out = tmp_path / "result.json"
    code = default_job.main(["--logdir", str(tmp_path / "run"), "--out", str(out), "--stop-at-threshold",
                             "--poll", "0.2", "--set", "train.steps=100000", "train.eval_every=500",
                             "train.eval_episodes=1", "train.log_every=250", "train.threads=1"])
    result = json.loads(out.read_text())
    assert code == 0 and result["reached"] and result["stopped_at_threshold"]
    assert result["env_steps_to_threshold"] == 500 == result["curve"][0]["env_steps"]
    assert result["env_steps_done"] < 100_000  # stopped, not run to the end
    assert 0 < result["curve"][0]["run_wall_s"] < result["time_to_threshold_s"] <= result["wall_s"]
    assert result["overrides"][0] == "train.steps=100000" and not result["default_job"]
    assert result["torch"] and result["load"]["cpu_count"] >= 1 and "shared machine" in result["load"]["note"]
    assert result["peak_rss_mb"] > 50  # the loop's memory/peak_rss_mb, logged before the eval at 500


def test_memory_growth_is_fitted_only_once_the_replay_is_full():
    rows = [{"step": 100 * i, "time/wall_s": 360.0 * i, "memory/rss_mb": rss, "memory/peak_rss_mb": rss + 5,
             "replay/size": min(100 * i, 300)} for i, rss in enumerate([200, 400, 600, 700, 702, 704, 706])]
    rows.insert(2, {"step": 150, "eval/return": -1.0})  # rows without memory are skipped
    memory = memory_timeline(rows, capacity=300)
    assert memory["replay_full_at_env_steps"] == 300 and memory["rss_mb_when_full"] == 700
    # after full: +2 MB every 360 s, i.e. 20 MB an hour; the climb while the replay filled does not count
    assert memory["rss_growth_mb_per_hour_after_full"] == pytest.approx(20.0)
    assert memory["rss_mb_end"] == 706 and memory["rss_mb_max_after_full"] == 706
    assert memory["hours_after_full"] == pytest.approx(0.3) and len(memory["points"]) == 7
    never_full = memory_timeline(rows, capacity=10_000)
    assert never_full["replay_full_at_env_steps"] is None and never_full["rss_growth_mb_per_hour_after_full"] is None
    # The README row: the peak (high-water mark) when the replay is full and at the end, then the RSS readings.
    data = {"memory": memory, "spec": "dmc:cartpole-balance", "obs": "pixels", "wall_s": 2160.0, "overrides": ["a=1"],
            "machine": {"processor": "cpu", "git_commit": "abc"}}
    assert "| dmc:cartpole-balance | pixels | 300 | 300 | 18 | 705 | 711 | 700 | 706 | 706 | +20 |" in readme.memory(
        data, "results/m.json")


@pytest.mark.slow
def test_a_real_run_is_stopped_at_its_time_limit(tmp_path):
    out = tmp_path / "result.json"
    code = default_job.main(["--logdir", str(tmp_path / "run"), "--out", str(out), "--minutes", "0.4",
                             "--poll", "0.2", "--set", "train.steps=100000", "train.eval_every=0",
                             "train.log_every=100", "train.prefill=200", "replay.capacity=512", "replay.chunk=64",
                             "train.batch_length=16", "train.threads=1"])
    result = json.loads(out.read_text())
    assert code == 0 and result["stopped_at_time_limit"] and not result["stopped_at_threshold"]
    assert not result["reached"] and 24 <= result["wall_s"] < 90 and result["env_steps_done"] < 100_000
    memory = result["memory"]
    assert memory["replay_capacity"] == 512 and memory["points"][0]["rss_mb"] > 50
    assert [p["env_steps"] for p in memory["points"]] == sorted(p["env_steps"] for p in memory["points"])
