"""The patch encoder on trial: world models trained alone on a fixed dataset, encoders at equal FLOPs.

    python -m benchmarks.world_model --record --task dmc:cartpole-swingup --out data/world_model/cartpole_swingup
    python -m benchmarks.world_model --data data/world_model/cartpole_swingup --encoder patch2 --updates 5000 \\
        --seed 0 --out results/world_model/cartpole_swingup/patch2-s0.json
    python -m benchmarks.world_model --flops --out results/world_model_encoders.json   # encoders' FLOPs, params
    python -m benchmarks.world_model --grid --updates 5000   # 3 tasks x 4 encoders x 3 seeds, then the report
    python -m benchmarks.world_model --report-only           # the report again from results/world_model.json

Recording (``benchmarks.wm_data``): 64x64 frames, the state vector and the simulator's qpos/qvel from a mix of
policies, as replay directories ``train/`` and ``heldout/`` beside ``dataset.json``. Training: the agent's own
``WorldModel`` (losses, optimizer, presets) on uniform (B, T) windows of the training split, checkpointed in
``--run-dir`` (a killed run resumes and draws the batches it would have drawn). Evaluation on held-out episodes:
reconstruction, open-loop image error against copying the last frame (``benchmarks.insight``), and ridge probes
of qpos/qvel from the embedding and the posterior. With ``--equal-flops`` a patch encoder's width is the one whose
forward FLOPs per frame (FlopCounterMode over a ``--batch-length`` window) come closest to the CNN's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import common, insight, jobs, wm_data
from .common import fmt, machine_info, markdown_table, mean_or_none, panels, read_json, save_figure, write_json
from .probes import fit_by_episode, named, r2_score

ENCODERS = ("cnn", "patch1", "patch2", "patch4")
TASKS = ("dmc:cartpole-swingup", "dmc:walker-walk", "dmc:cheetah-run")
HORIZON_PICKS = (1, 5, 10, 25, 50, 100)
IMAGE_SHAPE = (64, 64, 3)


def task_dirname(task: str) -> str:
    """``dmc:cartpole-swingup`` -> ``cartpole_swingup``."""
    return task.split(":", 1)[-1].replace("-", "_")


# --------------------------------------------------------------------------------------------- encoders and FLOPs


def encoder_overrides(label: str) -> list[str]:
    """The config overrides that select an encoder label: ``cnn`` or ``patch<k>``."""
    if label == "cnn":
        return ["world_model.encoder.kind=cnn"]
    if label.startswith("patch") and label[5:].isdigit() and int(label[5:]) >= 1:
        return ["world_model.encoder.kind=patch", f"world_model.encoder.tubelet_frames={int(label[5:])}"]
    raise ValueError(f"encoder must be cnn or patch<k> (e.g. patch2), got {label!r}.")


def _encoder_flops(cfg: Any, T: int, backward: bool, image_shape: tuple[int, int, int] = IMAGE_SHAPE
                   ) -> tuple[int, Any]:
    """(FLOPs of the image encoder of ``cfg`` on one window of T steps, the encoder)."""
    import gymnasium as gym
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from agent.nets import MultiEncoder

    space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, image_shape, np.uint8)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = MultiEncoder(space, cfg.world_model)
    frames = torch.zeros(1, T, *image_shape)
    is_first = torch.zeros(1, T, dtype=torch.bool)
    is_first[:, 0] = True
    counter = FlopCounterMode(display=False)
    with counter:  # grad mode stays on: FlopCounterMode's module tracker fails under no_grad
        out = encoder({"image": frames}, is_first)
        if backward:
            out.sum().backward()
    return counter.get_total_flops(), encoder


def encoder_cost(cfg: Any, length: int = 64) -> dict[str, Any]:
    """FLOPs (matmuls, convolutions, attention: what FlopCounterMode counts) and parameters of the image
    encoder of ``cfg`` (an AgentConfig): forward per frame over a window of ``length`` steps, forward and
    backward per frame over that window, and forward of one online step (T=1 with its k-1 context frames)."""
    forward, encoder = _encoder_flops(cfg, length, False)
    e = cfg.world_model.encoder
    return {"kind": e.kind, "tubelet_frames": e.tubelet_frames if e.kind == "patch" else None,
            "width": e.width if e.kind == "patch" else None, "cnn_depth": e.cnn_depth if e.kind == "cnn" else None,
            "flops_per_frame": forward / length, "flops_train_per_frame": _encoder_flops(cfg, length, True)[0] / length,
            "flops_online_step": _encoder_flops(cfg, 1, False)[0], "window": length,
            "params": sum(p.numel() for p in encoder.parameters()), "embed_dim": encoder.out_dim}


@functools.cache
def equal_flops_width(cfg: Any, tubelet_frames: int, length: int) -> int:
    """The patch encoder width (a multiple of 4 and of the heads) whose forward FLOPs per frame come closest
    to the CNN's of the same config; ties go to the wider."""
    from agent.config import apply_overrides

    target = _encoder_flops(apply_overrides(cfg, encoder_overrides("cnn")), length, False)[0]
    e = cfg.world_model.encoder
    step = math.lcm(4, e.heads)
    best = None
    for width in range(step, 4 * e.width + 1, step):
        over = [*encoder_overrides(f"patch{tubelet_frames}"), f"world_model.encoder.width={width}"]
        flops = _encoder_flops(apply_overrides(cfg, over), length, False)[0]
        gap = abs(math.log(flops / target))
        if best is None or gap <= best[0]:
            best = (gap, width)
        if flops > target:
            break  # FLOPs grow with the width
    return best[1]


def trial_config(preset: str, label: str, seed: int, sets: list[str], equal_flops: bool, length: int) -> Any:
    """The AgentConfig of one trial run: the preset, ``--set`` overrides, the encoder and the seed; with
    ``equal_flops`` a patch encoder's width matched to the CNN's FLOPs per frame."""
    from agent.config import apply_overrides
    from agent.config import preset as get_preset

    cfg = apply_overrides(get_preset(preset), [*sets, *encoder_overrides(label), f"seed={seed}"])
    if equal_flops and label != "cnn":
        width = equal_flops_width(cfg, cfg.world_model.encoder.tubelet_frames, length)
        cfg = apply_overrides(cfg, [f"world_model.encoder.width={width}"])
    return cfg


def flops_table(preset: str, sets: list[str], encoders: list[str], equal_flops: bool, length: int
                ) -> dict[str, dict[str, Any]]:
    """``encoder_cost`` of every encoder label at a preset, as the trial configures them."""
    return {label: encoder_cost(trial_config(preset, label, 0, sets, equal_flops, length), length)
            for label in encoders}


def flops_markdown(table: dict[str, dict[str, Any]]) -> str:
    """The FLOPs/params table as markdown."""
    header = ["encoder", "width / CNN depth", "embed dim", "params", "MFLOP/frame fwd", "vs cnn",
              "MFLOP/frame fwd+bwd", "MFLOP online step"]
    ref = table.get("cnn", next(iter(table.values())))["flops_per_frame"]
    rows = [[label, str(c["width"] or c["cnn_depth"]), str(c["embed_dim"]), f"{c['params']:,}",
             f"{c['flops_per_frame'] / 1e6:.2f}", f"{c['flops_per_frame'] / ref:.2f}",
             f"{c['flops_train_per_frame'] / 1e6:.2f}", f"{c['flops_online_step'] / 1e6:.2f}"]
            for label, c in table.items()]
    return markdown_table(header, rows)


# --------------------------------------------------------------------------------------------- recording


def record(args: argparse.Namespace) -> dict[str, Any]:
    """Record ``--episodes`` training and ``--heldout`` held-out episodes of ``--task`` into ``--out``
    (resuming a killed recording); returns what ``dataset.json`` holds."""
    import envs

    out = Path(args.out)
    kwargs = {"obs": "both", "size": IMAGE_SHAPE[0], "action_repeat": args.action_repeat,
              "render_quality": "fast"}
    policies = args.policies or ["random", "smooth", *(["agent"] if args.checkpoint else [])]
    bad = [p for p in policies if p not in wm_data.POLICIES]
    if bad or ("agent" in policies and not args.checkpoint):
        raise ValueError(f"--policies must be among {wm_data.POLICIES} (agent needs --checkpoint), got {policies}.")
    env, agent = _recording_env(args, kwargs)
    with contextlib.closing(env):
        meta = {"benchmark": "world_model/dataset", "task": args.task, "env": kwargs, "policies": policies,
                "smooth": {"rho": args.smooth_rho, "sigma": args.smooth_sigma}, "seed": args.seed,
                "checkpoint": args.checkpoint, "max_steps": args.max_steps,
                "sim_names": envs.sim_state_names(env), "winding": envs.unlimited_hinges(env), "splits": {}}
        for split, count in [("train", args.episodes), ("heldout", args.heldout)]:
            print(f"{args.task}: recording {count} {split} episodes into {out / split}", flush=True)
            meta["splits"][split] = wm_data.record_split(
                env, out / split, split, count, policies, args.seed, agent, args.smooth_rho, args.smooth_sigma,
                args.max_steps, progress=lambda line: print(line, flush=True))
    meta["machine"] = machine_info()
    write_json(out / "dataset.json", meta)
    print(f"wrote {out / 'dataset.json'}")
    return meta


def _recording_env(args: argparse.Namespace, kwargs: dict[str, Any]) -> tuple[Any, tuple[Any, list[str]] | None]:
    """The env to record in (image and state observations), and (agent, its observation keys) when a
    checkpoint is given."""
    import envs

    if not args.checkpoint:
        return envs.make(args.task, seed=args.seed, **kwargs), None
    from agent.checkpoint import agent_for_env

    def make_env(cfg: Any) -> Any:
        if cfg.env.action_repeat != args.action_repeat:
            raise ValueError(f"{args.checkpoint} acts every {cfg.env.action_repeat} simulator steps, the dataset "
                             f"every {args.action_repeat} (--action-repeat).")
        return envs.make(args.task, seed=args.seed, **kwargs)

    agent, _, env, keys = agent_for_env(args.checkpoint, make_env, args.task, "cpu")
    return env, (agent, keys)


# --------------------------------------------------------------------------------------------- training


def build_model(cfg: Any, action_dim: int, obs_keys: list[str], state_dim: int = 0) -> Any:
    """The agent's WorldModel for 64x64 images (and/or a state vector) and a Box action of ``action_dim``."""
    import gymnasium as gym

    from agent.world_model import WorldModel

    spaces = {"image": gym.spaces.Box(0, 255, IMAGE_SHAPE, np.uint8),
              "state": gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)}
    obs_space = gym.spaces.Dict({k: spaces[k] for k in obs_keys})
    return WorldModel(obs_space, gym.spaces.Box(-1, 1, (action_dim,), np.float32), cfg)


def train_updates(wm: Any, sampler: Any, state: dict[str, Any], updates: int, batch: int,
                  on_update: Any = None) -> None:
    """Train ``wm`` until ``state['updates']`` reaches ``updates``, appending each update's losses to
    ``state['history']``, its wall seconds to ``state['train_s']`` and its process CPU seconds to
    ``state['train_cpu_s']`` (with one torch thread: one core's time, whatever else the machine runs);
    ``on_update(state)`` after each."""
    while state["updates"] < updates:
        t0, c0 = time.perf_counter(), time.process_time()
        metrics, _ = wm.train_step(insight.to_torch(wm, sampler.sample(batch)))
        state["train_s"] += time.perf_counter() - t0
        state["train_cpu_s"] += time.process_time() - c0
        state["updates"] += 1
        state["history"].append({"update": state["updates"], **{k: v for k, v in metrics.items()
                                                                  if k.startswith("loss/")}})
        if on_update is not None:
            on_update(state)


def _load_or_start(run_dir: Path, cfg_dict: dict[str, Any], wm: Any, sampler: Any, fresh: bool) -> dict[str, Any]:
    """The run's progress: from ``run_dir/checkpoint.pt`` when it exists (same config), else a fresh start."""
    import torch

    path = run_dir / "checkpoint.pt"
    if fresh or not path.exists():
        return {"updates": 0, "train_s": 0.0, "train_cpu_s": 0.0, "history": []}
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt["config"] != cfg_dict:
        raise ValueError(f"{path} was written with another configuration; pass --fresh to start over or "
                         "choose another --run-dir.")
    wm.restore(ckpt["world_model"])
    sampler.load_state_dict(ckpt["sampler"])
    print(f"resumed {path} at update {ckpt['progress']['updates']}", flush=True)
    return ckpt["progress"]


def save_checkpoint(run_dir: Path, cfg_dict: dict[str, Any], wm: Any, sampler: Any, progress: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` atomically."""
    import torch

    state = {"config": cfg_dict, "world_model": wm.checkpoint(), "sampler": sampler.state_dict(), "progress": progress}
    common.write_atomically(run_dir / "checkpoint.pt", lambda tmp: torch.save(state, tmp))


def binned_curve(history: list[dict[str, float]], every: int) -> list[dict[str, float]]:
    """Mean of each loss over consecutive bins of ``every`` updates; ``update`` is the bin's last."""
    out = []
    for start in range(0, len(history), every):
        part = history[start : start + every]
        out.append({"update": part[-1]["update"],
                    **{k: float(np.mean([h[k] for h in part])) for k in part[0] if k != "update"}})
    return out


# --------------------------------------------------------------------------------------------- evaluation


# The walker's and cheetah's cameras track the body, so their absolute horizontal position is not in the
# frames (a periodic floor at most): it is probed and reported, but left out of the qpos summary.
UNSEEN = ("qpos[rootx]",)


def probe_quantities(names: dict[str, list[str]], winding: list[str]) -> dict[str, list[str]]:
    """Which probed quantities (``insight.target_names``) summarise positions and velocities: positions are
    the qpos entries but those in ``UNSEEN``, an angle that winds replaced by its cos and sin; velocities all
    qvel entries."""
    positions = [n for n in names["qpos"] if n not in winding and n not in UNSEEN]
    positions += [f"{f}({n})" for n in winding for f in ("cos", "sin")]
    return {"qpos": positions, "qvel": list(names["qvel"])}


def probe_scores(fit: list[dict[str, np.ndarray]], test: list[dict[str, np.ndarray]],
                 fit_targets: list[np.ndarray], test_targets: list[np.ndarray], quantities: list[str],
                 groups: dict[str, list[str]], pca: int = 0) -> dict[str, Any]:
    """Ridge probes fitted on ``fit`` episodes (cross-validated by episode) and scored on ``test``: R^2 per
    quantity and the mean over each group of ``groups`` (qpos, qvel), from the embedding (``embed``), from
    the embedding's first ``pca`` principal components on the fit set (``embed_pca``, when pca > 0: the
    encoders' embeddings differ in size, this reads the same number of features from each) and from the
    posterior latent, deter and stoch (``posterior``)."""
    embed = np.concatenate([o["embed"] for o in fit])
    center, basis = embed.mean(0), np.linalg.svd(embed - embed.mean(0), full_matrices=False)[2][:pca].T  # (E, k)
    sources = {"embed": lambda o: o["embed"], "posterior": lambda o: insight.features(o, "both")}
    if pca > 0:
        sources["embed_pca"] = lambda o: (o["embed"] - center) @ basis
    Y_test = np.concatenate(test_targets)
    report: dict[str, Any] = {"fit_episodes": len(fit), "test_episodes": len(test), "pca": int(basis.shape[1])}
    for source, features in sources.items():
        probe = fit_by_episode([features(o) for o in fit], fit_targets)
        per = named(quantities, r2_score(Y_test, probe.predict(np.concatenate([features(o) for o in test]))))
        summary = {g: mean_or_none([per[q] for q in names]) for g, names in groups.items()}
        report[source] = {"r2": per, **summary}
    return report


def evaluate(wm: Any, heldout: list[dict[str, np.ndarray]], fit: list[dict[str, np.ndarray]],
             meta: dict[str, Any] | None, args: argparse.Namespace) -> dict[str, Any]:
    """Reconstruction, open-loop error vs horizon (with the copy-last-frame baseline) and probes on the
    held-out episodes; probes are fitted on the ``fit`` episodes (skipped without qpos/qvel)."""
    sample = args.latent == "sample"
    wm.generator.manual_seed(args.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    outputs = [insight.episode_latents(wm, ep, sample, embed=True) for ep in heldout]
    result: dict[str, Any] = {"episodes": len(heldout), "steps": int(sum(len(e["reward"]) for e in heldout))}
    if wm.has_image:
        result["recon_mse"] = float(np.mean(np.concatenate([o["recon_mse"] for o in outputs])))
    batch, index = insight.make_windows(heldout, args.context, args.horizon, args.starts)
    curves = insight.horizon_curves(insight.openloop_in_chunks(wm, batch, args.context, sample, (0,), args.chunk))
    result["openloop"] = {"context": args.context, "horizon": args.horizon, "windows": len(index), "curves": curves}
    if meta is not None and all("qpos" in e for e in [*heldout, *fit]) and fit:
        names, winding = meta["sim_names"], meta["winding"]
        quantities = insight.target_names(names, winding)
        result["probes"] = probe_scores(
            [insight.episode_latents(wm, ep, sample, embed=True) for ep in fit], outputs,
            [insight.probe_targets(e, names, winding) for e in fit],
            [insight.probe_targets(e, names, winding) for e in heldout], quantities,
            probe_quantities(names, winding), args.probe_pca)
    result["seconds"], result["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - c0
    return result


# --------------------------------------------------------------------------------------------- one run


def obs_keys(obs: str) -> list[str]:
    return {"pixels": ["image"], "state": ["state"], "both": ["image", "state"]}[obs]


def run_trial(args: argparse.Namespace) -> dict[str, Any]:
    """Train one world model on ``--data`` and evaluate it; writes and returns the results of ``--out``."""
    import torch

    from agent.config import config_to_dict

    data, out = Path(args.data), Path(args.out)
    torch.set_num_threads(max(1, args.threads))
    cfg = trial_config(args.preset, args.encoder, args.seed, args.set, args.equal_flops, args.batch_length)
    run_dir = Path(args.run_dir) if args.run_dir else out.with_suffix("")
    run_dir.mkdir(parents=True, exist_ok=True)
    keys = obs_keys(args.obs)
    step_keys = [*keys, "action", "reward", "is_first", "is_terminal"]
    train = data / "train" if (data / "dataset.json").exists() else data  # a dataset, or a replay directory
    segments = wm_data.load_segments(train, step_keys, args.train_episodes)
    wm = build_model(cfg, segments[0]["action"].shape[-1], keys,
                     segments[0]["state"].shape[-1] if "state" in keys else 0)
    sampler = wm_data.WindowSampler(segments, args.batch_length, args.seed)
    cfg_dict = {"agent": config_to_dict(cfg), "data": str(data), "obs": args.obs, "batch_size": args.batch_size,
                "batch_length": args.batch_length, "train_episodes": args.train_episodes}
    write_json(run_dir / "config.json", cfg_dict)
    progress = _load_or_start(run_dir, cfg_dict, wm, sampler, args.fresh)
    _train_with_progress(wm, sampler, progress, run_dir, cfg_dict, args)
    del segments, sampler  # the training data is not needed for evaluation
    shown = args.encoder if "image" in keys else "mlp"  # without images the image encoder is not used
    result = {"benchmark": "world_model", "task": _task_of(data), "encoder": shown, "seed": args.seed,
              "preset": args.preset, "set": args.set, "updates": progress["updates"],
              "batch": [args.batch_size, args.batch_length], "config": cfg_dict,
              "encoder_cost": encoder_cost(cfg, args.batch_length), "params": wm.param_counts(),
              "train": {"seconds": progress["train_s"], "cpu_seconds": progress["train_cpu_s"],
                        "s_per_update": progress["train_s"] / max(1, progress["updates"]),
                        "cpu_s_per_update": progress["train_cpu_s"] / max(1, progress["updates"]),
                        "curve": binned_curve(progress["history"], args.log_every)}}
    result["eval"] = _evaluate_run(wm, data, keys, args)
    result["machine"] = machine_info()
    write_json(out, result)
    summary_lines(result)
    print(f"wrote {out}", flush=True)
    return result


def _task_of(data: Path) -> str | None:
    """The task of a recorded dataset, or of the training run whose ``replay/`` directory ``data`` is."""
    meta, run_config = read_json(data / "dataset.json"), read_json(data.parent / "config.json")
    return meta["task"] if meta else run_config["env"]["spec"] if run_config else None


def _train_with_progress(wm: Any, sampler: Any, progress: dict[str, Any], run_dir: Path, cfg_dict: dict[str, Any],
                         args: argparse.Namespace) -> None:
    """``train_updates`` with a progress bar and a checkpoint every ``--checkpoint-every`` updates."""
    from tqdm import tqdm

    bar = tqdm(total=args.updates, initial=progress["updates"], unit="update", dynamic_ncols=True, mininterval=2.0,
               disable=args.no_progress)

    def on_update(state: dict[str, Any]) -> None:
        bar.update(1)
        if state["updates"] % 10 == 0:
            recent = state["history"][-10:]
            bar.set_postfix(loss=f"{np.mean([h['loss/total'] for h in recent]):.1f}",
                            image=f"{np.mean([h.get('loss/image', 0.0) for h in recent]):.1f}")
        if state["updates"] % args.checkpoint_every == 0 or state["updates"] == args.updates:
            save_checkpoint(run_dir, cfg_dict, wm, sampler, state)
            if args.no_progress:  # a log file (the grid's jobs) still shows how far the run is
                recent = state["history"][-args.checkpoint_every:]
                print(f"update {state['updates']}/{args.updates}: loss {np.mean([h['loss/total'] for h in recent]):.1f}"
                      f", {state['train_cpu_s'] / state['updates']:.2f} CPU s/update; checkpoint saved", flush=True)

    try:
        train_updates(wm, sampler, progress, args.updates, args.batch_size, on_update)
    finally:
        bar.close()
    if progress["updates"] >= args.updates and not (run_dir / "checkpoint.pt").exists():
        save_checkpoint(run_dir, cfg_dict, wm, sampler, progress)


def _evaluate_run(wm: Any, data: Path, keys: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """``evaluate`` on the held-out split, probes fitted on the first training episodes."""
    heldout_dir = Path(args.heldout_data) if args.heldout_data else data / "heldout"
    if not heldout_dir.is_dir():
        raise ValueError(f"no held-out episodes at {heldout_dir}: --data is not a recorded dataset, so pass "
                         "--heldout-data <dataset>/heldout.")
    root = heldout_dir.parent
    meta = read_json(root / "dataset.json")
    wanted = [*keys, "action", "reward", "is_first", "is_terminal"]
    with_sim = [*wanted, "qpos", "qvel"]
    heldout = wm_data.split_episodes(wm_data.load_segments(heldout_dir, with_sim, args.eval_episodes))
    fit = (wm_data.split_episodes(wm_data.load_segments(root / "train", with_sim, args.probe_episodes))
           if args.probe_episodes and (root / "train").is_dir() else [])
    return evaluate(wm, heldout, fit, meta, args)


def summary_lines(result: dict[str, Any]) -> None:
    """A few lines on stdout: training speed, reconstruction, open-loop error against copying, probes."""
    e = result["eval"]
    print(f"{result['task']} {result['encoder']} seed {result['seed']}: {result['updates']} updates, "
          f"{result['train']['s_per_update']:.2f} s/update ({result['train']['cpu_s_per_update']:.2f} CPU s)"
          + (f"; held-out reconstruction MSE {e['recon_mse']:.5f}" if "recon_mse" in e else ""))
    curves = e["openloop"]["curves"]
    if "image_mse" in curves:
        picks = [h for h in HORIZON_PICKS if h <= e["openloop"]["horizon"]]
        print("  open-loop image MSE " + "  ".join(
            f"h={h}: {curves['image_mse']['mean'][h - 1]:.4f} (copy {curves['image_mse_copy']['mean'][h - 1]:.4f})"
            for h in picks))
    if "probes" in e:
        p = e["probes"]
        print("  probe R^2 " + "  ".join(f"{s}: qpos {fmt(p[s]['qpos'])} qvel {fmt(p[s]['qvel'])}"
                                        for s in ("embed", "posterior")))


# --------------------------------------------------------------------------------------------- the grid


def grid_jobs(args: argparse.Namespace) -> list[Any]:
    """One job per (task, encoder, seed) without a finished result of ``--updates`` updates (every one with
    ``--fresh``); records a task's dataset first when ``--data-root`` lacks it."""
    for label in args.encoders:
        encoder_overrides(label)  # a bad label is an error before any recording or training
    planned = []
    for task in args.tasks:
        data = Path(args.data_root) / task_dirname(task)
        if not (data / "dataset.json").exists():
            record(argparse.Namespace(**{**vars(args), "task": task, "out": str(data)}))
        for label in args.encoders:
            for seed in args.seeds:
                rundir = (Path(args.root) / task_dirname(task) / f"{label}-s{seed}").resolve()
                result = rundir / "result.json"
                if not args.fresh and (read_json(result) or {}).get("updates") == args.updates:
                    continue
                argv = ("-m", "benchmarks.world_model", "--data", str(data.resolve()), "--seed", str(seed),
                        "--out", str(result), "--run-dir", str(rundir), "--encoder", label, *_shared_argv(args))
                planned.append(jobs.Job(f"{task_dirname(task)}/{label}-s{seed}", str(rundir), argv))
    return planned


SHARED_OPTIONS = ("preset", "updates", "batch_size", "batch_length", "obs", "checkpoint_every", "log_every", "context",
                  "horizon", "starts", "probe_episodes", "probe_pca", "latent", "train_episodes", "eval_episodes")


def _shared_argv(args: argparse.Namespace) -> tuple[str, ...]:
    """The settings every run of the grid shares, as command-line arguments (one torch thread a run)."""
    out = [arg for name in SHARED_OPTIONS for arg in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]
    out += ["--threads", "1", "--no-progress", *([] if args.equal_flops else ["--no-equal-flops"])]
    return tuple(out + (["--set", *args.set] if args.set else []))


def start_over(planned: list[jobs.Job], fresh: bool) -> list[jobs.Job]:
    """The jobs, their run directories emptied first with ``fresh`` (called under the sweep's locks)."""
    for job in planned if fresh else []:
        jobs.clear(Path(job.rundir))
    return planned


def run_grid(args: argparse.Namespace) -> int:
    """Train every missing run of the grid through the job runner, then gather the results and report."""
    planned = grid_jobs(args)
    print(f"{len(planned)} runs to train ({len(args.tasks)} tasks x {len(args.encoders)} encoders x "
          f"{len(args.seeds)} seeds, {args.updates} updates each)", flush=True)
    failed = jobs.run_sweep(args, [Path(j.rundir) for j in planned], lambda: start_over(planned, args.fresh)
                            ) if planned else []
    gather(args)
    return 1 if failed else 0


def gather(args: argparse.Namespace) -> Path:
    """Every finished run's result under ``--root`` into one results file, with the FLOPs table; then the report."""
    runs = [read_json(p) for p in sorted(Path(args.root).glob("*/*/result.json"))]
    table = flops_table(args.preset, args.set, list(args.encoders), args.equal_flops, args.batch_length)
    payload = {"benchmark": "world_model", "preset": args.preset, "set": args.set, "updates": args.updates,
               "batch": [args.batch_size, args.batch_length], "equal_flops": args.equal_flops,
               "encoders": table, "machine": machine_info(), "runs": runs}
    out = write_json(args.out, payload)
    write_report(payload, out)
    return out


# --------------------------------------------------------------------------------------------- report


def _by_task(runs: list[dict[str, Any]]) -> dict[str | None, dict[str, list[dict[str, Any]]]]:
    """Runs grouped by task, then by encoder, in the order tasks and encoders first appear (seeds in order)."""
    out: dict[str | None, dict[str, list[dict[str, Any]]]] = {}
    for run in sorted(runs, key=lambda r: (r["task"] or "", ENCODERS.index(r["encoder"])
                                          if r["encoder"] in ENCODERS else 99, r["seed"])):
        out.setdefault(run["task"], {}).setdefault(run["encoder"], []).append(run)
    return out


def _stat(values: list[float | None], digits: int = 2, scale: float = 1.0) -> str:
    """mean +- sd over seeds ('-' when none)."""
    values = [v * scale for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _horizon(run: dict[str, Any], h: int, key: str = "image_mse") -> float | None:
    curve = run["eval"]["openloop"]["curves"].get(key)
    return curve["mean"][h - 1] if curve and h <= len(curve["mean"]) else None


def _probe(run: dict[str, Any], source: str, group: str) -> float | None:
    probes = run["eval"].get("probes")
    return probes[source][group] if probes and source in probes else None


def results_table(runs: list[dict[str, Any]]) -> str:
    """Markdown: one row per (task, encoder), mean ± sd over seeds."""
    picks = (1, 10, 50, 100)
    header = ["task", "encoder", "seeds", "recon MSE (x1e3)", *[f"open-loop h={h} (x1e3)" for h in picks],
              "qpos R² embed", "qvel R² embed", "qvel R² embed PCA", "qpos R² posterior", "qvel R² posterior",
              "CPU s/update"]
    rows = []
    for task, encoders in _by_task(runs).items():
        for label, group in encoders.items():
            copy = [f"{_stat([_horizon(r, h) for r in group], 2, 1e3)} "
                    f"(copy {_stat([_horizon(r, h, 'image_mse_copy') for r in group], 2, 1e3)})" for h in picks]
            rows.append([task_dirname(task or "?"), label, str(len(group)),
                         _stat([r["eval"].get("recon_mse") for r in group], 2, 1e3), *copy,
                         *[_stat([_probe(r, s, g) for r in group]) for s, g in [
                             ("embed", "qpos"), ("embed", "qvel"), ("embed_pca", "qvel"), ("posterior", "qpos"),
                             ("posterior", "qvel")]],
                         _stat([r["train"]["cpu_s_per_update"] for r in group])])
    return markdown_table(header, rows)


def grid_estimate(payload: dict[str, Any], updates: int = 5000, tasks: int = len(TASKS), seeds: int = 3
                  ) -> dict[str, Any] | None:
    """Hours the whole grid of ``updates`` updates a run takes on one core at the measured CPU seconds per
    update (and per evaluation) of each encoder."""
    measured: dict[str, list[tuple[float, float]]] = {}
    for run in payload["runs"]:
        train, evaluation = run["train"], run["eval"]
        measured.setdefault(run["encoder"], []).append((train["cpu_s_per_update"], evaluation["cpu_seconds"]))
    if not measured:
        return None
    per_run = {k: updates * np.mean([m[0] for m in v]) + np.mean([m[1] for m in v]) for k, v in measured.items()}
    hours = sum(per_run.values()) * tasks * seeds / 3600
    return {"updates": updates, "hours_one_core": float(hours), "runs": tasks * seeds * len(per_run)}


def tubelet_test(runs: list[dict[str, Any]]) -> str:
    """The direct test of the tubelet idea: joint velocities read linearly from the encoder's embedding alone,
    per task and encoder (patch1 is the single-frame control of the same architecture); "" without probes."""
    if not any(_probe(r, "embed", "qvel") is not None for r in runs):
        return ""
    pcs = next((r["eval"]["probes"].get("pca") for r in runs if r["eval"].get("probes")), None)
    lines = ["A single frame holds no velocity, so a per-frame embedding (cnn, and patch1, the same Transformer "
             "with one-frame tubelets) can carry joint velocities only through what position and context imply; "
             "a tubelet of k >= 2 frames sees the motion. Held-out R² of qvel from the embedding alone (mean ± sd "
             "over seeds; the embeddings' sizes differ, see the encoder table), and in brackets from its first "
             f"{pcs} principal components on the probe's fit set, the same number of features for every encoder:", ""]
    for task, encoders in _by_task(runs).items():
        parts = [f"{label} {_stat([_probe(r, 'embed', 'qvel') for r in group])}"
                 f" (first principal components: {_stat([_probe(r, 'embed_pca', 'qvel') for r in group])})"
                 for label, group in encoders.items()]
        lines.append(f"- {task_dirname(task or '?')}: " + ", ".join(parts))
    return "\n".join(lines)


def readme_section(payload: dict[str, Any], source: str) -> str:
    """The results of a results file at ``source`` (what ``benchmarks.readme`` puts in README.md, and the body
    of ``write_report``): what was run, the results table, the velocity test, the grid's cost and the plots."""
    runs = payload["runs"]
    if not runs:
        return f"No finished runs in `{source}`."
    tasks = ", ".join(dict.fromkeys(task_dirname(r["task"] or "?") for r in runs))
    encoders = ", ".join(dict.fromkeys(r["encoder"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    done = (f"Runs: {tasks}; encoders {encoders}; seeds {', '.join(map(str, seeds))}; preset `{payload['preset']}`"
            f"{' with `' + ' '.join(payload['set']) + '`' if payload['set'] else ''}, {payload['updates']:,} updates "
            f"of {payload['batch'][0]} x {payload['batch'][1]} per run, equal encoder FLOPs per frame: "
            f"{'yes' if payload['equal_flops'] else 'no'}. Held-out episodes; MSE per pixel x1000 (copying the last "
            "observed frame in brackets); probe R² of ridge probes fitted on training episodes.")
    grid = grid_estimate(payload)
    cost = (f"At these runs' CPU seconds per update, the whole grid ({grid['runs']} runs of {grid['updates']:,} "
            f"updates: 3 tasks, 3 seeds, these encoders) takes about {grid['hours_one_core']:,.0f} hours on one core.")
    stem = Path(source).stem
    plots = f"![horizon]({Path(source).with_name(stem + '_horizon.png')}) ![probes]" \
            f"({Path(source).with_name(stem + '_probes.png')})"
    parts = [done, results_table(runs), tubelet_test(runs), cost,
             f"Source `{source}` (commit {payload['machine']['git_commit']}).", plots]
    return "\n\n".join(part for part in parts if part)  # tubelet_test is "" without probes


def write_report(payload: dict[str, Any], out: Path) -> None:
    """``<out>.md`` (the encoders' FLOPs table, then ``readme_section``) and the plots beside it."""
    runs = payload["runs"]
    if runs:
        plot_horizons(runs, out.with_name(out.stem + "_horizon.png"))
        plot_probes(runs, out.with_name(out.stem + "_probes.png"))
    context = runs[0]["eval"]["openloop"]["context"] if runs else "?"
    lines = ["# World models trained alone on fixed datasets: encoders at equal FLOPs per frame", "",
             "## Encoders", "", flops_markdown(payload["encoders"]), "", "## Results", "",
             f"Mean ± sd over seeds; pixel values in [0, 1]; open loop after {context} observed steps; qpos is the "
             "mean over position quantities (winding angles as cos and sin; without the horizontal position rootx, "
             "which tracking cameras hide), qvel over joint velocities.",
             "", readme_section(payload, out.name), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {out.with_suffix('.md')}")


def plot_horizons(runs: list[dict[str, Any]], path: Path) -> None:
    """Per task: held-out image MSE vs horizon of each encoder (mean over seeds), copying dashed."""
    grouped = _by_task(runs)
    fig, axes = panels(len(grouped), len(grouped), 4.6, 3.4)
    for ax, (task, encoders) in zip(axes, grouped.items()):
        for i, (label, group) in enumerate(encoders.items()):
            mean = np.mean([r["eval"]["openloop"]["curves"]["image_mse"]["mean"] for r in group], 0)
            ax.plot(np.arange(1, len(mean) + 1), mean, color=f"C{i}", label=label)
        copy = np.mean([r["eval"]["openloop"]["curves"]["image_mse_copy"]["mean"]
                        for group in encoders.values() for r in group], 0)
        ax.plot(np.arange(1, len(copy) + 1), copy, "k--", label="copy last frame")
        ax.set_title(task_dirname(task or "?"), fontsize=9)
        ax.set_xlabel("horizon (imagined steps)")
        ax.set_ylabel("image MSE per pixel (log scale)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_probes(runs: list[dict[str, Any]], path: Path) -> None:
    """Per task: held-out probe R^2 of qpos and qvel from the embedding and from the posterior, per encoder."""
    grouped = _by_task(runs)
    bars = [(s, g) for g in ("qpos", "qvel") for s in ("embed", "posterior")]
    fig, axes = panels(len(grouped), len(grouped), 4.6, 3.4)
    for ax, (task, encoders) in zip(axes, grouped.items()):
        x = np.arange(len(encoders))
        for j, (source, group) in enumerate(bars):
            values = [mean_or_none([_probe(r, source, group) for r in seeds]) for seeds in encoders.values()]
            values = [np.nan if v is None else v for v in values]
            ax.bar(x + (j - 1.5) * 0.2, np.clip(values, -0.5, None), 0.2, label=f"{group} from {source}")
        ax.set_xticks(x, list(encoders))
        ax.set_ylim(-0.5, 1.0)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(task_dirname(task or "?"), fontsize=9)
        ax.set_ylabel("held-out R² (clipped at -0.5)")
        ax.legend(fontsize=6)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------- main


def arguments() -> argparse.ArgumentParser:
    p = common.parser(__doc__, prog="python -m benchmarks.world_model")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--record", action="store_true", help="record a dataset of --task into --out")
    mode.add_argument("--grid", action="store_true",
                      help="the comparison: every task x encoder x seed, then the report")
    mode.add_argument("--report-only", action="store_true", help="the report again from the results file --out")
    mode.add_argument("--flops", action="store_true", help="print the encoders' FLOPs per frame and parameters")
    p.add_argument("--out", help="record: the dataset directory; a run: its results JSON; grid: the results file "
                                 "(default results/world_model.json); --flops: a JSON of the table (optional)")
    p.add_argument("--seed", type=int, default=0,
                   help="record: the first env seed; a run: the model's and batches' seed")
    _recording_arguments(p.add_argument_group("recording"))
    _training_arguments(p.add_argument_group("training"))
    _evaluation_arguments(p.add_argument_group("evaluation"))
    g = p.add_argument_group("grid")
    g.add_argument("--tasks", nargs="+", default=list(TASKS), help="tasks of the grid")
    g.add_argument("--encoders", nargs="+", default=list(ENCODERS), help="encoders of the grid (cnn, patch<k>)")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the grid")
    g.add_argument("--data-root", default="data/world_model", help="datasets, one directory per task")
    g.add_argument("--root", default="runs/world_model", help="run directories, <task>/<encoder>-s<seed>")
    jobs.add_arguments(p)
    return p


def _recording_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--task", default="dmc:cartpole-swingup", help="env spec to record")
    g.add_argument("--episodes", type=int, default=60, help="training episodes to record")
    g.add_argument("--heldout", type=int, default=12, help="held-out episodes to record")
    g.add_argument("--policies", nargs="+", help="policy mix (random smooth agent; default: random smooth, "
                                                "and agent with --checkpoint)")
    g.add_argument("--checkpoint", help="a trained agent's checkpoint.pt whose exploring policy joins the mix")
    g.add_argument("--smooth-rho", type=float, default=0.95, help="lag-1 autocorrelation of the smooth policy")
    g.add_argument("--smooth-sigma", type=float, default=0.8,
                   help="stationary std of the smooth policy (before clipping)")
    g.add_argument("--action-repeat", type=int, default=2, help="simulator steps per recorded step")
    g.add_argument("--max-steps", type=int, default=0, help="cut episodes at this many steps (0: the task's limit)")


def _training_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--data", help="a recorded dataset (or any replay directory) to train on")
    g.add_argument("--heldout-data", help="held-out episodes (default: <data>/heldout)")
    g.add_argument("--encoder", default="patch2", metavar="LABEL",
                   help="image encoder: cnn, or patch<k> for the patch encoder with tubelets of k frames")
    g.add_argument("--equal-flops", action=argparse.BooleanOptionalAction, default=True,
                   help="set a patch encoder's width so its FLOPs per frame match the CNN's")
    g.add_argument("--preset", default="cpu", help="agent config preset")
    g.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. world_model.rssm.deter=512")
    g.add_argument("--obs", choices=["pixels", "state", "both"], default="pixels", help="what the model sees")
    g.add_argument("--updates", type=int, default=5000, help="world-model updates")
    g.add_argument("--batch-size", type=int, default=16, help="B")
    g.add_argument("--batch-length", type=int, default=64, help="T")
    g.add_argument("--train-episodes", type=int, default=0, help="train on the first N chunk files only (0: all)")
    g.add_argument("--run-dir", help="checkpoint and config directory (default: --out without .json)")
    g.add_argument("--checkpoint-every", type=int, default=250, help="updates between checkpoints")
    g.add_argument("--log-every", type=int, default=50, help="updates per point of the loss curve in the results")
    g.add_argument("--fresh", action="store_true", help="start over instead of resuming the run directory")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _evaluation_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--context", type=int, default=5, help="observed steps before open-loop imagination")
    g.add_argument("--horizon", type=int, default=100, help="imagined steps")
    g.add_argument("--starts", type=int, default=5, help="open-loop windows per held-out episode")
    g.add_argument("--probe-episodes", type=int, default=12, help="training episodes the probes are fitted on")
    g.add_argument("--probe-pca", type=int, default=240,
                   help="also probe the embedding's first N principal components (the same size for every encoder)")
    g.add_argument("--eval-episodes", type=int, default=0, help="held-out episodes to use (0: all)")
    g.add_argument("--latent", choices=["sample", "mode"], default="sample", help="posterior latents sampled or mode")
    g.add_argument("--chunk", type=int, default=16, help="open-loop windows per forward pass (memory)")


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    return common.exit_status(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    if args.record:
        if not args.out:
            raise ValueError("--record needs --out, the dataset directory.")
        record(args)
    elif args.flops:
        table = flops_table(args.preset, args.set, list(args.encoders), args.equal_flops, args.batch_length)
        print(flops_markdown(table))
        if args.out:
            write_json(args.out, {"benchmark": "world_model/encoders", "preset": args.preset, "set": args.set,
                                  "equal_flops": args.equal_flops, "encoders": table, "machine": machine_info()})
            print(f"wrote {args.out}")
    elif args.grid or args.report_only:
        args.out = args.out or "results/world_model.json"
        if args.grid:
            return run_grid(args)
        payload = read_json(args.out)
        if payload is None:
            raise ValueError(f"no results file {args.out} to report from; --grid writes it.")
        write_report(payload, Path(args.out))
    else:
        if not args.data or not args.out:
            raise ValueError("a run needs --data (a dataset or replay directory) and --out (its results JSON).")
        run_trial(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
