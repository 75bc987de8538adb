"""World-model and agent update times per preset, encoder and decoder, each configuration in a fresh process.

    python -m benchmarks.wm_throughput --presets debug small 12m --encoders patch cnn \
        --batch 16 --length 64 --out results/wm_throughput_cpu.json
    python -m benchmarks.wm_throughput --rssm-loop --presets debug small --out results/wm_rssm_loop_cpu.json
    python -m benchmarks.wm_throughput --agent --presets 12m --out results/agent_update_cpu.json
    python -m benchmarks.wm_throughput --agent --presets cpu --obs state --encoders patch --threads 1 \
        --baseline e8b2407 --rounds 3 --profile --out results/speed_cpu.json

Each configuration runs in its own `benchmarks/speed_child.py` process (which says how it times), so that
its peak memory is its own. By default the world model alone (64x64x3 images, a 6-dim action): its update
(`WorldModel.train_step`), its forward (`WorldModel.loss` under no_grad) and the forward's parts (encoder,
RSSM observe loop, image decoder). `--rssm-loop`: the RSSM observe loop alone, eager against the compiled
step cell, with a check that both give the same numbers. `--agent`: the whole update (`Agent.train_step`),
also phase by phase; `--obs state` gives it a 5-dim state and a 1-dim action.

`--agent` runs `--rounds` rounds, each with one child per configuration and side (the current tree, and
with `--baseline REV` also REV's agent, from a temporary `git worktree` removed at the end, also on error
or SIGTERM); the order of configurations and of sides reverses from round to round, so that drift in the
machine's speed hits all alike. `speedup` = baseline median / current median; with both encoders,
`encoder_ratio` holds the patch encoder's world-model phase and update over the CNN's, the median of the
ratios of children that ran in the same round. The first round's
children also run `--check-updates` seeded updates and return their metrics: `equivalence` compares them
per key, and `same_losses` is true when every `train/loss/*` agrees at the first update within
`tolerance` (later updates start from parameters that float rounding has already moved apart, so they
are reported, not judged). `--profile` adds a torch.profiler summary of one update of the current code.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import gymnasium.spaces as spaces
import numpy as np
import torch

from . import speed_child
from .common import machine_info, parser, read_json, write_json

ROOT = Path(__file__).resolve().parents[1]  # the tree whose code is "current"


def _world_model(spec: dict[str, Any], *overrides: str) -> Any:
    """The world model of ``spec`` (64x64x3 images, a 6-dim action), with ``overrides`` added."""
    from agent.world_model import WorldModel

    cfg = speed_child.build_config({**spec, "overrides": [*spec.get("overrides", []), *overrides]})
    return WorldModel(speed_child.obs_space("pixels"), spaces.Box(-1, 1, (6,), np.float32), cfg)


def run_update(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one world-model configuration (in the child process): update, forward and the forward's parts."""
    device = torch.device(spec["device"])
    batch = {k: torch.as_tensor(v, device=device)
             for k, v in speed_child.make_batch("pixels", spec["batch"], spec["length"], 6).items()}
    rss_before = speed_child.rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wm = _world_model(spec)

    def measure(fn: Callable[[], Any], warmup: int = 1) -> dict[str, Any]:
        return speed_child.measure(fn, device, warmup, spec["repeats"])

    result: dict[str, Any] = {**spec, "param_counts": wm.param_counts(), "rss_before_model_mb": rss_before,
                              "update": measure(lambda: wm.train_step(batch), spec["warmup"])}
    with torch.no_grad():
        data, first, action = wm.preprocess(batch), batch["is_first"], batch["action"]
        embed = wm.embed(data, first)
        feat = wm.rssm.features(wm.rssm.observe(embed, action, first)[0])
        result["forward"] = measure(lambda: wm.loss(batch))
        result["forward_parts"] = {"encoder": measure(lambda: wm.embed(data, first)),
                                   "rssm_observe": measure(lambda: wm.rssm.observe(embed, action, first)),
                                   "image_decoder": measure(lambda: wm.image_decoder(feat))}
    result["frames_per_s_update"] = spec["batch"] * spec["length"] / result["update"]["median_s"]
    return result


def run_rssm_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the RSSM observe loop alone, eager and compiled (in the child process)."""
    device = torch.device(spec["device"])
    B, T = spec["batch"], spec["length"]
    eager = _world_model(spec, "world_model.rssm.compile=false").rssm
    compiled = _world_model(spec, "world_model.rssm.compile=true").rssm
    compiled.load_state_dict(eager.state_dict())
    g = torch.Generator().manual_seed(1)
    embed = torch.randn(B, T, eager.post_embed.in_features, generator=g).to(device)  # (B, T, E)
    action = torch.rand(B, T, 6, generator=g).to(device)  # (B, T, A)
    is_first = torch.zeros(B, T, dtype=torch.bool, device=device)
    is_first[:, 0] = True
    result: dict[str, Any] = {**spec, "rssm_params": sum(p.numel() for p in eager.parameters())}

    def forward(rssm: Any) -> Any:
        with torch.no_grad():
            return rssm.observe(embed, action, is_first, sample=False)

    def train(rssm: Any) -> None:
        post, prior = rssm.observe(embed, action, is_first)
        (rssm.features(post).square().mean() + prior["logits"].mean()).backward()

    start = time.perf_counter()
    forward(compiled)
    train(compiled)
    result["compile_s"] = time.perf_counter() - start  # first calls: tracing and code generation
    a, c = forward(eager)[0], forward(compiled)[0]
    result["max_abs_diff_deter"] = (a["deter"] - c["deter"]).abs().max().item()
    result["same_mode_samples"] = bool(torch.equal(a["stoch"].argmax(-1), c["stoch"].argmax(-1)))
    for name, rssm in (("eager", eager), ("compiled", compiled)):
        result[f"{name}_forward"] = speed_child.measure(lambda r=rssm: forward(r), device, 1, spec["repeats"])
        result[f"{name}_forward_backward"] = speed_child.measure(lambda r=rssm: train(r), device, 1, spec["repeats"])
    return result


# --------------------------------------------------------------------------- children, against a baseline


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.rstrip()


def current_code() -> dict[str, Any]:
    """The commit of the current tree, whether it has uncommitted changes, and which files of the agent."""
    dirty = _git("status", "--porcelain", "--", "agent", "benchmarks/speed_child.py").splitlines()
    return {"commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain")),
            "dirty_paths": [line[3:] for line in dirty]}


@contextmanager
def baseline_worktree(revision: str) -> Iterator[tuple[Path, str]]:
    """A detached git worktree of ``revision`` in a temporary directory and its full commit hash; removed on
    exit, also on an exception (SIGTERM included, see `main`)."""
    commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    tmp = Path(tempfile.mkdtemp(prefix="wm-baseline-"))
    tree = tmp / commit[:12]
    _git("worktree", "add", "--detach", str(tree), commit)
    try:
        yield tree, commit
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


def run_in_child(spec: dict[str, Any], root: Path) -> dict[str, Any]:
    """Run `speed_child.py` on ``spec`` in a fresh interpreter that imports `agent` from ``root``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, speed_child.__file__, json.dumps({**spec, "root": str(root)})]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {"error": f"child exited with {proc.returncode}: {tail}", "wall_s": wall}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": wall}


def interleave(specs: list[dict[str, Any]], sides: dict[str, Path], rounds: int,
               run_child: Callable[[dict[str, Any], Path], dict[str, Any]] | None = None,
               report: Callable[[str], None] = lambda line: None,
               after_round: Callable[[list[list[dict[str, Any]]]], None] = lambda per_spec: None,
               ) -> list[list[dict[str, Any]]]:
    """``rounds`` rounds, each one child per spec and side; the order of the specs and of the sides reverses
    from round to round, so that drift in the machine's speed hits every spec and side alike (and two specs,
    e.g. two encoders, are compared round by round). Returns each spec's rounds. Only the first round's
    children run the equivalence check (its updates are the same in every round). ``after_round`` sees the
    rounds so far (to save partial results). ``run_child`` defaults to `run_in_child`."""
    run_child = run_child or run_in_child
    names = list(sides)
    out: list[list[dict[str, Any]]] = [[] for _ in specs]
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for i in (range(len(specs)) if r % 2 == 0 else reversed(range(len(specs)))):
            entry: dict[str, Any] = {"round": r, "order": order}
            round_spec = specs[i] if r == 0 else {**specs[i], "check_updates": 0}
            for name in order:
                entry[name] = child = run_child(round_spec, sides[name])
                report(f"    round {r + 1}/{rounds} {_label(specs[i])} {name:8} {_child_line(child)}")
            out[i].append(entry)
        after_round(out)
    return out


def _label(spec: dict[str, Any]) -> str:
    """preset/obs/encoder (what a spec has of them), and its decoder and device when it names them."""
    extra = "".join(f" {k}={spec[k]}" for k in ("decoder", "device") if spec.get(k))
    return "/".join(str(spec[k]) for k in ("preset", "obs", "encoder") if spec.get(k)) + extra


RATIO_KEYS = ("preset", "batch", "length", "decoder", "device")  # what an encoder ratio is measured at


def encoder_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The patch encoder's cost over the CNN's, per preset, shape, decoder and device with agent results for
    both (pixels, current code): per round (the two ran in the same round, see `interleave`) the ratio of their
    world-model phases and of their whole updates, and the medians of those."""
    pairs: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in results:
        if r.get("obs") == "pixels" and "rounds" in r:
            pairs.setdefault(tuple(r[k] for k in RATIO_KEYS), {})[r["encoder"]] = r
    out = []
    for key, by_encoder in pairs.items():
        if not {"patch", "cnn"} <= set(by_encoder):
            continue
        both = zip(by_encoder["patch"]["rounds"], by_encoder["cnn"]["rounds"])
        rounds = [(p["current"], c["current"]) for p, c in both
                  if "phases" in p["current"] and "phases" in c["current"]]
        if not rounds:
            continue
        wm = [p["phases"]["median_s"]["world_model"] / c["phases"]["median_s"]["world_model"] for p, c in rounds]
        update = [p["agent_update"]["median_s"] / c["agent_update"]["median_s"] for p, c in rounds]
        out.append({**dict(zip(RATIO_KEYS, key)),
                    "world_model_phase": statistics.median(wm), "world_model_phase_per_round": wm,
                    "agent_update": statistics.median(update), "agent_update_per_round": update})
    return out


def summarize_side(children: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's numbers over its rounds: the median of the children's medians, extremes, peak memory,
    and the median time per phase; failed children are listed under ``errors``."""
    ok = [c for c in children if "agent_update" in c]
    out: dict[str, Any] = {}
    checked = [c["check_metrics"] for c in children if "check_metrics" in c]
    if checked:
        out["check_metrics"] = checked[0]
    if len(ok) < len(children):
        out["errors"] = [c.get("error", "no timing") for c in children if "agent_update" not in c]
    if not ok:
        return out
    medians = [c["agent_update"]["median_s"] for c in ok]
    out["agent_update"] = {"median_s": statistics.median(medians), "min_s": min(c["agent_update"]["min_s"] for c in ok),
                           "max_s": max(c["agent_update"]["max_s"] for c in ok),
                           "n": sum(c["agent_update"]["n"] for c in ok), "round_medians_s": medians}
    out["peak_rss_mb"] = max(c["peak_rss_mb"] for c in ok)
    out["param_counts"] = ok[0].get("param_counts")
    out["torch_threads"] = ok[0].get("torch_threads")  # what the child ran with (README table reads it)
    if all("peak_cuda_mem_mb" in c for c in ok):
        out["peak_cuda_mem_mb"] = max(c["peak_cuda_mem_mb"] for c in ok)
    phased = [c["phases"]["median_s"] for c in ok if "phases" in c]
    if phased:
        out["phases_s"] = {k: statistics.median(p.get(k, 0.0) for p in phased) for k in phased[0]}
    return out


LOSS_RTOL = 1e-3  # `same_losses`: every train/loss/* within rtol ...
LOSS_ATOL = 1e-8  # ... or within this absolute floor (numpy's), for losses at or next to zero
LOSS_PREFIX = "train/loss/"


def _diff(a: float, b: float) -> tuple[float, float]:
    """Absolute and relative (to the larger magnitude) difference; two NaNs agree, one NaN is infinitely off."""
    if math.isnan(a) or math.isnan(b):
        return (0.0, 0.0) if math.isnan(a) and math.isnan(b) else (math.inf, math.inf)
    if a == b:  # also equal infinities
        return 0.0, 0.0
    diff = abs(a - b)
    return diff, diff / max(abs(a), abs(b))


def equivalence(current: list[dict[str, float]], baseline: list[dict[str, float]],
                rtol: float = LOSS_RTOL, atol: float = LOSS_ATOL) -> dict[str, Any]:
    """Compare two sides' `check_metrics` (one metric dict per update, same seed and batches) on the keys
    both have, over the updates both ran; ``same_losses`` as the module docstring says."""
    K = min(len(current), len(baseline))
    cur_keys = set().union(*current[:K]) if K else set()
    base_keys = set().union(*baseline[:K]) if K else set()
    per_key: dict[str, dict[str, float]] = {}
    for key in sorted(cur_keys & base_keys):
        diffs = [_diff(c[key], b[key]) for c, b in zip(current[:K], baseline[:K]) if key in c and key in b]
        first = _diff(current[0][key], baseline[0][key]) if key in current[0] and key in baseline[0] else None
        per_key[key] = {"max_abs_diff": max(d[0] for d in diffs), "max_rel_diff": max(d[1] for d in diffs),
                        "first_update_abs_diff": first[0] if first else None,
                        "first_update_rel_diff": first[1] if first else None,
                        "first_update": [current[0].get(key), baseline[0].get(key)]}  # [current, baseline]
    worst = max(per_key, key=lambda k: per_key[k]["max_rel_diff"], default=None)
    first_rel = [v["first_update_rel_diff"] for v in per_key.values() if v["first_update_rel_diff"] is not None]
    losses = [k for k in per_key if k.startswith(LOSS_PREFIX) and per_key[k]["first_update_abs_diff"] is not None]
    differing = [k for k in losses if not _close(current[0][k], baseline[0][k], rtol, atol)]
    return {"updates": K, "keys_compared": len(per_key),
            "max_rel_diff": per_key[worst]["max_rel_diff"] if worst else None, "worst_key": worst,
            "first_update_max_rel_diff": max(first_rel, default=None),
            "same_losses": bool(losses) and not differing, "losses_compared": len(losses),
            "losses_differing": differing,
            "tolerance": {"rtol": rtol, "atol": atol, "keys": LOSS_PREFIX + "*", "updates_judged": "first",
                          "rule": "|a - b| <= atol + rtol * max(|a|, |b|)"},
            "per_key": per_key, "only_in_current": sorted(cur_keys - base_keys),
            "only_in_baseline": sorted(base_keys - cur_keys)}


def _close(a: float, b: float, rtol: float, atol: float) -> bool:
    diff = _diff(a, b)[0]  # two NaNs agree
    return diff == 0.0 or diff <= atol + rtol * max(abs(a), abs(b))


def compare(rounds: list[dict[str, Any]], check: bool = True) -> dict[str, Any]:
    """Current and (when measured) baseline summaries, speedup = baseline median / current median, and the
    same ratio per round (a round's pair ran back to back, so it sees nearly the same machine); when the
    children ran the equivalence check (``check``), the `equivalence` of their metrics and its `same_losses`
    verdict (None when a side has no metrics)."""
    current = summarize_side([r["current"] for r in rounds])
    drop = ("param_counts", "check_metrics")  # once per side, not per child
    out: dict[str, Any] = {**current, "rounds": [
        {k: {n: v for n, v in c.items() if n not in drop} if isinstance(c, dict) else c for k, c in r.items()}
        for r in rounds]}
    if "baseline" not in rounds[0]:
        return out
    out["baseline"] = summarize_side([r["baseline"] for r in rounds])
    checked = ["check_metrics" in side for side in (current, out["baseline"])]
    if all(checked):
        out["equivalence"] = equivalence(current["check_metrics"], out["baseline"]["check_metrics"])
        out["same_losses"] = out["equivalence"]["same_losses"]
    elif check:
        missing = [name for name, has in zip(("current", "baseline"), checked) if not has]
        out["equivalence"] = {"error": "no check_metrics from " + " and ".join(missing)}
        out["same_losses"] = None
    out["speedup"] = _speedup(out["baseline"], current)
    out["speedup_per_round"] = [_speedup(r["baseline"], r["current"]) for r in rounds]
    return out


def _speedup(baseline: dict[str, Any], current: dict[str, Any]) -> float | None:
    """Baseline median over current median (None when either side has no timing)."""
    if "agent_update" not in baseline or "agent_update" not in current:
        return None
    return baseline["agent_update"]["median_s"] / current["agent_update"]["median_s"]


def _child_line(child: dict[str, Any]) -> str:
    if "error" in child:
        return child["error"].splitlines()[-1]
    mem = child.get("peak_cuda_mem_mb", child["peak_rss_mb"])
    return f"{child['agent_update']['median_s'] * 1e3:8.1f} ms  peak {mem:7.0f} MB  ({child['wall_s']:.0f} s)"


def _ms(stats: dict[str, Any]) -> str:
    return f"{stats['median_s'] * 1e3:8.1f} ms"


def _errors(side: dict[str, Any]) -> str:
    """The last line of each failed child's error (the JSON keeps the traceback's tail)."""
    return "no timing: " + "; ".join(e.strip().splitlines()[-1] for e in side.get("errors", []))


def _summary(r: dict[str, Any]) -> str:
    """One console line for a result (an agent result's baseline and same-losses verdict included)."""
    if "error" in r:
        return r["error"].strip().splitlines()[-1]
    if r["mode"] == "rssm_loop":
        return " | ".join(f"{name} fwd {_ms(r[f'{name}_forward'])}, fwd+bwd {_ms(r[f'{name}_forward_backward'])}"
                          for name in ("eager", "compiled")) + f" (compile {r['compile_s']:.0f} s)"
    if r["mode"] == "agent_update" and "agent_update" not in r:
        return _errors(r)
    mem = r.get("peak_cuda_mem_mb", r["peak_rss_mb"])
    params = f"params {r['param_counts']['total'] / 1e6:6.2f}M  peak {mem:7.0f} MB"
    if r["mode"] == "update":
        return f"update {_ms(r['update'])}  forward {_ms(r['forward'])}  {params}"
    line = f"agent update {_ms(r['agent_update'])}  {params}"
    if "baseline" in r:
        base = r["baseline"]
        line += f" | baseline {base['revision']}: " + (
            f"{_ms(base['agent_update'])}, speedup x{r['speedup']:.3f}" if r.get("speedup") else _errors(base))
    eq = r.get("equivalence")
    if eq is not None:
        verdict = f"unknown ({eq['error']})" if "error" in eq else "yes" if eq["same_losses"] else \
            f"NO ({', '.join(eq['losses_differing']) or 'no train/loss/* key on both sides'})"
        line += f"\n    same losses as {r['baseline']['revision']}: {verdict}"
        if "error" not in eq:
            line += (f" ({eq['losses_compared']} train/loss/* at update 1 within rtol {eq['tolerance']['rtol']:g}); "
                     f"largest relative difference over {eq['updates']} updates {eq['max_rel_diff']} "
                     f"({eq['worst_key']})")
    return line


def agent_result(spec: dict[str, Any], rounds: list[dict[str, Any]], baseline: dict[str, Any] | None
                 ) -> dict[str, Any]:
    """One configuration's result from its rounds (see `compare`), with the baseline's revision."""
    result: dict[str, Any] = {**spec, **compare(rounds, spec["check_updates"] > 0)}
    if baseline is not None:
        result["baseline"] = {**baseline, **result["baseline"]}
    return result


def run_agent_specs(specs: list[dict[str, Any]], sides: dict[str, Path], rounds: int, profile: bool,
                    baseline: dict[str, Any] | None, save: Callable[[list[dict[str, Any]]], None]) -> None:
    """Time every configuration on every side, interleaved round by round (`interleave`), then profile the
    current code of each when asked; ``save`` gets the results after every round and at the end."""
    report = lambda line: print(line, flush=True)  # noqa: E731

    def results(per_spec: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        return [agent_result(spec, r, baseline) for spec, r in zip(specs, per_spec) if r]

    per_spec = interleave(specs, sides, rounds, report=report, after_round=lambda done: save(results(done)))
    final = results(per_spec)
    if profile:
        for spec, result in zip(specs, final):
            child = run_in_child({**spec, "profile": True, "check_updates": 0}, sides["current"])
            result["profile"] = child.get("profile", {"error": child.get("error")})
    for result, rounds_done in zip(final, per_spec):  # wall_s: its children's, profile aside
        result["wall_s"] = sum(entry[side].get("wall_s", 0.0) for entry in rounds_done for side in sides)
        print(f"{_label(result)}: {_summary(result)}", flush=True)
    save(final)


def _parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--presets", nargs="+", default=["debug", "small"])
    p.add_argument("--encoders", nargs="+", default=["patch", "cnn"], choices=["patch", "cnn"])
    p.add_argument("--decoders", nargs="+", default=["cnn"], choices=["cnn", "patch"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each run")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rssm-loop", action="store_true", help="time the RSSM observe loop, eager vs compile")
    p.add_argument("--agent", action="store_true",
                   help="time the whole update (world model + actor-critic in imagination) instead")
    p.add_argument("--obs", choices=["pixels", "state"], default="pixels",
                   help="--agent: 64x64x3 images or a 5-dim state vector")
    p.add_argument("--action-dim", type=int, default=None, help="--agent: A (default: 6 for pixels, 1 for state)")
    p.add_argument("--set", nargs="*", default=[], help="config overrides for every run, e.g. precision=bf16")
    p.add_argument("--baseline", default=None, help="--agent: also time this git revision, interleaved")
    p.add_argument("--rounds", type=int, default=1, help="--agent: children per side, alternating sides")
    p.add_argument("--phase-repeats", type=int, default=2,
                   help="--agent: extra updates per child timed phase by phase (0: none)")
    p.add_argument("--profile", action="store_true", help="--agent: torch.profiler summary of one update")
    p.add_argument("--check-updates", type=int, default=speed_child.CHECK_UPDATES,
                   help="--agent: updates of a seeded agent whose metrics both sides compare (0: no check)")
    p.add_argument("--out", default=None,
                   help="JSON file to write (rewritten after every configuration; with --agent every round)")
    p.add_argument("--append", action="store_true", help="add to the results already in --out")
    return p


def _specs(args: argparse.Namespace, devices: list[str]) -> list[dict[str, Any]]:
    """One spec per device, preset, encoder and decoder (or per device and preset for --rssm-loop)."""
    mode = "rssm_loop" if args.rssm_loop else "agent_update" if args.agent else "update"
    specs = []
    for device in devices:
        for name in args.presets:
            base = {"mode": mode, "preset": name, "device": device, "batch": args.batch, "length": args.length,
                    "warmup": args.warmup, "repeats": args.repeats, "threads": args.threads, "overrides": args.set}
            if mode == "rssm_loop":
                specs.append(base)
            elif mode == "update":
                specs += [{**base, "encoder": e, "decoder": d} for e in args.encoders for d in args.decoders]
            else:
                A = args.action_dim or (1 if args.obs == "state" else 6)
                specs += [{**base, "obs": args.obs, "action_dim": A, "encoder": e, "decoder": d,
                           "phase_repeats": args.phase_repeats, "check_updates": args.check_updates}
                          for e in args.encoders for d in args.decoders]
    return specs


def _machine(device: str) -> dict[str, Any]:
    info = {**machine_info(), "cpu_affinity": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(0)
    return info


def _new_report(args: argparse.Namespace, devices: list[str]) -> dict[str, Any]:
    """The results JSON to fill: machine and argv, and with --append the results already in --out."""
    report = {"machine": {d: _machine(d) for d in devices}, "argv": [sys.argv[1:]], "results": []}
    old = read_json(args.out) if args.append and args.out else None
    if old is not None:
        report = {"machine": {**old["machine"], **report["machine"]}, "argv": old["argv"] + report["argv"],
                  "results": old["results"], **{k: old[k] for k in ("encoder_ratio",) if k in old}}
    if args.agent:
        report["code"] = current_code()
    return report


def _run_specs(args: argparse.Namespace, specs: list[dict[str, Any]], report: dict[str, Any]) -> None:
    """Time every spec (with --agent interleaved, against the baseline's worktree too with --baseline), writing
    the results file as they come."""
    kept = list(report["results"])  # with --append, the results already in the file
    kept_ratios = list(report.get("encoder_ratio", []))

    def save(results: list[dict[str, Any]]) -> None:
        report["results"] = kept + results
        # ratios only within this run's rounds; an older one stays unless this run measured its group again
        ratios = [{**r, "commit": report["code"]["commit"]} for r in encoder_ratios(results)]
        measured = {tuple(r[k] for k in RATIO_KEYS) for r in ratios}
        old = [r for r in kept_ratios if tuple(r.get(k) for k in RATIO_KEYS) not in measured]
        if old or ratios:
            report["encoder_ratio"] = old + ratios
        if args.out:
            write_json(args.out, report)

    if not args.agent:
        done: list[dict[str, Any]] = []
        for i, spec in enumerate(specs):
            print(f"[{i + 1}/{len(specs)}] {_label(spec)}", flush=True)
            start = time.perf_counter()
            done.append({**spec, **run_in_child(spec, ROOT), "wall_s": time.perf_counter() - start})
            print(f"    {_summary(done[-1])}  ({done[-1]['wall_s']:.0f} s)", flush=True)
            save(done)
        return
    if args.baseline:  # so that a killed run still removes its worktree (the context manager's finally)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with ExitStack() as stack:
        sides, baseline = {"current": ROOT}, None
        if args.baseline:
            tree, commit = stack.enter_context(baseline_worktree(args.baseline))
            sides["baseline"], baseline = tree, {"revision": args.baseline, "commit": commit}
            report["code"]["baseline"] = baseline
        print(f"{len(specs)} configuration(s) x {len(sides)} side(s) x {args.rounds} round(s), interleaved", flush=True)
        run_agent_specs(specs, sides, args.rounds, args.profile, baseline,
                        lambda results: save([{**r, "code": report["code"]} for r in results]))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; see the module docstring."""
    p = _parser()
    args = p.parse_args(argv)
    if (args.baseline or args.profile or args.obs != "pixels" or args.action_dim) and not args.agent:
        p.error("--baseline, --profile, --obs and --action-dim need --agent")
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    _run_specs(args, _specs(args, devices), _new_report(args, devices))


if __name__ == "__main__":
    main()
