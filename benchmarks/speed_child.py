"""One timed configuration, run in a fresh interpreter by `benchmarks.wm_throughput`.

    PYTHONPATH=<tree> python benchmarks/speed_child.py '<spec as JSON>'

Its last stdout line is the JSON result. ``spec["mode"]``: ``agent_update`` (default) or the world model's
``update`` and ``rssm_loop`` (functions of `benchmarks.wm_throughput`, current tree only). With PYTHONPATH
at a git worktree of an older revision the same file times that revision's agent, so the harness (batch,
timer, phase wrappers, profiler) is the same on both sides; for that the agent mode imports nothing from
`benchmarks` and uses only agent APIs older revisions have too (`Agent(obs_space, act_space, cfg)`,
`Agent.train_step(numpy batch)`, `preset`, `apply_overrides`), and refuses to time an `agent` imported
from outside ``spec["root"]``. With one torch thread on a CPU, times are the process's CPU time (`clock:
process_cpu`), which other processes on the machine do not inflate; otherwise wall time.

Before the timing, ``check_updates`` (default 3) updates of a separate agent, seeded (torch and numpy 0,
batch i from seed 100 + i), record the metric dicts `train_step` returns (``check_metrics``): run on two
trees, they show whether both give the same losses. That agent is gone before the timed one is built.
"""

from __future__ import annotations

import gc
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gymnasium.spaces as spaces
import numpy as np
import torch

STATE_DIM = 5  # like dmc:cartpole-balance from state
IMAGE_SHAPE = (64, 64, 3)
TOP_OPS = 15


def obs_space(obs: str) -> spaces.Dict:
    """The observation space of an observation kind: a 5-dim state vector or a 64x64x3 uint8 image."""
    if obs == "state":
        return spaces.Dict({"state": spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)})
    if obs == "pixels":
        return spaces.Dict({"image": spaces.Box(0, 255, IMAGE_SHAPE, np.uint8)})
    raise ValueError(f"unknown observation kind {obs!r}; expected state or pixels")


def make_batch(obs: str, B: int, T: int, A: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A replay-like batch of numpy arrays, as the loop hands it to `Agent.train_step`."""
    rng = np.random.default_rng(seed)
    flags = {k: np.zeros((B, T), bool) for k in ("is_first", "is_last", "is_terminal")}
    flags["is_first"][:, 0] = True
    if obs == "state":
        observation = {"state": rng.standard_normal((B, T, STATE_DIM), dtype=np.float32)}  # (B, T, 5)
    else:
        observation = {"image": rng.integers(0, 256, (B, T, *IMAGE_SHAPE), dtype=np.uint8)}  # (B, T, 64, 64, 3)
    return {**observation, "action": rng.uniform(-1, 1, (B, T, A)).astype(np.float32),
            "reward": rng.standard_normal((B, T), dtype=np.float32), **flags}


def rss_mb() -> float:
    """Peak resident set of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> tuple[str, Callable[[], float]]:
    """The clock times are read from: on a CPU with one torch thread the process's CPU time, which is the
    update's cost even when other processes share the cores (a preempted update does not count the time it
    waited); elsewhere wall time. Decided per call, so that every copy of this module agrees."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return "process_cpu", time.process_time
    return "wall", time.perf_counter


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds (``clock``) one call of ``fn`` takes, the device synchronised before and after."""
    now = clock(device)[1]
    _sync(device)
    start = now()
    fn()
    _sync(device)
    return now() - start


def measure(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Median, min, max and count of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones (seconds,
    ``clock``), and the times themselves."""
    for _ in range(warmup):
        fn()
    times = [timed(fn, device) for _ in range(repeats)]
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times),
            "times_s": times}


# Methods timed as phases of one update, wrapped on the instance from outside (no agent code edited):
# (phase name, owner attribute path under the agent ("" = the agent itself), method name).
PHASES = (("world_model", "wm", "train_step"), ("imagine", "", "imagine"),
          ("actor_critic_losses", "ac", "losses"), ("replay_value_loss", "ac", "replay_value_loss"),
          ("actor_critic_update", "ac", "update"))


@contextmanager
def phase_timers(agent: Any, device: torch.device, totals: dict[str, float]):
    """Accumulate the time (``clock``) of each phase's calls into ``totals`` (seconds) while active; each call is
    also a `record_function` range, so a profile shows the phases too. Phases a revision lacks are skipped."""
    wrapped = []
    for name, owner_path, method in PHASES:
        owner = getattr(agent, owner_path) if owner_path else agent
        original = getattr(owner, method, None)
        if original is None:
            continue

        def phase(*args: Any, _original=original, _name=name, **kwargs: Any) -> Any:
            out = []
            with torch.profiler.record_function(f"phase/{_name}"):
                totals[_name] = totals.get(_name, 0.0) + timed(lambda: out.append(_original(*args, **kwargs)), device)
            return out[0]

        object.__setattr__(owner, method, phase)  # an instance attribute shadows the class's method
        wrapped.append((owner, method))
    try:
        yield
    finally:
        for owner, method in wrapped:
            object.__delattr__(owner, method)


def time_phases(agent: Any, batch: dict[str, np.ndarray], device: torch.device, repeats: int) -> dict[str, Any]:
    """Median seconds per phase over ``repeats`` updates, plus the whole update and what no phase covers."""
    per_update: list[dict[str, float]] = []
    for _ in range(repeats):
        totals: dict[str, float] = {}
        with phase_timers(agent, device, totals):
            totals["total"] = timed(lambda: agent.train_step(batch), device)
        per_update.append(totals)
    names = [n for n in per_update[0] if n != "total"]
    out = {n: statistics.median(u.get(n, 0.0) for u in per_update) for n in names}
    out["total"] = statistics.median(u["total"] for u in per_update)
    out["other"] = out["total"] - sum(out[n] for n in names)  # batch transfer, starts, metrics' .item()
    return {"median_s": out, "n": repeats}


def profile_update(agent: Any, batch: dict[str, np.ndarray], device: torch.device) -> dict[str, Any]:
    """torch.profiler over one update: op counts, the top ops by self CPU time and the phase split."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    totals: dict[str, float] = {}
    with phase_timers(agent, device, totals), profile(activities=activities) as prof:
        wall = timed(lambda: agent.train_step(batch), device)
    ops = [e for e in prof.key_averages() if not e.key.startswith("phase/")]
    summary: dict[str, Any] = {
        "wall_s_under_profiler": wall, "op_calls": sum(e.count for e in ops), "distinct_ops": len(ops),
        # Wall time of each phase's calls during the profiled update (inflated by the profiler's overhead).
        "phases_s": {**totals, "total": wall, "other": wall - sum(totals.values())},
        **compute_floor(agent, batch, device)}
    units = [("cpu", "self_cpu_time_total")] + ([("device", "self_device_time_total")] if device.type == "cuda" else [])
    for unit, attr in units:
        total_us = sum(getattr(e, attr) for e in ops)
        summary[f"self_{unit}_total_ms"] = total_us / 1e3
        summary[f"top_ops_by_self_{unit}"] = [
            {"name": e.key, "calls": e.count, f"self_{unit}_ms": getattr(e, attr) / 1e3,
             "pct": 100.0 * getattr(e, attr) / max(total_us, 1e-9)}
            for e in sorted(ops, key=lambda e: getattr(e, attr), reverse=True)[:TOP_OPS]]
    return summary


def compute_floor(agent: Any, batch: dict[str, np.ndarray], device: torch.device) -> dict[str, Any]:
    """How far the update is from the device's arithmetic: its FLOPs (matmuls and convolutions, counted by
    torch's FlopCounterMode over one update), the throughput of a large float32 matrix product on the same
    device and threads, and their ratio: the time the update's arithmetic alone would take at that rate."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        agent.train_step(batch)
    flops = counter.get_total_flops()
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    seconds = min(timed(lambda: a @ b, device) for _ in range(3))
    gemm = 2 * n**3 / seconds
    return {"flops_per_update": flops,
            "flops_by_op": {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()},
            "gemm_flops_per_s": gemm, "gemm_shape": [n, n, n], "arithmetic_floor_s": flops / gemm}


CHECK_UPDATES = 3  # default number of updates whose metrics are recorded for the equivalence check
CHECK_BATCH_SEED = 100  # update i of the check trains on make_batch(..., seed=CHECK_BATCH_SEED + i)


def check_metrics(spec: dict[str, Any], updates: int) -> list[dict[str, float]]:
    """The metric dicts of ``updates`` updates of a fresh agent built with ``spec``'s config after seeding
    the global torch and numpy RNGs (the agent seeds its parameters from cfg.seed, but actor sampling draws
    from the global torch RNG); update i trains on a batch of its own (seed 100 + i). Non-numeric metrics
    are left out; non-finite ones stay (JSON writes them as NaN / Infinity)."""
    torch.manual_seed(0)
    np.random.seed(0)
    agent = build_agent(spec)
    out = []
    for i in range(updates):
        batch = make_batch(spec["obs"], spec["batch"], spec["length"], spec["action_dim"], seed=CHECK_BATCH_SEED + i)
        numbers = {k: _number(v) for k, v in agent.train_step(batch).items()}
        out.append({k: v for k, v in numbers.items() if v is not None})
    return out


def _number(value: Any) -> float | None:
    """``value`` as a Python float when it is a real scalar (float, int, bool, one-element tensor or array)."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several elements
        return None


def build_config(spec: dict[str, Any]) -> Any:
    """The agent config of ``spec``: its preset with its device, encoder, decoder and overrides applied."""
    from agent.config import apply_overrides, preset

    overrides = [f"device={spec['device']}"]
    if spec.get("encoder"):
        overrides.append(f"world_model.encoder.kind={spec['encoder']}")
    if spec.get("decoder"):
        overrides.append(f"world_model.decoder.kind={spec['decoder']}")
    return apply_overrides(preset(spec["preset"]), [*overrides, *spec.get("overrides", [])])


def build_agent(spec: dict[str, Any]) -> Any:
    """The agent of ``spec``: its observations (``obs``), an ``action_dim``-dim Box action, its config."""
    from agent.agent import Agent

    return Agent(obs_space(spec["obs"]), spaces.Box(-1, 1, (spec["action_dim"],), np.float32), build_config(spec))


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the agent of ``spec`` and time its update (or profile one); returns a JSON-able dict."""
    import agent as agent_package

    agent_file = str(Path(agent_package.__file__).resolve())
    if spec.get("root") and not agent_file.startswith(str(Path(spec["root"]).resolve()) + "/"):
        raise RuntimeError(f"agent imported from {agent_file}, not from the tree {spec['root']}")
    device = torch.device(spec["device"])
    batch = make_batch(spec["obs"], spec["batch"], spec["length"], spec["action_dim"])
    rss_before = rss_mb()
    checked = {}
    if spec.get("check_updates", CHECK_UPDATES) > 0:  # before the timed agent exists, and gone before it does
        checked["check_metrics"] = check_metrics(spec, spec.get("check_updates", CHECK_UPDATES))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    agent = build_agent(spec)
    result: dict[str, Any] = {"agent_file": agent_file, "torch": torch.__version__,
                              "param_counts": agent.param_counts(), "rss_before_model_mb": rss_before, **checked}
    for _ in range(spec["warmup"]):
        agent.train_step(batch)
    if spec.get("profile"):
        result["profile"] = profile_update(agent, batch, device)
    else:
        result["agent_update"] = measure(lambda: agent.train_step(batch), device, 0, spec["repeats"])
        if spec.get("phase_repeats", 0) > 0:
            result["phases"] = time_phases(agent, batch, device, spec["phase_repeats"])
    return result


def main(spec: dict[str, Any]) -> dict[str, Any]:
    """Set the torch threads and the clock, run ``spec``'s mode, and add the clock, threads and peak memory (this
    process's resident set and, on CUDA, allocated device memory)."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    if spec.get("mode", "agent_update") == "agent_update":
        result = run(spec)
    else:  # the world model alone: the current tree only
        from benchmarks import wm_throughput

        result = getattr(wm_throughput, f"run_{spec['mode']}")(spec)
    cuda = {"peak_cuda_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20} if device.type == "cuda" else {}
    return {**result, "clock": clock(device)[0], "torch_threads": torch.get_num_threads(), **cuda,
            "peak_rss_mb": rss_mb()}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
