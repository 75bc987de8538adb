"""The main job end to end: how long ``make train`` takes to learn, from process start.

    python -m benchmarks.default_job --out results/default_job_cpu.json
    python -m benchmarks.default_job --stop-at-threshold --out results/default_job_cpu.json
    python -m benchmarks.default_job --set train.steps=1500 train.eval_every=500 --out /tmp/smoke.json  # smoke
    python -m benchmarks.default_job --minutes 60 --set env.spec=dmc:cartpole-balance env.obs=pixels \
        replay.capacity=1024 train.prefill=500 train.log_every=200 train.eval_every=5000 train.steps=100000 \
        train.threads=1 --out results/memory_pixels_cpu.json                     # memory over an hour

Runs ``python -m agent train --logdir <dir>`` with no task or preset, as ``make train`` does, and reads the
run's ``metrics.jsonl`` as it grows: every evaluation is recorded with the wall seconds since the process
started (when this command first saw it: at most ``--poll`` seconds late) beside the loop's own
``time/wall_s``. The threshold is the learning benchmark's task for the same env and observations (on a
CPU, ``pendulum``: -300). The results hold the time and env steps to the first evaluation that reaches it,
the whole run's wall time, the eval curve, peak memory, machine, torch and commit, and how busy the machine
was (load averages, and the CPU time other processes took, from /proc/stat), and the resident memory the
loop logged, with its growth once the replay is full (``memory``). ``--minutes`` ends the run after that much
wall time. Exit status 1 when the run failed, or never reached the threshold and was not ended by ``--minutes``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import exit_status, machine_info, parser, write_json
from .learning import SUITES, Task

# Other processes using more than this many cores on average while the job ran: its times are inflated.
BUSY_CORES = 0.2


def threshold_task(spec: str, obs: str) -> tuple[str, Task]:
    """The learning benchmark's task (suite, task) with this env and observations: its threshold is the bar."""
    for suite, tasks in SUITES.items():
        for task in tasks:
            if task.spec == spec and task.obs == obs:
                return suite, task
    raise ValueError(f"no learning-benchmark task trains {spec} from {obs}, so there is no threshold for it")


class MetricsFollower:
    """Reads a growing ``metrics.jsonl``: each ``poll`` returns the evaluations logged since the last one,
    stamped with the ``clock`` seconds since ``start`` at which they were first seen."""

    def __init__(self, path: Path, start: float, clock: Callable[[], float] = time.monotonic):
        self.path, self.start, self.clock = path, start, clock
        self.offset = 0  # bytes read so far: whole lines only, a line being written is read next time
        self.rows: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        """New evaluation points ``{"env_steps", "return", "wall_s", "run_wall_s"}``."""
        if not self.path.exists():
            return []
        seen = self.clock() - self.start
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            text = file.read()
        end = text.rfind(b"\n") + 1
        self.offset += end
        new = [json.loads(line) for line in text[:end].decode().splitlines() if line]
        self.rows += new
        return [{"env_steps": row["step"], "return": row["eval/return"], "wall_s": round(seen, 2),
                 "run_wall_s": row.get("time/wall_s")} for row in new if "eval/return" in row]


def first_reaching(curve: list[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    """The first evaluation whose return reaches ``threshold``, or None."""
    return next((point for point in curve if point["return"] >= threshold), None)


def machine_load(start: dict[str, Any], end: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """How busy the machine was apart from the job: load averages and other processes' mean busy cores."""
    cores = os.cpu_count() or 1
    others = steal = None
    if start["busy_s"] is not None and end["busy_s"] is not None:
        job = end["children_cpu_s"] - start["children_cpu_s"]
        others = max(0.0, (end["busy_s"] - start["busy_s"] - job) / max(wall_s, 1e-9))
        steal = (end["steal_s"] - start["steal_s"]) / max(wall_s, 1e-9)
    busy = others is not None and others + steal > BUSY_CORES
    if others is None:
        note = "unknown (no /proc/stat)"
    elif busy:
        note = "other processes (or virtual machines) took CPU while the job ran; its times are longer than when idle"
    else:
        note = "the machine was otherwise idle"
    return {"cpu_count": cores, "loadavg_start": start["loadavg"], "loadavg_end": end["loadavg"],
            "job_cpu_s": round(end["children_cpu_s"] - start["children_cpu_s"], 1),
            "other_processes_cores": None if others is None else round(others, 2),
            "steal_cores": None if steal is None else round(steal, 2), "shared": busy,
            "note": f"shared machine: {note} (other_processes_cores: mean cores other processes used during the "
                    "run, from /proc/stat minus the job's own CPU time; steal_cores: mean cores the hypervisor gave "
                    "to other machines; loadavg_end includes the job's threads)"}


def load_sample() -> dict[str, Any]:
    """Load averages, the CPU seconds since boot that all processes on the machine were busy and that a
    hypervisor took from this (virtual) machine ("steal"; both None without /proc/stat), and the CPU
    seconds of this process's finished children."""
    import resource

    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
        hz = os.sysconf("SC_CLK_TCK")
        busy, steal = (user + nice + system + irq + softirq) / hz, steal / hz
    except (OSError, IndexError, ValueError):
        busy = steal = None
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"loadavg": [round(v, 2) for v in os.getloadavg()], "busy_s": busy, "steal_s": steal,
            "children_cpu_s": children.ru_utime + children.ru_stime}


def resolve(extra: list[str], logdir: Path) -> Any:
    """The config ``python -m agent train --logdir <logdir> --set <extra>`` will run, resolved by the CLI's own
    code (a bad override is an error here, before anything starts)."""
    from agent.cli import build_config

    return build_config(argparse.Namespace(logdir=str(logdir), resume=False, preset=None, env=None, seed=None,
                                           steps=None, set=extra))


def memory_timeline(rows: list[dict[str, Any]], capacity: int) -> dict[str, Any]:
    """Resident memory over the run (every logged row that has it) and its growth once the replay is full: the
    least-squares slope of RSS against the run's wall time over those rows, in MB per hour (None before two)."""
    points = [{"env_steps": r["step"], "run_wall_s": r.get("time/wall_s"), "rss_mb": r["memory/rss_mb"],
               "peak_rss_mb": r["memory/peak_rss_mb"], "replay_size": r.get("replay/size")}
              for r in rows if "memory/rss_mb" in r]
    full = [p for p in points if p["replay_size"] is not None and p["replay_size"] >= capacity
            and p["run_wall_s"] is not None]
    hours = [p["run_wall_s"] / 3600 for p in full]
    slope = None if len(set(hours)) < 2 else float(np.polyfit(hours, [p["rss_mb"] for p in full], 1)[0])
    return {"replay_capacity": capacity, "points": points,
            "replay_full_at_env_steps": full[0]["env_steps"] if full else None,
            "rss_mb_when_full": full[0]["rss_mb"] if full else None,
            "rss_mb_end": points[-1]["rss_mb"] if points else None,
            "rss_mb_max_after_full": max((p["rss_mb"] for p in full), default=None),
            "hours_after_full": round((full[-1]["run_wall_s"] - full[0]["run_wall_s"]) / 3600, 3) if full else None,
            "rss_growth_mb_per_hour_after_full": None if slope is None else round(slope, 2)}


def run(cmd: list[str], follower: MetricsFollower, threshold: float, stop_at_threshold: bool, poll: float,
        minutes: float | None = None) -> tuple[int, list[dict[str, Any]], str | None]:
    """Run the job, printing each evaluation as it appears; returns exit code, eval curve and why it was
    stopped early ("threshold", "time limit" after ``minutes`` of wall time, or None)."""
    env = {**os.environ}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as make train exports them
    env.setdefault("MUJOCO_GL", "egl")
    # A command started in the background inherits SIGINT as ignored; the run must still stop on SIGINT.
    proc = subprocess.Popen(cmd, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    curve, stopped = [], None

    def read() -> None:
        for point in follower.poll():
            curve.append(point)
            mark = "  (threshold reached)" if point is first_reaching(curve, threshold) else ""
            print(f"[default_job] eval at {point['env_steps']:,} env steps: return {point['return']:.1f}, "
                  f"{point['wall_s']:.0f} s since start{mark}", flush=True)

    try:
        while True:
            done = proc.poll() is not None
            read()  # after the exit check: once the job has ended, every line it wrote is read
            if done:
                break
            if not stopped:
                if stop_at_threshold and first_reaching(curve, threshold) is not None:
                    stopped = "threshold"
                elif minutes is not None and time.monotonic() - follower.start >= 60 * minutes:
                    stopped = "time limit"
                if stopped:
                    print(f"[default_job] {stopped} reached: stopping the run with SIGINT (a KeyboardInterrupt "
                          "traceback from it is expected)", flush=True)
                    proc.send_signal(signal.SIGINT)
            time.sleep(poll)
    except KeyboardInterrupt:  # Ctrl-C reached the job too (same process group): let it end, keep the record
        print("[default_job] interrupted", flush=True)
    finally:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    read()
    return proc.returncode, curve, stopped


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--out", default=None, help="results JSON (default results/default_job_<cpu|cuda>.json)")
    p.add_argument("--logdir", default=None, help="the run's directory (default runs/default_job-<time>)")
    p.add_argument("--stop-at-threshold", action="store_true",
                   help="end the run (SIGINT) once an evaluation reaches the threshold")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="overrides passed to `python -m agent train --set` (then it is not the default job any "
                        "more; for smoke runs)")
    p.add_argument("--minutes", type=float, default=None,
                   help="end the run (SIGINT) after this many minutes of wall time (e.g. a memory run)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between reads of metrics.jsonl")
    args = p.parse_args(argv)
    setup: dict[str, Any] = {}
    status = exit_status(lambda: setup.update(_setup(args)))  # a bad override or a used --logdir: one line, status 2
    return status or _measure(args, **setup)


def _setup(args: argparse.Namespace) -> dict[str, Any]:
    """The checked inputs of a measurement: its logdir, resolved config, and the learning task it is judged by."""
    logdir = Path(args.logdir or f"runs/default_job-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if (logdir / "metrics.jsonl").exists():
        raise ValueError(f"{logdir} already holds a run; the measurement needs a fresh --logdir")
    cfg = resolve(args.set, logdir)
    suite, task = threshold_task(cfg.env.spec, cfg.env.obs)
    return {"logdir": logdir, "cfg": cfg, "suite": suite, "task": task}


def _measure(args: argparse.Namespace, logdir: Path, cfg: Any, suite: str, task: Any) -> int:
    import torch

    device = "cuda" if cfg.agent.device.startswith("cuda") else "cpu"
    out = Path(args.out or f"results/default_job_{device}.json")
    cmd = [sys.executable, "-m", "agent", "train", "--logdir", str(logdir), *(["--set", *args.set] if args.set else [])]
    print(f"[default_job] {' '.join(cmd)}\n[default_job] {cfg.env.spec} ({cfg.env.obs}), {cfg.train.steps:,} env "
          f"steps; threshold {task.threshold:g} (learning suite {suite!r}, task {task.name!r})", flush=True)

    before = load_sample()
    start = time.monotonic()
    follower = MetricsFollower(logdir / "metrics.jsonl", start)
    code, curve, stopped = run(cmd, follower, task.threshold, args.stop_at_threshold, args.poll, args.minutes)
    wall = time.monotonic() - start
    load = machine_load(before, load_sample(), wall)

    reached = first_reaching(curve, task.threshold)
    peaks = [row["memory/peak_rss_mb"] for row in follower.rows if "memory/peak_rss_mb" in row]
    write_json(out, {
        "benchmark": "default_job", "command": cmd[1:], "default_job": not args.set, "overrides": args.set,
        "spec": cfg.env.spec, "obs": cfg.env.obs, "steps": cfg.train.steps, "logdir": str(logdir),
        "threshold": task.threshold, "threshold_from": f"benchmarks.learning SUITES[{suite!r}] task {task.name!r}",
        "threshold_why": task.why, "reached": reached is not None,
        "time_to_threshold_s": None if reached is None else reached["wall_s"],
        "env_steps_to_threshold": None if reached is None else reached["env_steps"],
        "wall_s": round(wall, 2), "exit_code": code, "stopped_at_threshold": stopped == "threshold",
        "minutes": args.minutes, "stopped_at_time_limit": stopped == "time limit",
        "env_steps_done": max((row["step"] for row in follower.rows), default=0),
        "peak_rss_mb": max(peaks, default=None),
        "curve": curve, "memory": memory_timeline(follower.rows, cfg.replay.capacity),
        "curve_fields": "wall_s: seconds since the process started, when this command first saw the eval (at most "
                        f"{args.poll:g} s late); run_wall_s: the loop's time/wall_s (from the loop's start)",
        "load": load, "machine": machine_info(), "torch": torch.__version__,
    })
    verdict = "not reached" if reached is None else \
        f"reached after {reached['wall_s']:.0f} s at {reached['env_steps']:,} env steps"
    print(f"[default_job] threshold {task.threshold:g} {verdict}\n[default_job] run: {wall:.0f} s, exit {code}; "
          f"{load['note']}\n[default_job] wrote {out}", flush=True)
    return 0 if (code == 0 or stopped) and (reached is not None or stopped == "time limit") else 1


if __name__ == "__main__":
    sys.exit(main())
