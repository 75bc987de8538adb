"""What a trained world model knows: open-loop prediction error vs horizon, physics probes, videos.

    python -m benchmarks.insight --checkpoint runs/a/checkpoint.pt runs/b/checkpoint.pt --label patch cnn \\
        --out runs/insight

For each checkpoint: held-out episodes in its env (``--policy``), with the simulator's true ``qpos``/``qvel``
for MuJoCo tasks. Open loop: on ``--starts`` windows per episode the model observes ``--context`` steps and
imagines ``--horizon`` more from the true actions; per horizon, image/state/reward errors and KL(posterior ||
imagined prior), each against ``copy`` (the last observed step, which a model should beat) and ``posterior``
(decoding the posterior: the reconstruction floor). Probes (``benchmarks.probes``): ridge maps from the
posterior latent (``deter``, ``stoch``, ``both``) to each joint's position and velocity (cos/sin of angles that
wind), fitted on the first episodes, scored (R^2) on the others, then applied to imagined latents at
``--probe-horizons``. Heads: the reward head and the critic on the posterior latents against the true reward
and the discounted return-to-go, decoded as the agent does and in raw space. Video: real, model and error
frames of a few windows (green bar: observed, red: imagined).

Outputs in ``--out``: ``insight.json``, ``horizon.png``, ``probes.png``, ``openloop_<label>.gif`` (``.mp4``
with imageio-ffmpeg) and TensorBoard runs (``--tensorboard``; scalars ``openloop/<metric>`` and
``probe/<features>/<quantity>`` with the horizon as the step, the video, the figures in ``compare``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import exit_status, fmt, machine_info, markdown_table, panels, parser, save_figure, write_json
from .probes import fit_by_episode, named, r2_score
from .wm_data import agent_policy, uniform_policy

FEATURE_SETS = ("deter", "stoch", "both")
METRICS = ("image_mse", "state_mse", "state_mse_symlog", "reward_abs", "kl")  # per-horizon curves
Episode = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------- episodes


def collect_episodes(agent: Any, env: Any, keys: list[str], episodes: int, seed: int, policy: str = "sample",
                     max_steps: int = 0) -> list[Episode]:
    """``episodes`` episodes (env seeds seed, seed+1, ...) of ``policy``: ``sample`` (the exploring policy),
    ``mode`` (the deterministic one) or ``random`` (uniform actions, the same for every checkpoint); cut at
    ``max_steps`` when > 0. Each is (T, ...) arrays in the replay's convention (row t: obs_t, the reward
    arriving at it, the action chosen at it): the observation keys, action (one-hot for Discrete), reward,
    is_first, is_last, is_terminal and, for MuJoCo tasks, qpos and qvel at obs_t; it ends before a step
    whose simulation diverged."""
    if policy not in ("sample", "mode", "random"):
        raise ValueError(f"policy must be sample, mode or random, got {policy!r}.")
    rng, space = np.random.default_rng(seed), env.action_space
    if policy != "random":
        choose = agent_policy(agent, keys, explore=policy == "sample")
    elif hasattr(space, "n"):  # one-hot actions
        choose = lambda obs, is_first: np.eye(space.n, dtype=np.float32)[rng.integers(space.n)][None]  # noqa: E731
    else:
        choose = uniform_policy(space.shape, rng)
    return [record_episode(env, keys, choose, seed + i, max_steps) for i in range(episodes)]


def record_episode(env: Any, keys: list[str], policy: Any, seed: int, max_steps: int = 0) -> Episode:
    """One episode of ``env`` (reset with ``seed``) acted on by ``policy`` (obs (1, ...), is_first (1,) ->
    action (1, A)), recorded step by step as ``collect_episodes`` describes."""
    import envs
    from agent.rollout import Rollout

    discrete = hasattr(env.action_space, "n")
    with_sim = envs.has_sim_state(env)
    # A one-env vector view of ``env`` itself, so the simulator read below is the one being stepped.
    vec = envs.vector_env([lambda: env])
    rollout = Rollout(vec, seed, lambda action: action.argmax(-1) if discrete else action)
    names = [*keys, "action", "reward", "is_first", "is_last", "is_terminal"]
    rows: dict[str, list] = {k: [] for k in names + ["qpos", "qvel"] * with_sim}
    while True:
        record = rollout.act(policy)
        for k in names:
            rows[k].append(record[k][0])
        if with_sim:
            sim = envs.sim_state(env)
            rows["qpos"].append(sim["qpos"])
            rows["qvel"].append(sim["qvel"])
        if record["is_last"][0] or (max_steps and len(rows["reward"]) >= max_steps):
            break
        outcome = rollout.advance()
        if outcome.info.get("_simulator_failure", [False])[0]:  # diverged: its state no longer matches obs
            break
    return {k: np.stack(v) for k, v in rows.items()}


def window_starts(length: int, context: int, horizon: int, starts: int) -> list[int]:
    """Up to ``starts`` evenly spaced first steps of windows of context + horizon steps in an episode."""
    last = length - (context + horizon)
    if last < 0 or starts < 1:
        return []
    return sorted({int(s) for s in np.linspace(0, last, min(starts, last + 1)).round()})


def make_windows(episodes: list[Episode], context: int, horizon: int, starts: int
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All windows as one batch of (N, context + horizon, ...) arrays, and their (episode, first step)
    pairs (N, 2). A window that starts mid-episode has no ``is_first``, like a replayed training window."""
    index = [(e, s) for e, ep in enumerate(episodes) for s in window_starts(len(ep["reward"]), context, horizon,
                                                                           starts)]
    if not index:
        lengths = sorted({len(ep["reward"]) for ep in episodes})
        raise ValueError(f"no episode is long enough for context {context} + horizon {horizon} steps "
                         f"(episode lengths {lengths}); lower --horizon or --context.")
    T = context + horizon
    keys = [k for k in episodes[0] if k not in ("qpos", "qvel")]
    batch = {k: np.stack([episodes[e][k][s : s + T] for e, s in index]) for k in keys}
    return batch, np.array(index)


# --------------------------------------------------------------------------------------------- open loop


def _prediction_errors(pred: dict, recon: dict, data: dict, context: int, frames: bool) -> dict:
    """Per step after ``context`` (N, H): the imagined predictions' errors, and those of copying the last
    observed step and of decoding the posterior; with ``frames`` the model's video (see `openloop_windows`)."""
    import torch

    from agent.math_utils import symlog

    def errors(key: str, truth: Any, **metrics: Any) -> dict:
        """``<metric>``, ``<metric>_copy`` and ``<metric>_posterior``: ``metric(guess, truth)`` after ``context``."""
        future = truth[:, context:]
        guesses = {"": pred[key], "_copy": truth[:, context - 1 : context], "_posterior": recon[key][:, context:]}
        return {f"{name}{suffix}": metric(guess, future) for suffix, guess in guesses.items()
                for name, metric in metrics.items()}

    out = errors("reward", data["reward"], reward_abs=lambda p, y: (p - y).abs())
    if "image" in pred:
        out.update(errors("image", data["image"].float() / 255.0,  # (N, T, h, w, 3)
                          image_mse=lambda p, y: (p - y).square().mean((-3, -2, -1))))
        if frames:
            video = torch.cat([recon["image"][:, :context], pred["image"]], 1)  # (N, T, h, w, 3)
            out["model_frames"] = (video * 255).round().clamp(0, 255).to(torch.uint8)
    if "state" in pred:
        out.update(errors("state", data["state"], state_mse=lambda p, y: (p - y).square().mean(-1),
                          state_mse_symlog=lambda p, y: (symlog(p) - symlog(y)).square().mean(-1)))
    return out


def openloop_windows(wm: Any, batch: dict[str, np.ndarray], context: int, sample: bool = True,
                     keep: tuple[int, ...] = (), frames: bool = False) -> dict[str, np.ndarray]:
    """Observe the first ``context`` steps of each window, imagine the rest with the true actions.

    batch: (N, T, ...) numpy arrays as ``make_windows`` builds them (image uint8, state, action, reward,
    is_first); H = T - context. Returns numpy arrays:
      per horizon (N, H), h = 1..H at index h-1: ``kl`` (posterior of the same window || imagined prior,
      summed over groups), ``reward_abs``; with images ``image_mse`` (per pixel, [0, 1] units); with
      states ``state_mse`` (raw units) and ``state_mse_symlog``; each error also as ``<name>_copy`` (the
      last observed step as the prediction) and ``<name>_posterior`` (decoding the posterior there);
      ``deter`` (N, len(keep), D) and ``stoch`` (N, len(keep), S*K): the imagined latent at the horizons
      in ``keep`` (0 = the posterior the imagination starts from);
      with ``frames``: ``model_frames`` (N, T, H, W, 3) uint8, posterior reconstructions for the context
      and imagined frames after it.
    """
    import torch

    from agent.math_utils import categorical_kl

    N, T = batch["is_first"].shape
    H = T - context
    assert 0 < context < T, f"context must be in 1..{T - 1}, got {context}"
    assert all(0 <= h <= H for h in keep), f"keep horizons {keep} must lie in 0..{H}"
    data = to_torch(wm, batch)
    rssm = wm.rssm
    with torch.no_grad():
        # One pass over the whole window: its posterior at context-1 is the imagination's start (the
        # observe loop is causal), and its later steps are what the imagined prior is compared with.
        posterior, _, _ = wm.observe(data, None, sample)  # (N, T, ...)
        start = {"deter": posterior["deter"][:, context - 1], "stoch": posterior["stoch"][:, context - 1]}
        actions = data["action"][:, context - 1 : T - 1]  # (N, H, A): action_{t-1} leads to step t
        imagined = rssm.imagine_with_actions(start, actions, sample)  # deter (H+1, N, D), logits (H, N, S, K)
        deter = imagined["deter"].transpose(0, 1)  # (N, H+1, D)
        stoch = imagined["stoch"].transpose(0, 1)  # (N, H+1, S, K)
        prior_logits = imagined["logits"].transpose(0, 1)  # (N, H, S, K)
        kl = categorical_kl(posterior["logits"][:, context:], prior_logits).sum(-1)  # (N, H)
        pred = wm.decode(rssm.features({"deter": deter[:, 1:], "stoch": stoch[:, 1:]}))  # (N, H, ...)
        recon = wm.decode(rssm.features(posterior))  # (N, T, ...)

        out = {"kl": kl, **_prediction_errors(pred, recon, data, context, frames)}
        out["deter"] = deter[:, list(keep)]  # (N, len(keep), D)
        out["stoch"] = stoch[:, list(keep)].flatten(2)  # (N, len(keep), S*K)
    return {k: v.float().cpu().numpy() if v.dtype != torch.uint8 else v.cpu().numpy() for k, v in out.items()}


def openloop_in_chunks(wm: Any, batch: dict[str, np.ndarray], context: int, sample: bool, keep: tuple[int, ...],
                       chunk: int) -> dict[str, np.ndarray]:
    """``openloop_windows`` over ``chunk`` windows at a time (bounded memory), concatenated along N."""
    N = len(batch["is_first"])
    parts = [openloop_windows(wm, {k: v[i : i + chunk] for k, v in batch.items()}, context, sample, keep)
             for i in range(0, N, chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def horizon_curves(results: dict[str, np.ndarray]) -> dict[str, dict[str, list[float]]]:
    """Mean and standard error over windows per horizon: {metric[_copy|_posterior]: {mean, sem}} (H,)."""
    curves = {}
    for key, value in results.items():
        if key.split("_copy")[0].split("_posterior")[0] in METRICS:
            n = value.shape[0]
            sem = value.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(value.shape[1])
            curves[key] = {"mean": value.mean(0).tolist(), "sem": sem.tolist()}
    return curves


# --------------------------------------------------------------------------------------------- probes


def probe_targets(episode: Episode, names: dict[str, list[str]], winding: list[str]) -> np.ndarray:
    """The probed quantities (T, Q) of an episode, in the order of ``target_names``."""
    columns = [episode["qpos"], episode["qvel"]]
    for name in winding:
        angle = episode["qpos"][:, names["qpos"].index(name)]
        columns += [np.cos(angle)[:, None], np.sin(angle)[:, None]]
    return np.concatenate(columns, 1)


def target_names(names: dict[str, list[str]], winding: list[str]) -> list[str]:
    """qpos names, qvel names, then cos(...) and sin(...) of every angle that can wind."""
    return [*names["qpos"], *names["qvel"], *[f"{f}({n})" for n in winding for f in ("cos", "sin")]]


def to_torch(wm: Any, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """The arrays of ``batch`` that the world model reads, on its device, with the dtypes it expects."""
    import torch

    keys = ["action", "reward", "is_first", "is_terminal", *["image"] * wm.has_image, *["state"] * wm.has_state]
    out = {k: torch.as_tensor(batch[k], device=wm.device) for k in keys if k in batch}
    return {k: v.float() if k in ("action", "reward", "state") else v for k, v in out.items()}


def episode_latents(wm: Any, episode: Episode, sample: bool, embed: bool = False) -> dict[str, np.ndarray]:
    """The posterior latent of a whole episode, filtered from its first step: deter (T, D), stoch (T, S*K); with
    ``embed`` also the encoder's embedding (T, E) and, with images, the reconstruction's MSE per pixel (T,)."""
    import torch

    data = to_torch(wm, {k: v[None] for k, v in episode.items()})  # (1, T, ...)
    with torch.no_grad():
        posterior, _, _ = wm.observe(data, None, sample)
        out = {"deter": posterior["deter"][0], "stoch": posterior["stoch"][0].flatten(1)}
        if embed:
            out["embed"] = wm.embed(wm.preprocess(data), data["is_first"])[0]  # (T, E)
        if embed and wm.has_image:
            recon = wm.decode(wm.rssm.features(posterior))["image"][0]  # (T, H, W, C) in [0, 1]
            out["recon_mse"] = (recon - data["image"][0].float() / 255.0).square().mean((-3, -2, -1))
    return {k: v.float().cpu().numpy() for k, v in out.items()}


def return_to_go(reward: np.ndarray, discount: float) -> np.ndarray:
    """G_t = sum_k discount^k reward[t+1+k] (T,) of one episode's rewards (row t: the reward arriving at step t),
    what the critic at step t estimates; cut at the episode's end (no bootstrap)."""
    out, ret = np.zeros(len(reward)), 0.0
    for t in range(len(reward) - 2, -1, -1):
        ret = reward[t + 1] + discount * ret
        out[t] = ret
    return out


def heads(agent: Any, episodes: list[Episode], sample: bool) -> dict[str, Any]:
    """The reward head and the critic on the episodes' posterior latents, each decoded two ways: ``ours``
    (symexp of the expected symlog bin: what the agent uses) and ``raw`` (the expected symexp of the bins:
    DreamerV3's current decoding, which a spread distribution does not bias). reward: means over the steps
    with a non-zero reward and over the others, against the true one; value: means against the discounted
    return-to-go (cut at the episode's end, so short of the critic's infinite horizon near it)."""
    import torch

    from agent.math_utils import symexp

    wm, ac = agent.wm, agent.ac
    reward, rtg, pred = [], [], {"reward": [], "value": []}
    for episode in episodes:
        latent = episode_latents(wm, episode, sample)
        feat = torch.as_tensor(features(latent, "both"), device=wm.device)
        with torch.no_grad():
            for name, logits, bins in [("reward", wm.reward(feat), wm.bins), ("value", ac.critic(feat), ac.bins)]:
                probs = torch.softmax(logits.float(), -1)
                pred[name].append(torch.stack([symexp(probs @ bins), probs @ symexp(bins)], -1).cpu().numpy())
        reward.append(episode["reward"].astype(np.float64))
        rtg.append(return_to_go(reward[-1], agent.cfg.actor_critic.discount))
    reward, rtg = np.concatenate(reward), np.concatenate(rtg)
    rew, val = np.concatenate(pred["reward"]), np.concatenate(pred["value"])  # (steps, 2): ours, raw

    def means(mask: np.ndarray, truth: np.ndarray, guess: np.ndarray, true_name: str) -> dict[str, Any]:
        if not mask.any():
            return {"steps": 0}
        return {"steps": int(mask.sum()), true_name: float(truth[mask].mean()),
                "ours": float(guess[mask, 0].mean()), "raw": float(guess[mask, 1].mean())}

    rewarded = reward != 0
    return {"reward": {"rewarded": means(rewarded, reward, rew, "true"),
                       "unrewarded": means(~rewarded, reward, rew, "true")},
            "value": means(np.ones_like(rewarded), rtg, val, "return_to_go"),
            "discount": agent.cfg.actor_critic.discount}


def features(latent: dict[str, np.ndarray], which: str) -> np.ndarray:
    """deter, stoch, or both concatenated (the model's own features), along the last axis."""
    return latent[which] if which != "both" else np.concatenate([latent["deter"], latent["stoch"]], -1)


def physics_probes(wm: Any, episodes: list[Episode], quantities: list[str], targets: list[np.ndarray],
                   openloop: dict[str, np.ndarray], index: np.ndarray, context: int, keep: tuple[int, ...],
                   train_fraction: float, sample: bool) -> dict[str, Any]:
    """Fit probes on the posterior latents of the first episodes and score them on the rest, then on
    imagined latents of the held-out episodes' windows at the horizons in ``keep``.

    targets: per episode (T, Q); openloop: ``openloop_windows`` output over the windows in ``index``
    (N, 2) of (episode, first step). R^2 on posterior latents is the usual one over all steps of the
    test episodes; on imagined latents it is 1 - MSE / (the quantity's variance over all the steps the
    imagination covers in the test windows), one yardstick for every horizon. NaN (JSON null) where a
    quantity never changes.
    """
    if len(episodes) < 2:
        raise ValueError("probes need at least 2 episodes (one to fit, one to test); raise --episodes.")
    n_train = max(1, min(len(episodes) - 1, round(train_fraction * len(episodes))))
    latents = [episode_latents(wm, ep, sample) for ep in episodes]
    Y_train, Y_test = np.concatenate(targets[:n_train]), np.concatenate(targets[n_train:])
    test_windows = index[:, 0] >= n_train
    report: dict[str, Any] = {"quantities": quantities, "train_episodes": n_train,
                              "test_episodes": len(episodes) - n_train, "train_samples": len(Y_train),
                              "test_samples": len(Y_test), "test_windows": int(test_windows.sum()),
                              "r2": "posterior: 1 - MSE / variance over the test episodes; imagined and copy: "
                                    "1 - MSE / variance over all imagined steps (h = 0..max) of the test windows",
                              "alpha": {}, "posterior_r2": {}, "imagined_r2": {}, "copy_r2": {}}
    # One yardstick for every horizon: the variance over all steps the imagination covers (horizons 0 to
    # the last in keep) of the test windows. A horizon's own few dozen steps would make a noisy one.
    span = np.arange(max(keep) + 1)
    yardstick = (np.concatenate([targets[e][s + context - 1 + span] for e, s in index[test_windows]])
                 if test_windows.any() else None)
    for which in FEATURE_SETS:
        probe = fit_by_episode([features(z, which) for z in latents[:n_train]], targets[:n_train])
        X_test = np.concatenate([features(z, which) for z in latents[n_train:]])
        report["alpha"][which] = dict(zip(quantities, probe.alpha.tolist()))
        report["posterior_r2"][which] = named(quantities, r2_score(Y_test, probe.predict(X_test)))
        report["imagined_r2"][which], report["copy_r2"][which] = {}, {}
        if not test_windows.any():
            continue
        imagined = {k: openloop[k][test_windows] for k in ("deter", "stoch")}  # (M, len(keep), ...)
        start_prediction = probe.predict(features({k: v[:, 0] for k, v in imagined.items()}, which))
        for j, h in enumerate(keep):
            truth = np.stack([targets[e][s + context - 1 + h] for e, s in index[test_windows]])  # (M, Q)
            prediction = probe.predict(features({k: v[:, j] for k, v in imagined.items()}, which))
            report["imagined_r2"][which][str(h)] = named(quantities, r2_score(truth, prediction, yardstick))
            report["copy_r2"][which][str(h)] = named(quantities, r2_score(truth, start_prediction, yardstick))
    return report


# --------------------------------------------------------------------------------------------- video


def openloop_video(real: np.ndarray, model: np.ndarray, context: int) -> np.ndarray:
    """A (T, 3h + 4, N*w, 3) uint8 video from real and model frames (N, T, h, w, 3): per window a column
    of real, model and |error| (x3, clipped) frames, windows side by side; a 4-pixel bar on top is green
    while the model observes and red while it imagines."""
    N, T, h, w, _ = real.shape
    error = np.clip(np.abs(real.astype(np.int16) - model.astype(np.int16)) * 3, 0, 255).astype(np.uint8)
    bar = np.zeros((N, T, 4, w, 3), np.uint8)
    bar[:, :context] = (0, 200, 0)
    bar[:, context:] = (220, 0, 0)
    panel = np.concatenate([bar, real, model, error], 2)  # (N, T, 3h+4, w, 3)
    return np.concatenate(list(panel), 2)  # (T, 3h+4, N*w, 3)


def check_video_format(fmt: str) -> None:
    """Fail before any work when ``fmt`` cannot be written here (mp4 needs imageio-ffmpeg or PyAV)."""
    if fmt == "gif":
        return
    import tempfile

    from agent.cli import write_video

    with tempfile.TemporaryDirectory() as tmp:
        try:
            write_video(str(Path(tmp) / f"probe.{fmt}"), np.zeros((2, 16, 16, 3), np.uint8))
        except ValueError as error:
            raise ValueError(f"--video-format {fmt} cannot be written here: imageio has no {fmt} backend "
                             "(pip install imageio-ffmpeg, or PyAV); --video-format gif always works.") from error


# --------------------------------------------------------------------------------------------- plots


def plot_horizons(runs: list[dict[str, Any]], path: Path) -> Any:
    """Error vs horizon for every checkpoint on one figure (one panel per metric); saved to ``path``."""
    titles = {"image_mse": "image MSE per pixel ([0, 1])", "state_mse": "state MSE (raw units)",
              "state_mse_symlog": "state MSE (symlog units)", "reward_abs": "reward |error|",
              "kl": "KL(posterior || imagined prior) [nats]"}
    metrics = [m for m in METRICS if any(m in r["horizon"] for r in runs)]
    fig, axes = panels(len(metrics), min(3, len(metrics)), 4.6, 3.4)
    for ax, metric in zip(axes, metrics):
        for i, run in enumerate(runs):
            color = f"C{i}"
            for suffix, style in [("", "-"), ("_copy", "--"), ("_posterior", ":")]:
                curve = run["horizon"].get(metric + suffix)
                if curve is None:
                    continue
                mean, sem = np.array(curve["mean"]), np.array(curve["sem"])
                x = np.arange(1, len(mean) + 1)
                ax.plot(x, mean, style, color=color, label=None if suffix else run["label"], linewidth=1.4)
                if not suffix:
                    ax.fill_between(x, mean - sem, mean + sem, color=color, alpha=0.2, linewidth=0)
        ax.set_title(titles[metric], fontsize=9)
        ax.set_xlabel("horizon (imagined steps)")
        ax.legend(fontsize=7)
    fig.suptitle(f"open-loop prediction after {runs[0]['context']} observed steps: model (solid, +-1 s.e.), "
                 "copy the last observed step (dashed), decode the posterior (dotted)", fontsize=9)
    return save_figure(fig, path, close=False)


def plot_probes(runs: list[dict[str, Any]], path: Path) -> Any | None:
    """Per checkpoint with probes: R^2 per quantity and feature set on held-out posterior latents (bars),
    and R^2 of the ``both`` probes on imagined latents vs horizon (lines). None when no run has probes."""
    runs = [r for r in runs if r.get("probes")]
    if not runs:
        return None
    fig, axes = panels(2 * len(runs), 2, 5.5, 3.4)
    for bars, lines, run in zip(axes[::2], axes[1::2], runs):
        p = run["probes"]
        q = p["quantities"]
        x = np.arange(len(q))
        for j, which in enumerate(FEATURE_SETS):
            r2 = [_nan(p["posterior_r2"][which][n]) for n in q]
            bars.bar(x + (j - 1) * 0.27, np.clip(r2, -0.5, None), 0.27, label=which)
        bars.set_xticks(x, q, rotation=40, ha="right", fontsize=7)
        bars.set_ylim(-0.5, 1.05)
        bars.axhline(0, color="black", linewidth=0.5)
        bars.set_ylabel("held-out R^2")
        bars.set_title(f"{run['label']}: probes on posterior latents", fontsize=9)
        bars.legend(fontsize=7)
        horizons = sorted(int(h) for h in p["imagined_r2"]["both"])
        for k, n in enumerate(q):
            r2 = [_nan(p["imagined_r2"]["both"][str(h)][n]) for h in horizons]
            lines.plot(horizons, np.clip(r2, -0.5, None), "o-", color=f"C{k % 10}", label=n, markersize=3)
        if horizons:
            lines.set_xscale("symlog", linthresh=1)
            lines.set_xticks(horizons, [str(h) for h in horizons])
        lines.set_ylim(-0.5, 1.05)
        lines.axhline(0, color="black", linewidth=0.5)
        lines.set_xlabel("horizon (imagined steps; 0 = start of imagination)")
        lines.set_ylabel("R^2 (clipped at -0.5)")
        lines.set_title(f"{run['label']}: the same probes ('both') on imagined latents", fontsize=9)
        lines.legend(fontsize=6, ncol=2)
    return save_figure(fig, path, close=False)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


# --------------------------------------------------------------------------------------------- one checkpoint


def analyse(path: str, label: str, args: argparse.Namespace) -> tuple[dict[str, Any], np.ndarray | None]:
    """Everything for one checkpoint: (its results for the JSON, its video or None)."""
    import torch

    import envs
    from agent.checkpoint import agent_for_env

    # envs.make itself, not a vector env, so that the simulator's state can be read after every step
    agent, cfg, env, keys = agent_for_env(
        path, lambda cfg: envs.make(cfg.env.spec, seed=args.seed, **cfg.env.make_kwargs()), args.env, args.device)
    torch.manual_seed(args.seed)
    agent.wm.generator.manual_seed(args.seed)
    t0 = time.perf_counter()
    with contextlib.closing(env):
        episodes = collect_episodes(agent, env, keys, args.episodes, args.seed, args.policy, args.max_steps)
        sim = envs.has_sim_state(env)
        names = envs.sim_state_names(env) if sim else None
        winding = envs.unlimited_hinges(env) if sim else []
    collect_s = time.perf_counter() - t0
    sample = args.latent == "sample"
    batch, index = make_windows(episodes, args.context, args.horizon, args.starts)
    keep = (0, *args.probe_horizons)
    t0 = time.perf_counter()
    results = openloop_in_chunks(agent.wm, batch, args.context, sample, keep, args.chunk)
    wm_cfg = cfg.agent.world_model
    run: dict[str, Any] = {
        "label": label, "checkpoint": str(path), "env": cfg.env.spec, "obs": keys,
        "encoder": wm_cfg.encoder.kind if "image" in keys else "mlp",
        "rssm": {"deter": wm_cfg.rssm.deter, "stoch": wm_cfg.rssm.stoch, "classes": wm_cfg.rssm.classes},
        "params": agent.wm.param_counts()["total"], "policy": args.policy, "latent": args.latent,
        "context": args.context, "horizon_steps": args.horizon,
        "episodes": {"count": len(episodes), "lengths": [len(e["reward"]) for e in episodes],
                     "returns": [float(e["reward"].sum()) for e in episodes], "seed": args.seed},
        "windows": len(index), "horizon": horizon_curves(results), "probes": None,
        "probes_skipped": (f"{cfg.env.spec} has no MuJoCo simulator state" if not sim else
                           "probes need at least 2 episodes" if len(episodes) < 2 else None),
    }
    if run["probes_skipped"] is None:
        quantities = target_names(names, winding)
        targets = [probe_targets(e, names, winding) for e in episodes]
        run["probes"] = physics_probes(agent.wm, episodes, quantities, targets, results, index, args.context,
                                       keep, args.probe_train, sample)
    run["heads"] = heads(agent, episodes, sample)
    video = None
    if "image" in keys and args.video_sequences > 0:
        pick = np.unique(np.linspace(0, len(index) - 1, min(args.video_sequences, len(index))).round().astype(int))
        small = {k: v[pick] for k, v in batch.items()}
        model = openloop_windows(agent.wm, small, args.context, sample, frames=True)["model_frames"]
        video = openloop_video(small["image"], model, args.context)
    run["seconds"] = {"collect": collect_s, "analyse": time.perf_counter() - t0}
    return run, video


def _labels(paths: list[str], labels: list[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(paths):
            raise ValueError(f"--label needs one label per checkpoint: {len(paths)} checkpoints, {len(labels)} labels.")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must differ, got {labels}.")
        return labels
    base = [Path(p).parent.name or Path(p).stem for p in paths]
    return base if len(set(base)) == len(base) else [f"{b}_{i}" for i, b in enumerate(base)]


def log_tensorboard(root: Path, runs: list[dict[str, Any]], videos: dict[str, np.ndarray],
                    figures: list[tuple[str, Any]], fps: int) -> None:
    """Under ``root``: one TensorBoard run per checkpoint (curves with the horizon as the step, probe R^2,
    the video) and the figures in ``compare``."""
    from agent.logger import Logger

    for run in runs:
        logger = Logger(root / run["label"])
        for key, curve in run["horizon"].items():
            for h, value in enumerate(curve["mean"], 1):
                logger.scalars({f"openloop/{key}": value}, h)
        if run["probes"]:
            p = run["probes"]
            for which in FEATURE_SETS:
                for h, values in p["imagined_r2"][which].items():
                    logger.scalars({f"probe/{which}/{q}": v for q, v in values.items() if v is not None}, int(h))
            logger.text("probe/posterior_r2", probe_table(p))
        if run["label"] in videos:
            logger.video("insight/openloop", videos[run["label"]], 0, fps)
        logger.close()
    compare = Logger(root / "compare")
    for name, fig in figures:
        compare.writer.add_figure(f"insight/{name}", fig, 0)
    compare.close()


def probe_table(p: dict[str, Any]) -> str:
    """Markdown table: held-out R^2 per quantity for each feature set, and imagined R^2 ('both')."""
    horizons = list(p["imagined_r2"]["both"])
    header = ["quantity", *[f"{w}" for w in FEATURE_SETS], *[f"imagined h={h}" for h in horizons]]
    rows = []
    for q in p["quantities"]:
        cells = [p["posterior_r2"][w][q] for w in FEATURE_SETS] + [p["imagined_r2"]["both"][h][q] for h in horizons]
        rows.append([q, *map(fmt, cells)])
    return markdown_table(header, rows)


# --------------------------------------------------------------------------------------------- main


def arguments() -> argparse.ArgumentParser:
    p = parser(__doc__, prog="python -m benchmarks.insight")
    p.add_argument("--checkpoint", nargs="+", required=True, help="one or more checkpoint.pt files to compare")
    p.add_argument("--label", nargs="+", help="a label per checkpoint (default: the run directory's name)")
    p.add_argument("--env", help="env spec (default: each checkpoint's own); the spaces must match")
    p.add_argument("--out", default="runs/insight", help="directory for JSON, PNGs, videos and TensorBoard")
    p.add_argument("--episodes", type=int, default=8, help="held-out episodes per checkpoint")
    p.add_argument("--max-steps", type=int, default=0, help="cut episodes at this many agent steps (0: full)")
    p.add_argument("--policy", choices=["sample", "mode", "random"], default="sample",
                   help="who acts: the exploring policy, the deterministic one, or uniform random actions")
    p.add_argument("--context", type=int, default=5, help="c: observed steps before imagining")
    p.add_argument("--horizon", type=int, default=100, help="H: imagined steps")
    p.add_argument("--starts", type=int, default=10, help="start points (windows) per episode")
    p.add_argument("--probe-horizons", type=int, nargs="*", default=[1, 5, 15, 50],
                   help="horizons at which probes read imagined latents")
    p.add_argument("--probe-train", type=float, default=0.5, help="fraction of episodes the probes are fitted on")
    p.add_argument("--latent", choices=["sample", "mode"], default="sample",
                   help="sample the categorical latents (as imagination in training does) or take their mode")
    p.add_argument("--video-sequences", type=int, default=4, help="windows in the video (0: no video)")
    p.add_argument("--video-format", choices=["gif", "mp4"], default="gif", help="mp4 needs imageio-ffmpeg")
    p.add_argument("--fps", type=int, default=10, help="frames per second of the video")
    p.add_argument("--chunk", type=int, default=16, help="windows per forward pass (memory)")
    p.add_argument("--seed", type=int, default=54321, help="seed of the episodes and the latent samples")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", help="torch device (default: the checkpoint's own, or cpu when it needs absent CUDA)")
    p.add_argument("--tensorboard", help="directory of the TensorBoard runs (default: <out>/tensorboard)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every argument problem as one ValueError, before any work starts."""
    for name in ("episodes", "context", "horizon", "starts", "chunk", "fps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    bad = [h for h in args.probe_horizons if not 1 <= h <= args.horizon]
    if bad:
        raise ValueError(f"--probe-horizons {bad} must lie in 1..--horizon ({args.horizon}).")
    if not 0 < args.probe_train < 1:
        raise ValueError(f"--probe-train must be in (0, 1), got {args.probe_train}.")
    args.probe_horizons = sorted(set(args.probe_horizons))
    check_video_format(args.video_format)


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    return exit_status(lambda: _main(args))  # bad arguments, checkpoint or env: one clear line, no traceback


def _main(args: argparse.Namespace) -> None:
    import torch

    from agent.cli import write_video

    check_args(args)
    labels = _labels(args.checkpoint, args.label)
    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs, videos = [], {}
    for path, label in zip(args.checkpoint, labels):
        print(f"{label}: {path}", flush=True)
        run, video = analyse(path, label, args)
        runs.append(run)
        summary(run)
        if video is not None:
            videos[label] = video
            write_video(str(out / f"openloop_{label}.{args.video_format}"), video, fps=args.fps)
    figures = [("horizon", plot_horizons(runs, out / "horizon.png"))]
    probes_fig = plot_probes(runs, out / "probes.png")
    if probes_fig is not None:
        figures.append(("probes", probes_fig))
    write_json(out / "insight.json", {"benchmark": "insight", "machine": machine_info(), "args": vars(args),
                                      "runs": runs})
    tensorboard = Path(args.tensorboard) if args.tensorboard else out / "tensorboard"
    log_tensorboard(tensorboard, runs, videos, figures, args.fps)
    print(f"wrote {out / 'insight.json'}, {out / 'horizon.png'}"
          + (f", {out / 'probes.png'}" if probes_fig is not None else "")
          + "".join(f", {out / f'openloop_{k}.{args.video_format}'}" for k in videos)
          + f" and TensorBoard runs in {tensorboard}")


def summary(run: dict[str, Any]) -> None:
    """A few lines on stdout: errors at a few horizons against copying, and the probes' held-out R^2."""
    H = run["horizon_steps"]
    for metric in METRICS:
        curve = run["horizon"].get(metric)
        if curve is None:
            continue
        picks = sorted({h for h in (1, 5, 15, 50, 100, H) if h <= H})
        copy = run["horizon"].get(metric + "_copy")
        text = "  ".join(f"h={h}: {curve['mean'][h - 1]:.4g}" + (f" (copy {copy['mean'][h - 1]:.4g})" if copy else "")
                         for h in picks)
        print(f"  {metric:17s} {text}")
    if run["probes"]:
        both = run["probes"]["posterior_r2"]["both"]
        print("  probe R^2 (both): " + "  ".join(f"{q} {fmt(v)}" for q, v in both.items()))
    elif run["probes_skipped"]:
        print(f"  probes skipped: {run['probes_skipped']}")


if __name__ == "__main__":
    sys.exit(main())
