"""The training run end to end: real envs, TensorBoard events, checkpoints, resume, CLI errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import envs
from agent.cli import main
from agent.config import RunConfig, apply_overrides, preset
from agent.logger import read_scalars
from agent.loop import Trainer

FAST = ["train.prefill=100", "train.batch_size=4", "train.batch_length=16", "train.train_ratio=16",
        "train.log_every=100", "replay.chunk=64", "replay.capacity=5000", "agent.actor_critic.horizon=5",
        "train.threads=1"]


def train_cli(logdir, *extra, steps=600, env="gym:Pendulum-v1"):
    return main(["train", "--env", env, "--preset", "debug", "--logdir", str(logdir), "--steps", str(steps),
                 "--no-progress", "--set", *FAST, *extra])


def metrics_rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]


@pytest.mark.slow
def test_train_logs_checkpoints_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    extra = ["env.obs=pixels", "train.eval_every=300", "train.eval_episodes=1", "train.video_every=300",
             "train.checkpoint_every=300"]
    assert train_cli(run, *extra) == 0
    assert "final eval return" in capsys.readouterr().out
    scalars = read_scalars(run)
    for tag in ["episode/return", "episode/length", "train/loss/image", "train/loss/reward", "train/loss/dyn",
                "train/loss/actor", "train/loss/critic", "train/grad_norm/encoder", "imagine/return", "fps/env",
                "fps/train", "replay/size", "eval/return", "report/openloop_reward_error"]:
        assert tag in scalars, tag
    assert max(step for step, _ in scalars["episode/return"]) <= 600
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    assert "report/openloop" in acc.Tags()["images"]
    assert acc.Images("report/openloop")[0].encoded_image_string[:3] == b"GIF"
    assert json.loads((run / "config.json").read_text())["env"]["obs"] == "pixels"
    rows = metrics_rows(run)
    logs = [r for r in rows if "fps/env" in r]
    assert logs and all(r["memory/rss_mb"] > 50 and r["memory/peak_rss_mb"] > 50 for r in logs)  # torch alone
    assert all("time/wall_s" in r for r in rows if "eval/return" in r or "fps/env" in r)
    before_resume = max(r["time/wall_s"] for r in rows if "time/wall_s" in r)
    cpu_before = max(r["time/cpu_s"] for r in rows if "time/cpu_s" in r)

    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["counters"]["env_steps"] == 600 and state["replay"]["steps_added"] == 300
    assert state["counters"]["wall_s"] >= before_resume  # the wall time so far, for a resume to count on from
    assert state["counters"]["cpu_s"] >= cpu_before > 0

    assert main(["train", "--logdir", str(run), "--resume", "--steps", "1000", "--no-progress"]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["counters"]["env_steps"] == 1000 and state["replay"]["steps_added"] == 500
    assert state["counters"]["updates"] > 0
    steps = [step for step, _ in read_scalars(run)["fps/env"]]
    assert max(steps) == 1000 and len(steps) == len(set(steps))  # continued, nothing logged twice
    walls = [r["time/wall_s"] for r in metrics_rows(run) if "time/wall_s" in r]
    assert walls == sorted(walls) and walls[-1] > before_resume  # the resumed part counts on from the first
    cpus = [r["time/cpu_s"] for r in metrics_rows(run) if "time/cpu_s" in r]
    assert cpus == sorted(cpus) and cpus[-1] > cpu_before and state["counters"]["cpu_s"] > cpu_before
    starts = [json.loads(line) for line in (run / "starts.jsonl").read_text().splitlines()]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert [s["resume"] for s in starts] == [False, True] and {s["git_commit"] for s in starts} == {head or None}

    # eval: returns printed, a video written
    video = tmp_path / "episode.gif"
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--episodes", "2", "--video", str(video)]) == 0
    out = capsys.readouterr().out
    assert "episode 2: return" in out and "mean return over 2 episodes" in out
    import imageio.v3 as iio

    assert iio.imread(video).shape == (100, 64, 64, 3)  # Pendulum: 200 steps / action repeat 2


@pytest.mark.slow
def test_sigkill_loses_nothing_that_was_checkpointed(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "agent", "train", "--env", "gym:Pendulum-v1", "--preset", "debug",
           "--logdir", str(run), "--steps", "100000", "--no-progress", "--set", *FAST,
           "train.checkpoint_every=200", "train.eval_episodes=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # wait until at least two checkpoints were written
            if (run / "checkpoint.pt").exists() and torch.load(run / "checkpoint.pt", weights_only=False)[
                    "counters"]["env_steps"] >= 400:
                break
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    done = saved["counters"]["env_steps"]
    assert done >= 400, proc.stderr.read().decode()[-2000:]
    assert main(["train", "--logdir", str(run), "--resume", "--steps", str(done + 200), "--no-progress"]) == 0
    final = torch.load(run / "checkpoint.pt", weights_only=False)
    assert final["counters"]["env_steps"] == done + 200
    assert final["replay"]["steps_added"] == saved["replay"]["steps_added"] + 100
    assert final["counters"]["episodes"] >= saved["counters"]["episodes"] + 1


def make_trainer(tmp_path, spec="gym:Pendulum-v1", *overrides):
    cfg = apply_overrides(RunConfig(agent=preset("debug")), [f"env.spec={spec}", *FAST, "train.checkpoint_every=0",
                                                            "train.eval_every=0", *overrides])
    vec = envs.make_vec(spec, 1, seed=0, obs=cfg.env.obs, action_repeat=cfg.env.action_repeat)
    trainer = Trainer(cfg, vec.single_observation_space, vec.single_action_space, tmp_path, progress=False)
    return trainer, vec


def test_same_seed_same_run(tmp_path):
    finals = []
    for name in ("a", "b"):
        trainer, vec = make_trainer(tmp_path / name)
        trainer.collect(vec, 400, seed=0)
        assert trainer.updates > 3
        finals.append({k: v.detach().clone() for k, v in trainer.agent.named_parameters()})
        trainer.close()
        vec.close()
    for name, value in finals[0].items():
        assert torch.equal(value, finals[1][name]), name


def test_simulator_failure_is_counted_and_training_goes_on(tmp_path):
    trainer, vec = make_trainer(tmp_path, "dmc:cartpole-balance", "train.prefill=1000")
    calls = {"n": 0}

    def corrupt():
        calls["n"] += 1
        if calls["n"] == 20:
            vec.envs[0].unwrapped.data.qvel[:] = 1e30

    trainer.collect(vec, 300, seed=0, on_step=corrupt)
    assert trainer.counters["sim_failures"] == 1 and trainer.env_steps == 300
    assert trainer.counters["episodes"] == 1  # the broken episode ended early
    steps = trainer.replay.sample(4, 16)
    assert np.all(np.isfinite(steps["state"]))
    trainer.close()
    vec.close()


def test_bad_config_fails_before_any_work(tmp_path, capsys):
    for override, words in [("train.batchsize=4", ["train.batchsize", "batch_size"]),
                            ("train.batch_size=-1", ["train.batch_size", "positive"]),
                            ("replay.chunk=8", ["replay.chunk", "batch_length"]),
                            ("agent.world_model.rssm.deter=65", ["deter", "blocks"]),
                            ("env.obs=rgb", ["env.obs", "pixels"])]:
        assert main(["train", "--logdir", str(tmp_path / "x"), "--set", override]) == 2
        err = capsys.readouterr().err
        for word in words:
            assert word in err, (override, err)
    assert not (tmp_path / "x").exists()
    assert main(["train", "--logdir", str(tmp_path / "y"), "--preset", "hug"]) == 2
    err = capsys.readouterr().err
    assert "'hug'" in err and "huge" not in err and "12m" in err


def test_bad_and_mismatched_checkpoints_are_clear_errors(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli(run, "train.eval_episodes=0", steps=300) == 0
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--env", "gym:HalfCheetah-v5"]) == 2
    assert "expects" in capsys.readouterr().err
    broken = tmp_path / "broken.pt"
    broken.write_bytes((run / "checkpoint.pt").read_bytes()[:5000])
    assert main(["eval", "--checkpoint", str(broken)]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # A run directory is not silently overwritten.
    assert train_cli(run, steps=300) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_checkpoint_from_before_a_new_config_field_still_resumes(tmp_path, capsys):
    """Config fields added after a run was checkpointed take their defaults; a changed field still refuses."""
    run = tmp_path / "run"
    assert train_cli(run, "train.eval_episodes=0", steps=300) == 0
    path = run / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    del state["config"]["agent"]["actor_critic"]["replay_value"]  # as written by a version without it
    torch.save(state, path)
    config = json.loads((run / "config.json").read_text())
    del config["agent"]["actor_critic"]["replay_value"]
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--logdir", str(run), "--resume", "--steps", "400", "--no-progress"]) == 0
    assert torch.load(path, weights_only=False)["counters"]["env_steps"] == 400
    state = torch.load(path, weights_only=False)
    state["config"]["agent"]["actor_critic"]["entropy"] = 0.5
    torch.save(state, path)
    assert main(["train", "--logdir", str(run), "--resume", "--steps", "500", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "agent.actor_critic.entropy: checkpoint 0.5" in err
