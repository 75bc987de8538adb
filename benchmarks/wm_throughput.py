"""World-model throughput: update and forward time per batch, per preset, encoder and decoder.

    python -m benchmarks.wm_throughput --presets debug small 12m --encoders patch cnn \\
        --batch 16 --length 64 --out results/wm_throughput_cpu.json
    python -m benchmarks.wm_throughput --rssm-loop --presets debug small --out results/wm_rssm_loop_cpu.json
    python -m benchmarks.wm_throughput --agent --presets 12m --out results/agent_update_cpu.json

Update = forward + backward + optimizer step (`WorldModel.train_step`), timed after warm-up, median of
`--repeats`. Forward = `WorldModel.loss` under no_grad, plus its parts (encoder, RSSM observe loop,
image decoder). Each configuration runs in its own subprocess so that its peak memory is its own:
on CPU the peak resident set (ru_maxrss) and the RSS before the model was built; on CUDA
torch.cuda.max_memory_allocated. Observations are 64x64x3 uint8 images with a 6-dim Box action.

`--params-only` writes parameter counts per module for every preset and encoder, without timing.
`--agent` times the whole update instead: world model plus actor-critic in imagination
(`Agent.train_step`), the unit of the issue's speed target, through `benchmarks/speed_child.py`;
`--obs state` gives it a 5-dim state vector and a 1-dim action (like cartpole-balance from state),
`--obs pixels` (the default) 64x64x3 images and a 6-dim action; `--action-dim` changes either. Each
child also times the update phase by phase (`--phase-repeats` more updates: world model, imagination,
actor-critic losses and step, the rest), and reports its peak RSS.

    python -m benchmarks.wm_throughput --agent --presets cpu --obs state --encoders patch --threads 1 \\
        --baseline e8b2407 --rounds 3 --profile --out results/speed_cpu.json

`--baseline REV` measures an older revision in the same run: a temporary `git worktree` of REV (removed
at the end, also on error or SIGTERM) and, per configuration, `--rounds` rounds that each run one child
with the current tree's `agent` and one with REV's, alternating which goes first, so that drift in the
machine's speed hits both sides alike. Both sides run the same child script (so the same batch, timer
and phase wrappers); only the `agent` package differs. The result per configuration holds both medians
(median over rounds of each child's median), `speedup` = baseline / current, the per-round numbers, and
the commits (current HEAD with its dirty flag and dirty paths, REV's full hash). `--profile` adds one
more child with the current code: torch.profiler over one update after warm-up, summarised as op
counts, the top ops by self CPU time and the time per phase. `--set` passes config overrides
(`precision=bf16`) to every child. `--rssm-loop` times the RSSM observe loop
alone (random embeddings), eager against torch.compile of the step cell
(`world_model.rssm.compile=true`), forward and forward + backward, and checks that both give the same
numbers. `--shape PRESET=BxT` gives one preset a smaller batch (the JSON records it).

With `--baseline`, the same run also checks that both revisions give the same losses from the same seed:
the first round's children first run `--check-updates` updates (default 3; 0: off) of a separate,
identically seeded agent on fixed batches and return their metric dicts (`check_metrics`, see
`speed_child.py`). Each result then holds `equivalence`: per metric both sides report, the largest
absolute and relative difference over the updates and at the first update; the keys only one side has;
the worst key; and `same_losses`, true when every `train/loss/*` agrees at the FIRST update within
`tolerance` (|a - b| <= atol + rtol * max(|a|, |b|)). Later updates start from parameters that already
differ by float rounding, so they may drift further without either side being wrong: they are reported
(`max_rel_diff`), not judged.
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
from .common import machine_info

ROOT = Path(__file__).resolve().parents[1]  # the tree whose code is "current"


def _machine(device: str) -> dict[str, Any]:
    info = {**machine_info(), "cpu_affinity": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": device}
    info["cpu_model"] = info["processor"]
    info["device_name"] = torch.cuda.get_device_name(0) if device.startswith("cuda") else info["processor"]
    return info


def _time(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    stats = speed_child.time_stats([speed_child.timed(fn, device) for _ in range(repeats)])
    return {k: v for k, v in stats.items() if k != "times_s"}


def _batch(B: int, T: int, A: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    flags = {k: torch.zeros(B, T, dtype=torch.bool) for k in ("is_first", "is_last", "is_terminal")}
    flags["is_first"][:, 0] = True
    batch = {"image": torch.randint(0, 256, (B, T, 64, 64, 3), generator=g, dtype=torch.uint8),
             "action": torch.rand(B, T, A, generator=g) * 2 - 1, "reward": torch.randn(B, T, generator=g),
             **flags}
    return {k: v.to(device) for k, v in batch.items()}


def _config(spec: dict[str, Any]) -> Any:
    """The preset of ``spec`` with its device, encoder, decoder and extra overrides applied."""
    from agent.config import apply_overrides, preset

    overrides = [f"device={spec['device']}", *spec.get("overrides", [])]
    if "encoder" in spec:
        overrides.append(f"world_model.encoder.kind={spec['encoder']}")
    if "decoder" in spec:
        overrides.append(f"world_model.decoder.kind={spec['decoder']}")
    return apply_overrides(preset(spec["preset"]), overrides)


IMAGE_SPACE = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})
ACTION_SPACE = spaces.Box(-1, 1, (6,), np.float32)


def _build(spec: dict[str, Any]):
    from agent.world_model import WorldModel

    return WorldModel(IMAGE_SPACE, ACTION_SPACE, _config(spec))


def _finish(result: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Add the peak memory of this child process (and of the GPU when used)."""
    if device.type == "cuda":
        result["peak_cuda_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["peak_rss_mb"] = speed_child.rss_mb()
    return result


def run_update(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one world-model configuration (runs inside the child process)."""
    device = torch.device(spec["device"])
    B, T = spec["batch"], spec["length"]
    batch = _batch(B, T, 6, device)
    rss_before = speed_child.rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wm = _build(spec)
    result: dict[str, Any] = {**spec, "param_counts": wm.param_counts(), "rss_before_model_mb": rss_before,
                              "torch_threads": torch.get_num_threads()}
    result["update"] = _time(lambda: wm.train_step(batch), device, spec["warmup"], spec["repeats"])
    with torch.no_grad():
        result["forward"] = _time(lambda: wm.loss(batch), device, 1, spec["repeats"])
        data = wm.preprocess(batch)
        embed = wm.embed(data, batch["is_first"])
        feat = wm.rssm.features(wm.rssm.observe(embed, batch["action"], batch["is_first"])[0])
        result["forward_parts"] = {
            "encoder": _time(lambda: wm.embed(data, batch["is_first"]), device, 1, spec["repeats"]),
            "rssm_observe": _time(lambda: wm.rssm.observe(embed, batch["action"], batch["is_first"]),
                                  device, 1, spec["repeats"]),
            "image_decoder": _time(lambda: wm.image_decoder(feat), device, 1, spec["repeats"]),
        }
    result["frames_per_s_update"] = B * T / result["update"]["median_s"]
    return _finish(result, device)


def run_rssm_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the RSSM observe loop alone, eager and compiled (runs inside the child process)."""
    device = torch.device(spec["device"])
    B, T = spec["batch"], spec["length"]
    eager = _build({**spec, "overrides": ["world_model.rssm.compile=false"]}).rssm
    compiled = _build({**spec, "overrides": ["world_model.rssm.compile=true"]}).rssm
    compiled.load_state_dict(eager.state_dict())
    g = torch.Generator().manual_seed(1)
    embed = torch.randn(B, T, eager.post_embed.in_features, generator=g).to(device)
    action = torch.rand(B, T, 6, generator=g).to(device)
    is_first = torch.zeros(B, T, dtype=torch.bool, device=device)
    is_first[:, 0] = True
    result: dict[str, Any] = {**spec, "rssm_params": sum(p.numel() for p in eager.parameters()),
                              "torch_threads": torch.get_num_threads()}

    def forward(rssm):
        with torch.no_grad():
            return rssm.observe(embed, action, is_first, sample=False)

    def train(rssm):
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
        result[f"{name}_forward"] = _time(lambda r=rssm: forward(r), device, 1, spec["repeats"])
        result[f"{name}_forward_backward"] = _time(lambda r=rssm: train(r), device, 1, spec["repeats"])
    result["peak_rss_mb"] = speed_child.rss_mb()
    return result


# --------------------------------------------------------------------------- whole update, against a baseline


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


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


def run_agent_child(spec: dict[str, Any], root: Path) -> dict[str, Any]:
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


def interleave(spec: dict[str, Any], sides: dict[str, Path], rounds: int,
               run_child: Callable[[dict[str, Any], Path], dict[str, Any]] = run_agent_child,
               report: Callable[[str], None] = lambda line: None) -> list[dict[str, Any]]:
    """``rounds`` rounds of one child per side; the side that goes first alternates from round to round.
    Only the first round's children run the equivalence check (its updates are the same in every round)."""
    names = list(sides)
    out = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        entry: dict[str, Any] = {"round": r, "order": order}
        round_spec = spec if r == 0 else {**spec, "check_updates": 0}
        for name in order:
            entry[name] = child = run_child(round_spec, sides[name])
            report(f"    round {r + 1}/{rounds} {name:8} {_child_line(child)}")
        out.append(entry)
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


LOSS_RTOL = 1e-3  # `same_losses`: every train/loss/* at the first check update within rtol ...
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
    both have, over the updates both ran. ``same_losses`` judges the first update only: later ones start from
    parameters that float reordering has already nudged apart, so they are reported, not judged."""
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
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= atol + rtol * max(abs(a), abs(b))


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
    both = "agent_update" in current and "agent_update" in out["baseline"]
    out["speedup"] = (out["baseline"]["agent_update"]["median_s"] / current["agent_update"]["median_s"]
                      if both else None)
    out["speedup_per_round"] = [
        r["baseline"]["agent_update"]["median_s"] / r["current"]["agent_update"]["median_s"]
        if "agent_update" in r["current"] and "agent_update" in r["baseline"] else None for r in rounds]
    return out


def _child_line(child: dict[str, Any]) -> str:
    if "error" in child:
        return child["error"].splitlines()[-1]
    mem = child.get("peak_cuda_mem_mb", child["peak_rss_mb"])
    return f"{child['agent_update']['median_s'] * 1e3:8.1f} ms  peak {mem:7.0f} MB  ({child['wall_s']:.0f} s)"


def run_agent_config(spec: dict[str, Any], sides: dict[str, Path], rounds: int, profile: bool,
                     baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Time one configuration on every side (interleaved), and profile the current code when asked."""
    start = time.perf_counter()
    per_round = interleave(spec, sides, rounds, report=lambda line: print(line, flush=True))
    check = spec.get("check_updates", speed_child.CHECK_UPDATES) > 0
    result: dict[str, Any] = {**spec, **compare(per_round, check)}
    if baseline is not None:
        result["baseline"] = {**baseline, **result["baseline"]}
    if profile:
        child = run_agent_child({**spec, "profile": True, "check_updates": 0}, sides["current"])
        result["profile"] = child.get("profile", {"error": child.get("error")})
    result["wall_s"] = time.perf_counter() - start
    return result


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one spec in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, "-m", "benchmarks.wm_throughput", "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return {**spec, "error": f"child exited with {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _shapes(items: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for item in items:
        name, shape = item.split("=")
        B, T = shape.lower().split("x")
        out[name] = (int(B), int(T))
    return out


def _errors(side: dict[str, Any]) -> str:
    """The last line of each child's error (the JSON keeps the traceback's tail)."""
    return "; ".join(e.strip().splitlines()[-1] for e in side.get("errors", ["no timing"]))


def _summary(r: dict[str, Any]) -> str:
    if "error" in r:
        return r["error"]
    if r.get("mode") == "agent_update":
        if "agent_update" not in r:
            return "current: " + _errors(r)
        mem = r.get("peak_cuda_mem_mb", r["peak_rss_mb"])
        line = (f"agent update {r['agent_update']['median_s'] * 1e3:8.1f} ms  "
                f"params {r['param_counts']['total'] / 1e6:6.2f}M  peak {mem:7.0f} MB")
        if "baseline" in r:
            base = r["baseline"]
            line += (f" | baseline {base['revision']} {base['agent_update']['median_s'] * 1e3:.1f} ms, "
                     f"speedup x{r['speedup']:.3f}" if r.get("speedup") else
                     f" | baseline {base['revision']}: {_errors(base)}")
        return line
    if "update" in r:
        mem = r.get("peak_cuda_mem_mb", r["peak_rss_mb"])
        return (f"update {r['update']['median_s'] * 1e3:8.1f} ms  "
                f"forward {r['forward']['median_s'] * 1e3:8.1f} ms  "
                f"params {r['param_counts']['total'] / 1e6:6.2f}M  peak {mem:7.0f} MB")
    return (f"eager fwd {r['eager_forward']['median_s'] * 1e3:7.1f} ms, fwd+bwd "
            f"{r['eager_forward_backward']['median_s'] * 1e3:7.1f} ms | compiled fwd "
            f"{r['compiled_forward']['median_s'] * 1e3:7.1f} ms, fwd+bwd "
            f"{r['compiled_forward_backward']['median_s'] * 1e3:7.1f} ms (compile {r['compile_s']:.0f} s)")


def _equivalence_line(r: dict[str, Any]) -> str | None:
    """One line with the same-losses verdict of an agent result against its baseline (None: not checked)."""
    eq = r.get("equivalence")
    if eq is None:
        return None
    revision = r["baseline"].get("revision", "baseline")
    if "error" in eq:
        return f"same losses as {revision}: unknown ({eq['error']})"
    tol, worst = eq["tolerance"], eq["per_key"].get(eq["worst_key"])
    verdict = "yes" if eq["same_losses"] else "NO (" + ", ".join(eq["losses_differing"]) + ")"
    if not eq["losses_compared"]:
        verdict = "NO (no train/loss/* key on both sides)"

    def g(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2g}"

    return (f"same losses as {revision}: {verdict} ({eq['losses_compared']} train/loss/* at update 1 within "
            f"rtol {tol['rtol']:g}, atol {tol['atol']:g}); max rel diff at update 1 "
            f"{g(eq['first_update_max_rel_diff'])}, over {eq['updates']} updates {g(eq['max_rel_diff'])} "
            f"({eq['worst_key']}, abs {g(worst['max_abs_diff'] if worst else None)}); {eq['keys_compared']} keys "
            f"compared, {len(eq['only_in_current'])} only in current, {len(eq['only_in_baseline'])} only in baseline")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["debug", "small"])
    p.add_argument("--encoders", nargs="+", default=["patch", "cnn"], choices=["patch", "cnn"])
    p.add_argument("--decoders", nargs="+", default=["cnn"], choices=["cnn", "patch"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--shape", nargs="*", default=[], help="per-preset batch, e.g. 12m=4x16")
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
    p.add_argument("--params-only", action="store_true", help="only count parameters (no timing)")
    p.add_argument("--out", default=None, help="JSON file to write (rewritten after every configuration)")
    p.add_argument("--append", action="store_true", help="add to the results already in --out")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def _run_child(spec: dict[str, Any]) -> None:
    """Inside a child process: run one spec and print its JSON result as the last stdout line."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    runner = {"rssm_loop": run_rssm_loop, "agent_update": speed_child.run, "update": run_update}[spec["mode"]]
    print(json.dumps(runner(spec)))


def _write(report: dict[str, Any], out: str | None) -> None:
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            json.dump(report, f, indent=1)


def _params_only(args: argparse.Namespace) -> None:
    """Print (and write) the parameter counts of every preset and encoder, without timing."""
    counts = {f"{name}/{enc}": _build({"preset": name, "device": "cpu", "encoder": enc}).param_counts()
              for name in args.presets for enc in args.encoders}
    for key, c in counts.items():
        print(f"{key:12} " + " ".join(f"{k}={v / 1e6:.2f}M" for k, v in c.items()), flush=True)
    _write({"machine": {"cpu": _machine("cpu")}, "argv": [sys.argv[1:]], "obs": "image 64x64x3", "action_dim": 6,
            "param_counts": counts}, args.out)


def _specs(args: argparse.Namespace, devices: list[str]) -> list[dict[str, Any]]:
    """One spec per device, preset, encoder and decoder (or per device and preset for --rssm-loop)."""
    shapes = _shapes(args.shape)
    specs = []
    for device in devices:
        for name in args.presets:
            B, T = shapes.get(name, (args.batch, args.length))
            base = {"preset": name, "device": device, "batch": B, "length": T, "warmup": args.warmup,
                    "repeats": args.repeats, "threads": args.threads, "overrides": args.set}
            if args.rssm_loop:
                specs.append({**base, "mode": "rssm_loop"})
                continue
            for enc in args.encoders:
                for dec in args.decoders:
                    if args.agent:
                        A = args.action_dim or (1 if args.obs == "state" else 6)
                        specs.append({**base, "mode": "agent_update", "obs": args.obs, "action_dim": A,
                                      "encoder": enc, "decoder": dec, "phase_repeats": args.phase_repeats,
                                      "check_updates": args.check_updates})
                    else:
                        specs.append({**base, "mode": "update", "encoder": enc, "decoder": dec})
    return specs


def _new_report(args: argparse.Namespace, devices: list[str]) -> dict[str, Any]:
    """The results JSON to fill: machine and argv, and with --append the results already in --out."""
    report = {"machine": {d: _machine(d) for d in devices}, "argv": [sys.argv[1:]], "results": []}
    if args.append and args.out and os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        report = {"machine": {**old["machine"], **report["machine"]}, "argv": old["argv"] + report["argv"],
                  "results": old["results"]}
    if args.agent:
        report["code"] = current_code()
    return report


def _run_specs(args: argparse.Namespace, specs: list[dict[str, Any]], report: dict[str, Any]) -> None:
    """Time every spec (against the baseline's worktree too, with --baseline), writing after each one."""
    if args.baseline:  # so that a killed run still removes its worktree (the context manager's finally)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with ExitStack() as stack:
        sides, baseline = {"current": ROOT}, None
        if args.baseline:
            tree, commit = stack.enter_context(baseline_worktree(args.baseline))
            sides["baseline"], baseline = tree, {"revision": args.baseline, "commit": commit}
            report["code"]["baseline"] = baseline
        for i, spec in enumerate(specs):
            keys = ("device", "preset", "obs", "encoder", "decoder", "batch", "length", "threads", "overrides")
            label = " ".join(f"{k}={spec[k]}" for k in keys if spec.get(k))
            print(f"[{i + 1}/{len(specs)}] {label} ...", flush=True)
            start = time.perf_counter()
            if args.agent:
                result = {**run_agent_config(spec, sides, args.rounds, args.profile, baseline),
                          "code": report["code"]}
            else:
                result = _child(spec)
            result["wall_s"] = time.perf_counter() - start
            print(f"    {_summary(result)}  ({result['wall_s']:.0f} s)", flush=True)
            if args.agent and _equivalence_line(result):
                print(f"    {_equivalence_line(result)}", flush=True)
            report["results"].append(result)
            _write(report, args.out)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; see the module docstring."""
    p = _parser()
    args = p.parse_args(argv)
    if (args.baseline or args.profile or args.obs != "pixels" or args.action_dim) and not args.agent:
        p.error("--baseline, --profile, --obs and --action-dim need --agent")
    if args.child:
        _run_child(json.loads(args.child))
    elif args.params_only:
        _params_only(args)
    else:
        devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        _run_specs(args, _specs(args, devices), _new_report(args, devices))


if __name__ == "__main__":
    main()
