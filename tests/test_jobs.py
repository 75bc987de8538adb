"""The job runner (benchmarks/jobs.py): sweeps on a real local Ray, retries, locks, the fallback without Ray."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import jobs
from benchmarks.learning import Task

FAST = ["train.prefill=100", "train.batch_size=4", "train.batch_length=16", "train.train_ratio=16",
        "train.log_every=100", "replay.chunk=64", "replay.capacity=5000", "agent.actor_critic.horizon=5",
        "train.threads=1", "train.eval_every=200", "train.eval_episodes=1", "train.checkpoint_every=200",
        "train.video_every=0"]


def python_job(tmp_path: Path, name: str, code: str) -> jobs.Job:
    return jobs.Job(name, str(tmp_path / name), ("-c", code))


@pytest.mark.slow
def test_a_two_job_sweep_of_the_debug_preset_on_local_ray(tmp_path, monkeypatch, capsys):
    """`benchmarks.learning` with two seeds of a debug task: two real `python -m agent train` jobs on a Ray
    started in-process with 2 CPUs, both run directories complete, and the results gathered from them."""
    import benchmarks.learning as learning

    task = Task("pendulum", "gym:Pendulum-v1", "state", "debug", 400, -2000.0, "a smoke test", FAST)
    monkeypatch.setitem(learning.SUITES, "cpu", [task])
    monkeypatch.setattr(learning, "machine_info", dict)
    root, out = tmp_path / "runs", tmp_path / "out.json"
    args = ["--rundir", str(root), "--out", str(out), "--seeds", "0", "1", "--cpus", "2"]
    assert learning.main(args) == 0
    printed = capsys.readouterr().out
    assert "running 2 job(s) on local Ray (2 CPUs)" in printed
    for name in ("pendulum", "pendulum-seed1"):
        run = root / name
        done = json.loads((run / "done.json").read_text())
        assert done == {"steps": 400}
        assert (run / "checkpoint.pt").exists() and (run / "replay").is_dir()
        assert "final eval return" in (run / "stdout.log").read_text()
        assert not (run / jobs.LOCK).exists()  # released at the end
    results = json.loads(out.read_text())
    assert [(r["name"], r["seed"], r["steps"]) for r in results["runs"]] == [("pendulum", 0, 400), ("pendulum", 1, 400)]
    assert [p["env_steps"] for p in results["runs"][1]["curve"]] == [200, 400]
    assert all(r["wall_s"] > 0 for r in results["runs"])  # each run's own clock, from its logs
    (summary,) = results["tasks"]
    assert summary["seeds"] == [0, 1] and summary["passed"]
    # The same command again: both runs are finished, nothing starts.
    assert learning.main(args) == 0
    assert "queued" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_failing_job_is_reported_with_its_log_and_retried(tmp_path, capsys):
    marker = str(tmp_path / "tried")
    flaky = python_job(tmp_path, "flaky", "import os, sys\n"
                       f"first = not os.path.exists({marker!r})\n"
                       f"open({marker!r}, 'w').close()\n"
                       "print('flaky output: first try' if first else 'flaky output: second try')\n"
                       "sys.exit(3 if first else 0)")
    broken = python_job(tmp_path, "broken", "raise SystemExit('broken beyond repair')")
    for job in (flaky, broken):
        Path(job.rundir).mkdir()
    outcomes = jobs.Runner(cpus=2, retries=1).run([flaky, broken])  # a real Ray, started in this process
    printed = capsys.readouterr().out
    assert [(o.ok, o.attempts) for o in outcomes] == [(True, 2), (False, 2)]
    assert "flaky FAILED (exit 3" in printed and "attempt 1 of 2; starting it again" in printed
    assert "flaky output: first try" in printed  # the log's tail is in the report
    assert printed.count("broken FAILED (exit 1") == 2 and "broken beyond repair" in printed
    assert outcomes[1].log_tail.endswith("broken beyond repair") and "exit 1" in outcomes[1].error
    log = (tmp_path / "flaky" / "stdout.log").read_text()
    assert log.count("=== ") == 2 and "second try" in log  # both attempts, one log


def test_a_run_directory_a_node_cannot_see_is_a_clear_failure(tmp_path):
    result = jobs.run_attempt(python_job(tmp_path, "elsewhere", "print(1)"), str(tmp_path))
    assert result["returncode"] is None and "storage that every node mounts" in result["error"]


def test_a_run_directory_takes_one_sweep_at_a_time(tmp_path, capsys):
    run = tmp_path / "run"
    with jobs.locked([run]):
        owner = json.loads((run / jobs.LOCK).read_text())
        assert owner["pid"] == os.getpid()
        with pytest.raises(jobs.SweepLocked, match="another sweep"):
            with jobs.locked([tmp_path / "other", run]):
                pass
        assert not (tmp_path / "other" / jobs.LOCK).exists()  # what it had taken is let go
        jobs.clear(run)  # --fresh empties a run directory but keeps the lock
        assert (run / jobs.LOCK).exists()
    assert not (run / jobs.LOCK).exists()
    # A sweep that died on this machine (its pid is gone) leaves a lock that the next one takes over.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / jobs.LOCK).write_text(json.dumps({"host": owner["host"], "pid": int(dead.stdout), "since": "then"}))
    with jobs.locked([run]):
        assert json.loads((run / jobs.LOCK).read_text())["pid"] == os.getpid()
    assert "taking over the lock" in capsys.readouterr().out


def test_learning_refuses_a_run_directory_another_sweep_is_writing(tmp_path, monkeypatch):
    import benchmarks.learning as learning

    task = Task("pendulum", "gym:Pendulum-v1", "state", "debug", 400, 0.0, "", FAST)
    monkeypatch.setitem(learning.SUITES, "cpu", [task])
    monkeypatch.setattr(jobs, "run_attempt", lambda job, cwd: pytest.fail("started a job"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "runs" / "pendulum"
        run.mkdir(parents=True)
        (run / jobs.LOCK).write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": sleeper.pid}))
        assert learning.main(["--rundir", str(tmp_path / "runs"), "--out", str(tmp_path / "o.json"), "--no-ray"]) == 2
    finally:
        sleeper.kill()
        sleeper.wait()


def test_without_ray_jobs_run_one_after_another_with_a_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    code = "import time; print('start', time.time()); time.sleep(0.5); print('end', time.time())"
    first, second = python_job(tmp_path, "first", code), python_job(tmp_path, "second", code)
    outcomes = jobs.Runner(cpus=2).run([first, second])
    assert all(o.ok for o in outcomes)
    notice = [line for line in capsys.readouterr().out.splitlines() if "Ray is not installed" in line]
    assert notice == ["Ray is not installed (pip install 'tubedreamer[cluster]'): running jobs one after another."]
    times = {}
    for job in (first, second):
        log = (Path(job.rundir) / "stdout.log").read_text().split()
        times[job.name] = float(log[log.index("start") + 1]), float(log[log.index("end") + 1])
    assert times["second"][0] >= times["first"][1]


@pytest.mark.parametrize("use_ray", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_terminated_sweep_stops_its_jobs(tmp_path, use_ray):
    """SIGTERM to the sweep ends the job it runs (cancelled on Ray; its process group), instead of leaving it
    behind; a later call would resume it."""
    pidfile = tmp_path / "job.pid"
    script = (f"from benchmarks.jobs import Job, Runner\n"
              f"code = \"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(120)\"\n"
              f"Runner(cpus=2, use_ray={use_ray}).run([Job('sleeper', {str(tmp_path / 'sleeper')!r}, ('-c', code))])\n")
    sweep = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.1)
    job_pid = int(pidfile.read_text())
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(30) == 143
    for _ in range(100):
        try:
            os.kill(job_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(job_pid, signal.SIGKILL)
        pytest.fail("the job outlived its sweep")
