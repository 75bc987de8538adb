"""Data-parallel training with torch.distributed (gloo on the CPU): real processes, real envs.

The workers below run in processes of their own (``torch.multiprocessing.spawn``); each sets the
environment that ``torchrun`` would set and joins the group exactly as ``python -m agent train`` does.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

FAST = ["train.prefill=100", "train.batch_size=4", "train.batch_length=16", "train.train_ratio=16",
        "train.log_every=100", "replay.chunk=64", "replay.capacity=5000", "agent.actor_critic.horizon=5",
        "train.threads=1", "train.checkpoint_every=300", "train.eval_every=300", "train.eval_episodes=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world: int, port: int) -> None:
    """What torchrun does for a worker: the rendezvous in the environment."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_WAIT_POLICY="PASSIVE", MUJOCO_GL="egl")


# --------------------------------------------------------------------------------------------- the helper


def _average_worker(rank: int, port: int) -> None:
    import torch.distributed as dist

    from agent import distributed

    join_group(rank, 2, port)
    distributed.init_from_env("cpu")
    try:
        a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
        a.grad = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)  # rank 0: 1 2 3, rank 1: 2 4 6
        b.grad = torch.ones(3) * 4.0 if rank == 0 else None  # only rank 0 has one: rank 1 counts as zero
        finite = distributed.average_gradients([a, b, c], torch.tensor(1.0))
        assert bool(finite)
        assert torch.equal(a.grad, torch.tensor([1.5, 3.0, 4.5])), a.grad
        assert torch.equal(b.grad, torch.full((3,), 2.0)), b.grad
        assert c.grad is None  # no gradient anywhere stays None
        # A non-finite loss on one rank makes every rank skip the step.
        loss = torch.tensor(float("nan") if rank == 1 else 1.0)
        assert not bool(distributed.average_gradients([a], loss))
        assert distributed.all_true(rank == 0) is False and distributed.all_true(True) is True
        assert torch.equal(distributed.all_gather_flat(torch.full((2,), float(rank))), torch.tensor([0.0, 0, 1, 1]))
        dist.barrier()
    finally:
        distributed.shutdown()


def test_gradients_are_averaged_over_ranks_and_a_bad_loss_anywhere_skips_everywhere():
    mp.spawn(_average_worker, args=(free_port(),), nprocs=2)


def test_one_process_is_untouched():
    from agent import distributed

    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, 2.0])
    assert bool(distributed.average_gradients([p], torch.tensor(3.0)))
    assert torch.equal(p.grad, torch.tensor([1.0, 2.0]))
    assert not bool(distributed.average_gradients([p], torch.tensor(float("inf"))))
    assert (distributed.rank(), distributed.world_size(), distributed.rank_seed(7, 0)) == (0, 1, 7)


# --------------------------------------------------------------------------------------------- training


def _train_worker(rank: int, port: int, argv: list[str], report: str) -> None:
    """``python -m agent train`` as rank ``rank``, checking after every update that both ranks hold the same
    parameters and that they trained on different batches; writes what it saw to ``report``.<rank>."""
    import torch.distributed as dist

    from agent import cli
    from agent.loop import Trainer
    from agent.replay import Replay

    join_group(rank, 2, port)
    seen = {"updates": 0, "max_param_diff": [], "same_batch": [], "restored": None}
    last_batch = {}
    sample, train_once, restore = Replay.sample, Trainer.train_once, Trainer.restore

    def recording_sample(self, batch, length):
        out = sample(self, batch, length)
        last_batch["sum"] = float(out["state"].astype("float64").sum())
        return out

    def checked_train_once(self):
        train_once(self)
        flat = torch.cat([p.detach().reshape(-1) for p in self.agent.parameters()])
        parts = [torch.empty_like(flat) for _ in range(2)]
        dist.all_gather(parts, flat)
        sums = [torch.zeros(1, dtype=torch.float64) for _ in range(2)]
        dist.all_gather(sums, torch.tensor([last_batch["sum"]], dtype=torch.float64))
        seen["updates"] += 1
        seen["max_param_diff"].append(float((parts[0] - parts[1]).abs().max()))
        seen["same_batch"].append(bool(sums[0] == sums[1]))

    def recording_restore(self, path):
        restore(self, path)
        seen["restored"] = {"counters": dict(self.counters), "loop_rng": self.rng.bit_generator.state,
                            "replay_steps": self.replay.steps_added, "torch_rng": self.agent.wm.generator.get_state()
                            .tolist()[:64]}

    Replay.sample, Trainer.train_once, Trainer.restore = recording_sample, checked_train_once, recording_restore
    code = cli.main(argv)
    with open(f"{report}.{rank}", "w") as file:
        json.dump({"code": code, **seen}, file)


def _spawn_train(tmp_path, argv):
    report = str(tmp_path / "report")
    mp.spawn(_train_worker, args=(free_port(), argv, report), nprocs=2)
    return [json.loads(open(f"{report}.{r}").read()) for r in range(2)]


@pytest.mark.slow
def test_two_ranks_stay_identical_after_every_update_and_resume_every_rank(tmp_path):
    run = tmp_path / "run"
    base = ["train", "--env", "gym:Pendulum-v1", "--preset", "debug", "--logdir", str(run), "--no-progress"]
    # First part: the documented command itself, two processes under torchrun.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "agent", *base, "--steps", "600", "--set", *FAST]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MUJOCO_GL": "egl"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("final eval return") == 1 and done.stdout.count("parameters:") == 1  # rank 0 only
    first = torch.load(run / "checkpoint.pt", weights_only=False)
    assert first["world_size"] == 2 and len(first["ranks"]) == 1
    # env steps count both ranks: 600 in all, 150 agent steps (action repeat 2) in each rank's own replay.
    assert first["counters"]["env_steps"] == 600 and first["counters"]["updates"] > 0
    assert first["replay"]["steps_added"] == 150 and first["ranks"][0]["replay"]["steps_added"] == 150
    assert (run / "replay").is_dir() and (run / "replay-rank1").is_dir()
    assert first["ranks"][0]["rng"]["loop"] != first["rng"]["loop"]  # each rank its own random streams

    # Second part: resume both ranks, check every update.
    reports = _spawn_train(tmp_path, ["train", "--logdir", str(run), "--resume", "--steps", "1000", "--no-progress"])
    assert [r["code"] for r in reports] == [0, 0]
    for rank, (report, own) in enumerate(zip(reports, [first, first["ranks"][0]])):
        restored = report["restored"]
        assert restored["counters"]["env_steps"] == 600 and restored["replay_steps"] == 150, rank
        assert restored["loop_rng"] == json.loads(json.dumps(own["rng"]["loop"])), rank
    assert reports[0]["restored"]["torch_rng"] != reports[1]["restored"]["torch_rng"]
    updates = reports[0]["updates"]
    assert updates > 5 and reports[1]["updates"] == updates
    assert reports[0]["max_param_diff"] == [0.0] * updates  # bitwise identical after every update
    assert not any(reports[0]["same_batch"])  # while each rank trained on batches of its own
    last = torch.load(run / "checkpoint.pt", weights_only=False)
    assert last["counters"]["env_steps"] == 1000
    assert last["counters"]["updates"] == first["counters"]["updates"] + updates
    assert last["replay"]["steps_added"] == 250 and last["ranks"][0]["replay"]["steps_added"] == 250
    starts = [json.loads(line) for line in (run / "starts.jsonl").read_text().splitlines()]
    assert [s["resume"] for s in starts] == [False, True]  # rank 0 alone records
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "fps/env" in line]
    assert max(steps) == 1000 and len(steps) == len(set(steps))  # continued, nothing logged twice
    # A two-process checkpoint refuses a one-process resume, naming the command.
    from agent.cli import main

    assert main(["train", "--logdir", str(run), "--resume", "--steps", "1200", "--no-progress"]) == 2
