"""Env steps per second per spec, observation mode, process count and render quality.

    python -m benchmarks.env_throughput --out results/env_throughput.json

Random actions through ``envs.make_vec``; one env step is one agent step (``action_repeat`` simulator
steps). Results are printed as a table and written as JSON with the machine they ran on.
"""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np

import envs

from .common import machine_info, parser, write_json

DEFAULT_SPECS = ["dmc:cartpole-swingup", "dmc:walker-walk", "gym:HalfCheetah-v5", "gym:Pendulum-v1"]


def measure(spec: str, obs: str, num_envs: int, quality: str, steps: int, action_repeat: int) -> dict:
    """Time ``steps`` vector steps after a reset and a short warm-up; returns one results row."""
    with contextlib.closing(envs.make_vec(spec, num_envs, seed=0, obs=obs, render_quality=quality,
                                          action_repeat=action_repeat)) as vec:
        vec.reset(seed=0)
        vec.action_space.seed(0)
        for _ in range(5):
            vec.step(vec.action_space.sample())
        start = time.perf_counter()
        for _ in range(steps):
            vec.step(vec.action_space.sample())
        seconds = time.perf_counter() - start
    env_steps = steps * num_envs
    return {"spec": spec, "obs": obs, "num_envs": num_envs, "render_quality": quality if obs != "state" else None,
            "action_repeat": action_repeat, "env_steps": env_steps, "seconds": round(seconds, 3),
            "env_steps_per_s": round(env_steps / seconds, 1),
            "sim_steps_per_s": round(env_steps * action_repeat / seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--specs", nargs="+", default=DEFAULT_SPECS, help="env specs to measure")
    p.add_argument("--obs", nargs="+", default=["state", "pixels"], help="observation modes")
    p.add_argument("--num-envs", nargs="+", type=int, default=[1, os.cpu_count() or 2],
                   help="process counts (1 runs in-process)")
    p.add_argument("--qualities", nargs="+", default=["fast", "full"], help="render qualities for pixels")
    p.add_argument("--steps", type=int, default=300, help="timed vector steps per configuration")
    p.add_argument("--action-repeat", type=int, default=2, help="simulator steps per env step")
    p.add_argument("--out", default="results/env_throughput.json", help="results JSON path")
    args = p.parse_args(argv)

    configs = [(spec, obs, n, q) for spec in args.specs for obs in args.obs for n in dict.fromkeys(args.num_envs)
               for q in (args.qualities if obs != "state" else ["-"])]
    rows = []
    print(f"{'spec':24s} {'obs':7s} {'envs':>4s} {'quality':7s} {'env steps/s':>12s}")
    for i, (spec, obs, n, quality) in enumerate(configs, 1):
        rows.append(measure(spec, obs, n, "fast" if quality == "-" else quality, args.steps, args.action_repeat))
        print(f"{spec:24s} {obs:7s} {n:4d} {quality:7s} {rows[-1]['env_steps_per_s']:12.1f}   [{i}/{len(configs)}]",
              flush=True)
        rate = {(r["spec"], r["obs"], r["num_envs"], r["render_quality"]): r["env_steps_per_s"] for r in rows}
        speedups = {f"{s} x{n}": round(v / rate[s, o, n, "full"], 2) for (s, o, n, q), v in rate.items()
                    if q == "fast" and (s, o, n, "full") in rate}
        write_json(args.out, {"benchmark": "env_throughput", "machine": machine_info(), "results": rows,
                              "fast_over_full_speedup": speedups, "numpy": np.__version__})
    print("fast/full render speed-up:", speedups, "\nwrote", args.out)

if __name__ == "__main__":
    main()
