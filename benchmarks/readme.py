"""Fill README.md's result tables from the results files, so every number there has a source.

    python -m benchmarks.readme            # rewrite the tables in place
    python -m benchmarks.readme --check    # exit 1 if README.md differs from what the results say

A table lives between ``<!-- table:NAME -->`` and ``<!-- end -->``; NAME picks the renderer below.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from .common import fmt, markdown_table, mean_or_none, parser, read_json
from .continual_report import readme_section, references_section
from .insight import probe_table
from .learning import by_task
from .world_model import flops_markdown
from .world_model import readme_section as world_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def env_throughput(data: dict, source: str) -> str:
    rows = [[r["spec"], r["obs"], str(r["num_envs"]), r["render_quality"] or "-", f"{r['env_steps_per_s']:,.0f}"]
            for r in data["results"]]
    m = data["machine"]
    return (markdown_table(["spec", "obs", "processes", "render", "env steps/s"], rows)
            + f"\n\nMachine: {m['processor']}, {m['cpu_count']} cores; action repeat "
            f"{data['results'][0]['action_repeat']}; source `{source}`.")


def param_counts(data: dict, source: str) -> str:
    presets = dict.fromkeys(key.split("/")[0] for key in data["counts"])
    rows = [[name, *(f"{data['counts'][f'{name}/{obs}']['total'] / 1e6:.2f}M" for obs in ("pixels/patch",
                                                                                      "pixels/cnn", "state"))]
            for name in presets]
    return (markdown_table(["preset", "pixels, patch encoder", "pixels, CNN encoder", "state (24-dim)"], rows)
            + f"\n\nWhole agent (world model, actor, critic), 6-dim actions; source `{source}`.")


def _ms(stats: dict) -> str:
    return f"{stats['median_s'] * 1e3:,.0f}"


def wm_throughput(data: dict, source: str) -> str:
    rows = [[r["preset"], f"{r['batch']}x{r['length']}", str(r["torch_threads"]), r["encoder"], r["decoder"],
             _ms(r["update"]), _ms(r["forward"]), _ms(r["forward_parts"]["encoder"]), f"{r['peak_rss_mb'] / 1024:.1f}"]
            for r in data["results"] if "update" in r]
    m = next(iter(data["machine"].values()))
    return (markdown_table(["preset", "B x T", "threads", "encoder", "decoder", "update ms", "forward ms",
                            "encoder fwd ms", "peak RSS GB"], rows)
            + f"\n\nWorld model only, 64x64 pixels, {m['processor']} ({m['cpu_affinity']} cores, torch "
            f"{m['torch']}), median of {rows and data['results'][0]['repeats']} updates after warm-up; measured at "
            f"commit {m['git_commit']}, whose presets may differ from today's; source `{source}`.")


def agent_update(data: dict, source: str) -> str:
    rows = [[r["preset"], f"{r['batch']}x{r['length']}", str(r["torch_threads"]), r["encoder"],
             f"{r['param_counts']['total'] / 1e6:.1f}M", _ms(r["agent_update"]), f"{r['peak_rss_mb'] / 1024:.1f}"]
            for r in data["results"] if "agent_update" in r]
    m = next(iter(data["machine"].values()))
    return (markdown_table(["preset", "B x T", "threads", "encoder", "params", "update ms", "peak RSS GB"], rows)
            + f"\n\nThe whole update (world model, then actor and critic on imagined rollouts), 64x64 pixels, "
            f"{m['processor']}, torch {m['torch']}, median over each configuration's rounds (the configurations "
            "take turns within every round). "
            + "".join(encoder_ratio_note(r) + " " for r in data.get("encoder_ratio", []))
            + f"Measured at commit {m['git_commit']}, whose presets may differ from today's (`make bench-wm` "
            f"remeasures); source `{source}`.")


def speed(data: dict, source: str) -> str:
    """The whole update against the baseline revision (same settings, interleaved rounds), and where the time
    of today's update goes."""
    phase_names = {"world_model": "world model", "imagine": "imagination", "actor_critic_losses": "actor-critic losses",
                   "replay_value_loss": "replay value loss", "actor_critic_update": "actor-critic backward and step"}
    rows, notes, phase_notes = [], [], []
    for r in data["results"]:
        if r.get("speedup") is None:
            continue
        name = f"{r['obs']}/{r['encoder']}" if r["obs"] == "pixels" else r["obs"]
        rows.append([r["obs"], r["encoder"] if r["obs"] == "pixels" else "-", f"{r['batch']}x{r['length']}",
                     _ms(r["baseline"]["agent_update"]), _ms(r["agent_update"]), f"{r['speedup']:.2f}x",
                     {True: "yes", False: "no", None: "-"}[r.get("same_losses")]])
        prof = r.get("profile", {})
        if "flops_per_update" in prof:
            notes.append(f"{name}: {prof['flops_per_update'] / 1e9:.1f} GFLOP per update; at this core's "
                         f"{prof['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s on a 2048^3 float32 matmul its arithmetic "
                         f"alone takes {prof['arithmetic_floor_s'] * 1e3:,.0f} ms, "
                         f"{r['agent_update']['median_s'] / prof['arithmetic_floor_s']:.1f} times less than the "
                         f"update; {prof['op_calls']:,} op calls, the top ones by self time: "
                         + ", ".join(f"{o['name'].replace('aten::', '')} {o['pct']:.0f}%"
                                     for o in prof["top_ops_by_self_cpu"][:4]) + ".")
        phases = r.get("phases_s")
        if phases:
            split = ", ".join(f"{label} {phases[k] * 1e3:,.0f} ms" for k, label in phase_names.items() if k in phases)
            phase_notes.append(f"Where {name}'s update goes now (median of the timed phases): {split}.")
    notes += phase_notes  # every profile first, then every phase split
    notes += [encoder_ratio_note(r) for r in data.get("encoder_ratio", [])]
    first, machine = data["results"][0], data["machine"]["cpu"]
    return (markdown_table(["obs", "encoder", "B x T", f"{data['code']['baseline']['revision']} ms", "now ms",
                            "speedup", "same losses"], rows)
            + f"\n\nMedian over {len(first['rounds'])} interleaved rounds of each side's median update "
              f"({first['rounds'][0]['current']['clock'].replace('_', ' ')} time, one torch thread, "
              f"{machine['processor']}, torch {machine['torch']}); both sides with the same settings (`--set` in "
              "the Makefile); same losses: every `train/loss/*` of a seeded first update within rtol 1e-3. "
              + " ".join(notes) + f" Source `{source}` (`make bench-speed`).")


GPU_VARIANTS = {"float32": "float32", "bf16": "bf16 autocast", "float32_compile": "float32, RSSM cell compiled",
                "bf16_compile": "bf16, RSSM cell compiled",
                "float32_cudagraphs": "float32, RSSM cell compiled as CUDA graphs (reduce-overhead)"}


GPU_RUNS = (("train", "The default CUDA job"), ("train_cudagraphs", "The same job with the RSSM cell as CUDA graphs"))


def _loss_drift(reference: list[dict], other: list[dict]) -> float:
    """Largest relative difference of a `train/loss/*` between two runs of the same seeded updates."""
    return max(abs(b[k] - a[k]) / max(abs(a[k]), 1e-3) for a, b in zip(reference, other) for k in a
               if k.startswith("train/loss/"))


def _gpu_train(train: dict | None, label: str) -> str:
    """A sentence on one of gpu_check's short training runs: how far it got and its first episodes."""
    if not train or not train["episodes"]:
        return "" if not train else f" {label} logged no episode (exit status {train['rc']})."
    last = train["last"]
    returns = ", ".join(f"{r:,.0f}" for _, r in train["episodes"])
    how = "stopped at its time limit" if train["rc"] in (124, 137) else f"exit status {train['rc']}"
    pace = ""
    if "train/updates" in last and "time/wall_s" in last:  # the loop's own counters, when it logged any
        pace = (f", {last['train/updates'][1]:,.0f} updates in the loop's first {last['time/wall_s'][1]:,.0f} s "
                f"(to {last['train/updates'][0]:,} env steps)")
    return (f" {label} (`{train['command'].split(' -m ')[-1]}`), {how} after {train['wall_s']:,.0f} s: "
            f"{train['episodes'][-1][0]:,} env steps{pace}; training-episode returns {returns} (the first "
            "ones from the random prefill).")


def gpu_check(data: dict, source: str) -> str:
    """`benchmarks/gpu_check.sh` on a CUDA machine: the 12m update per variant, its profile, a short run."""
    rows, profile = [], None
    results = {name: next(iter(data["throughput"].get(name, {}).get("results", [])), None) for name in GPU_VARIANTS}
    reference = (results["float32"] or {}).get("check_metrics")
    for name, label in GPU_VARIANTS.items():
        r = results[name]
        if r is None or "agent_update" not in r:
            rows.append([label, "failed" if r else "not run", "-", "-", "-", "-"])
            continue
        phases = r["phases_s"]
        drift = "-" if not reference or name == "float32" else f"{_loss_drift(reference, r['check_metrics']):.0e}"
        rows.append([label, _ms(r["agent_update"]), f"{phases['world_model'] * 1e3:,.0f}",
                     f"{phases['imagine'] * 1e3:,.0f}", f"{r['peak_cuda_mem_mb']:,.0f}", drift])
        profile = profile or r.get("profile")
    first = next((r for v in data["throughput"].values() for r in v["results"]), None)
    gpu = data.get("gpu", {}).get("name") or data.get("torch", {}).get("device_name", "unnamed GPU")
    if first is None:
        return f"No update timed ({gpu})." + "".join(
            _gpu_train(data.get(key), label) for key, label in GPU_RUNS) + f" Source `{source}`."
    text = (markdown_table(["variant", "update ms", "world model ms", "imagination ms", "peak CUDA MB",
                            "losses vs float32"], rows)
            + f"\n\nThe whole update of `{first['preset']}` ({first['param_counts']['total'] / 1e6:.1f}M parameters), "
            f"{first['batch']}x{first['length']}, 64x64 pixels, patch encoder, median of {first['repeats']} updates "
            f"after {first['warmup']} of warm-up; losses vs float32: the largest relative difference of any "
            f"`train/loss/*` over {len(reference or [])} seeded updates; "
            f"{gpu}, torch {data.get('torch', {}).get('version')}, tree at "
            f"commit {data.get('tree_commit') or data['git_commit']}.")
    if profile:
        launches = sum(o["calls"] for o in profile["top_ops_by_self_cpu"] if o["name"].startswith("cudaLaunch"))
        text += (f" Profile of one float32 update: {profile['op_calls']:,} op calls, {launches:,} kernel launches; "
                 f"the GPU busy {profile['self_device_total_ms']:,.0f} ms of the "
                 f"{profile['wall_s_under_profiler'] * 1e3:,.0f} ms it took under the profiler; its "
                 f"{profile['flops_per_update'] / 1e9:,.0f} GFLOP would take "
                 f"{profile['arithmetic_floor_s'] * 1e3:,.0f} ms at this GPU's float32 2048^3 matmul rate "
                 f"({profile['gemm_flops_per_s'] / 1e12:,.0f} TFLOP/s).")
    text += "".join(_gpu_train(data.get(key), label) for key, label in GPU_RUNS)
    return text + f" Source `{source}`."


def encoder_ratio_note(ratio: dict) -> str:
    """A sentence on the patch encoder's cost over the CNN's (`wm_throughput.encoder_ratios`)."""
    device = "" if ratio["device"] == "cpu" else f" on {ratio['device']}"
    decoder = "CNN" if ratio["decoder"] == "cnn" else ratio["decoder"]
    return (f"At `{ratio['preset']}` ({ratio['batch']}x{ratio['length']}{device}) the patch encoder's world-model "
            f"phase takes {ratio['world_model_phase']:.2f}x the CNN encoder's (same {decoder} decoder; median of "
            "the rounds' ratios, " + ", ".join(f"{x:.2f}" for x in ratio["world_model_phase_per_round"])
            + f", the two timed in the same rounds), its whole update {ratio['agent_update']:.2f}x.")


def default_job(data: dict, source: str) -> str:
    """``make train``'s job timed end to end to its learning threshold."""
    load, m = data["load"], data["machine"]
    reached = (f"{data['time_to_threshold_s'] / 60:.1f} min at {data['env_steps_to_threshold']:,} env steps"
               if data["reached"] else f"not reached in {data['wall_s'] / 60:.1f} min")
    rows = [[data["spec"], data["obs"], f"{data['threshold']:g}", reached, f"{data['peak_rss_mb']:,.0f}",
             "idle" if not load["shared"] else f"shared ({load['other_processes_cores']} cores to others)"]]
    return (markdown_table(["env", "obs", "threshold", "time to threshold (from process start)", "peak RSS MB",
                            "machine"], rows)
            + f"\n\n{'The default job' if data['default_job'] else 'With overrides ' + ' '.join(data['overrides'])}, "
            f"{m['processor']} ({m['cpu_count']} cores, torch {data['torch']}), commit {m['git_commit']}; time from "
            f"process start to the first evaluation at or above the threshold. Source `{source}`.")


def memory(data: dict, source: str) -> str:
    """Resident memory of a time-limited pixel run, before and after its replay is full."""
    mem, m = data["memory"], data["machine"]
    if mem["replay_full_at_env_steps"] is None:
        return f"The replay never filled in {data['wall_s'] / 60:.0f} minutes; source `{source}`."
    after = [point for point in mem["points"] if point["env_steps"] >= mem["replay_full_at_env_steps"]]
    peaks = [after[0]["peak_rss_mb"], after[-1]["peak_rss_mb"]]  # the high-water mark when full and at the end
    rows = [[data["spec"], data["obs"], f"{mem['replay_capacity']:,}", f"{mem['replay_full_at_env_steps']:,}",
             f"{mem['hours_after_full'] * 60:.0f}", *[f"{peak:,.0f}" for peak in peaks],
             f"{mem['rss_mb_when_full']:,.0f}", f"{mem['rss_mb_max_after_full']:,.0f}", f"{mem['rss_mb_end']:,.0f}",
             f"{mem['rss_growth_mb_per_hour_after_full']:+,.0f}"]]
    return (markdown_table(["env", "obs", "replay capacity (steps)", "full at env steps", "minutes after full",
                            "peak RSS MB when full", "peak RSS MB at the end", "RSS MB when full", "max RSS MB after",
                            "RSS MB at the end", "RSS slope MB/hour after full"], rows)
            + f"\n\nOne run of {data['wall_s'] / 60:.0f} minutes (`{' '.join(data['overrides'])}`), ended by its "
            f"time limit; RSS and its peak (the process's high-water mark) logged every "
            f"{mem['points'][1]['env_steps'] - mem['points'][0]['env_steps']:,} env steps, {len(after)} readings "
            f"from the one where the replay is full; slope: least squares over those. {m['processor']}, commit "
            f"{m['git_commit']}. Source `{source}`.")


def _fmt(value: float | None) -> str:
    return fmt(value, 0)


def _minutes(seconds: float | None) -> float | None:
    """Seconds as minutes; None (a run that never logged its time) stays None, shown as '-'."""
    return None if seconds is None else seconds / 60


def _seeds(mean: float | None, seeds: list[float | None]) -> str:
    """A mean over seeds, with each seed's value after it in brackets when there are several."""
    return _fmt(mean) + (f" ({', '.join(map(_fmt, seeds))})" if len(seeds) > 1 else "")


def learning(data: dict, source: str) -> str:
    """A threshold-judged suite's table, with its curves (the PNG beside ``source``)."""
    groups = by_task(data["runs"])
    rows = []
    for t in data["tasks"]:
        runs = groups[t["name"]]
        r, n = runs[0], len(runs)
        rows.append([r["name"], r["spec"], r["obs"], r["preset"], f"{r['steps']:,}", str(n),
                     f"{sum(x['curve'][0]['return'] for x in runs) / n:.0f}",
                     _seeds(t["final_return"], t["final_returns"]), f"{t['threshold']:g}",
                     "yes" if t["passed"] else "no", *(_fmt(r["trivial"].get(k)) for k in ("random", "zero")),
                     _fmt(_minutes(mean_or_none([x["wall_s"] for x in runs])))])
    return (markdown_table(["run", "task", "obs", "preset", "env steps", "seeds", "first eval", "final eval",
                            "threshold", "passed", "random policy", "zero action", "wall min"], rows)
            + f"\n\nFinal eval: mean of the last two evaluations (deterministic policy), averaged over seeds (each "
            f"seed's in brackets); first eval likewise; a task passes when that mean reaches the threshold. "
            f"Random policy and zero action: mean returns of uniform-random actions and of doing nothing on the "
            f"same evaluation episodes. Wall min: per run. Source `{source}`."
            f"\n\n![{Path(source).stem} curves]({Path(source).with_suffix('.png')})")


def learning_dmc_proprio(data: dict, source: str) -> str:
    """The DMC proprio suite against DreamerV3 on DreamerV3's metric at 50K and 100K env steps: one row per
    task that has runs, then the suite mean."""

    def dreamerv3(t: dict, key: str) -> str:
        return f"{_fmt(t[f'dreamerv3_{key}'])} ({_fmt(t[f'dreamerv3_{key}_min'])}-{_fmt(t[f'dreamerv3_{key}_max'])})"

    rows = [[t["name"], ", ".join(map(str, t["seeds"])), _seeds(t["ours_50k"], t["ours_50k_seeds"]),
             dreamerv3(t, "50k"), _seeds(t["ours_100k"], t["ours_100k_seeds"]), dreamerv3(t, "100k"),
             "yes" if t["passed"] else "no", _fmt(t["final_eval"]), ", ".join(_fmt(_minutes(w)) for w in t["wall_s"]),
             ", ".join("-" if c is None else f"{c / 3600:.1f}" for c in t["cpu_s"])]
            for t in data["tasks"]]
    s = data["summary"]
    n = len(s["tasks_in_mean"])
    rows.append([f"suite mean, {n} of {s['tasks_in_suite']} tasks", f"{s['runs']} runs", _fmt(s["ours_50k_mean"]),
                 _fmt(s["dreamerv3_50k_mean"]), _fmt(s["ours_100k_mean"]), _fmt(s["dreamerv3_100k_mean"]),
                 f"{s['at_or_above_dreamerv3_100k']} of {n}", "", "", ""])
    commits = sorted({c for t in data["tasks"] for run in t["trained_at"] for c in run})
    seeds = sorted({t["dreamerv3_seeds"] for t in data["tasks"]})
    return (markdown_table(["task", "seeds", "ours 50K", "DreamerV3 50K", "ours 100K", "DreamerV3 100K",
                            "at or above DreamerV3 at 100K", "final eval (deterministic)", "wall min per run",
                            "CPU h per run"], rows)
            + "\n\nOurs: the mean return of the training episodes (exploring policy) that ended in the 10,000 env "
            "steps up to 50K or 100K, averaged over seeds (each seed's in brackets). DreamerV3: its seed mean in the "
            f"same bin ({' or '.join(map(str, seeds))} seeds, the lowest and highest seed in brackets). Final eval: "
            "our deterministic policy, mean of the last two evaluations averaged over seeds; not DreamerV3's "
            "metric. Wall min: each run's over all its parts (a resumed run adds to the time before its "
            "checkpoint), with the runs in parallel on a shared "
            f"{data['machine']['cpu_count']}-core machine; CPU h: the training process's CPU time (one torch "
            "thread; '-' for a run that began before it was logged), what a run costs on one idle core. "
            + (f"No finished run yet: {', '.join(s['tasks_not_run'])}. " if s["tasks_not_run"] else "")
            + f"Trained at {'commits' if len(commits) > 1 else 'commit'} {', '.join(commits) or 'unknown'}. "
            f"Source `{source}`."
            + f"\n\n![DMC proprio against DreamerV3]({Path(source).with_suffix('.png')})")


def insight(data: dict, source: str) -> str:
    tables = []
    for run in data["runs"]:
        curves, H = run["horizon"], run["horizon_steps"]
        picks = [h for h in (1, 5, 15, 50, 100) if h <= H]
        rows = []
        for metric in ("image_mse", "state_mse", "reward_abs", "kl"):
            if metric in curves:
                copy = curves.get(metric + "_copy")
                rows.append([metric, *[f"{curves[metric]['mean'][h - 1]:.3g}"
                                       + (f" ({copy['mean'][h - 1]:.3g})" if copy else "") for h in picks]])
        tables.append(f"**{run['label']}** ({run['env']}, {'+'.join(run['obs'])}, encoder {run['encoder']}; "
                      f"{run['windows']} windows of {run['context']} observed + {H} imagined steps, policy "
                      f"{run['policy']}). Mean over windows; in brackets the copy-last-step baseline:\n\n"
                      + markdown_table(["metric", *[f"h={h}" for h in picks]], rows))
        probes = run["probes"]
        if probes:
            tables.append(f"Held-out R^2 of linear probes ({probes['train_episodes']} episodes to fit, "
                          f"{probes['test_episodes']} to test); imagined: the `both` probes on imagined latents:\n\n"
                          + probe_table(probes))
    plots = [f"![error vs horizon]({Path(source).with_name('horizon.png')})"]
    plots += [f"![probes]({Path(source).with_name('probes.png')})"] if any(r["probes"] for r in data["runs"]) else []
    return "\n\n".join([*tables, f"Source `{source}` (commit {data['machine']['git_commit']}).",
                        "\n".join(plots)])


def insight_heads(data: dict, source: str) -> str:
    """The reward head and critic per checkpoint (``heads`` of ``benchmarks.insight``), both decodings."""
    rows = []
    for run in data["runs"]:
        h = run["heads"]
        hit, value = h["reward"]["rewarded"], h["value"]
        rows.append([run["label"], fmt(mean_or_none(run["episodes"]["returns"])), f"{hit['steps']:,}",
                     *[fmt(hit.get(k), 3) for k in ("true", "ours", "raw")],
                     fmt(h["reward"]["unrewarded"]["ours"], 3),
                     *[fmt(value[k], 3) for k in ("return_to_go", "ours", "raw")]])
    first = data["runs"][0]
    return (markdown_table(["checkpoint", "mean return", "rewarded steps", "reward there", "predicted (ours)",
                            "predicted (raw)", "predicted elsewhere (ours)", "return-to-go", "value (ours)",
                            "value (raw)"], rows)
            + f"\n\n{first['episodes']['count']} episodes of each checkpoint's exploring policy (policy "
            f"`{first['policy']}`) in {first['env']}; the heads read each step's posterior latent. Ours: symexp of the "
            "expected symlog bin (the agent's decoding); raw: the expected symexp of the bins (DreamerV3's current "
            "one). Return-to-go: discounted (the critic's discount) and cut at the episode's end, so below an "
            f"infinite-horizon value near it. Source `{source}` (commit {data['machine']['git_commit']}).")


def world_model_encoders(data: dict, source: str) -> str:
    return (flops_markdown(data["encoders"]) + f"\n\nPreset `{data['preset']}`, equal FLOPs: {data['equal_flops']}. "
            f"Source `{source}` (`python -m benchmarks.world_model --flops --out {source}`).")


TABLES = {  # README table name: its results file under results/, and the renderer of that file's data
    "env_throughput": ("env_throughput.json", env_throughput), "param_counts": ("param_counts.json", param_counts),
    "wm_throughput": ("wm_throughput_cpu.json", wm_throughput), "learning": ("learning_cpu.json", learning),
    "learning_pixels": ("learning_cpu_pixels.json", learning),
    "learning_dmc_proprio": ("learning_dmc_proprio.json", learning_dmc_proprio),
    "insight": ("insight/insight.json", insight),
    "insight_pendulum": ("insight_pendulum/insight.json", insight_heads),
    "continual_pendulum_conflict": ("continual_pendulum-conflict.json", readme_section),
    "continual_pendulum_physics": ("continual_pendulum-physics.json", readme_section),
    "continual_references_pendulum_conflict": ("continual_references_pendulum-conflict.json", references_section),
    "continual_references_pendulum_physics": ("continual_references_pendulum-physics.json", references_section),
    "agent_update": ("agent_update_cpu.json", agent_update), "speed": ("speed_cpu.json", speed),
    "world_model": ("world_model.json", world_model), "default_job": ("default_job_cpu.json", default_job),
    "memory": ("memory_pixels_cpu.json", memory), "gpu_check": ("gpu_check.json", gpu_check),
    "world_model_encoders": ("world_model_encoders.json", world_model_encoders)}


def table(name: str) -> str:
    """README table ``name`` rendered from its results file, or a line saying that it has not been run yet."""
    source, renderer = TABLES[name]
    data = read_json(RESULTS / source)
    return f"Not run yet: its command writes `results/{source}`." if data is None else \
        renderer(data, f"results/{source}")


def render(text: str) -> str:
    def fill(match: re.Match) -> str:
        return f"<!-- table:{match.group(1)} -->\n{table(match.group(1))}\n<!-- end -->"

    return re.sub(r"<!-- table:(\w+) -->.*?<!-- end -->", fill, text, flags=re.S)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = p.parse_args(argv)
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if args.check:
        if old != new:
            print("README.md tables differ from results/: run python -m benchmarks.readme", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    print("README.md tables updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
