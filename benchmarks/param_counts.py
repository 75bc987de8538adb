"""Parameter counts of every agent preset (world model parts, actor, critic), for the README table.

    python -m benchmarks.param_counts --out results/param_counts.json

Counted for 64x64 pixels through the patch encoder and through the CNN encoder, and for a
24-dim state vector (walker's), each with a 6-dim Box action.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from agent.agent import Agent
from agent.config import PRESETS, apply_overrides

from .common import machine_info, parser, write_json

OBS = {
    "pixels/patch": (gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)}), "patch"),
    "pixels/cnn": (gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)}), "cnn"),
    "state": (gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (24,), np.float32)}), "patch"),
}


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--presets", nargs="+", default=list(PRESETS), help="presets to count")
    p.add_argument("--out", default="results/param_counts.json", help="results JSON path")
    args = p.parse_args(argv)
    action = gym.spaces.Box(-1, 1, (6,), np.float32)
    counts = {}
    for name in args.presets:
        for obs_name, (space, encoder) in OBS.items():
            cfg = apply_overrides(PRESETS[name], [f"world_model.encoder.kind={encoder}"])
            counts[f"{name}/{obs_name}"] = Agent(space, action, cfg).param_counts()
            print(f"{name:6s} {obs_name:13s} {counts[f'{name}/{obs_name}']['total']:>13,}", flush=True)
    write_json(args.out, {"benchmark": "param_counts", "machine": machine_info(), "action_dim": 6,
                          "state_dim": 24, "counts": counts})
    print("wrote", args.out)


if __name__ == "__main__":
    main()
