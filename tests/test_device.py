"""What CUDA would catch, caught on the CPU: tensors the agent creates without naming a device, and lerps
that mix bf16 and float32 under autocast. Both broke the first run on a GPU; CPU tests never saw them because
every tensor lands on the CPU by default."""

import inspect
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from agent.cli import main

AGENT = str(Path(__file__).resolve().parents[1] / "agent")
FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.empty_strided,
             torch.arange, torch.linspace, torch.logspace, torch.rand, torch.randn, torch.randint, torch.randperm,
             torch.normal, torch.eye, torch.scalar_tensor, torch.tril_indices, torch.triu_indices}
FAST = ["train.prefill=100", "train.batch_size=4", "train.batch_length=16", "train.train_ratio=16",
        "train.log_every=100", "replay.chunk=64", "replay.capacity=5000", "agent.actor_critic.horizon=5",
        "train.threads=1", "train.eval_every=300", "train.eval_episodes=1", "train.video_every=300",
        "train.checkpoint_every=300"]


class DeviceLess(TorchFunctionMode):
    """Records where code under agent/ calls a tensor factory without device=: on a GPU run that tensor
    lands on the CPU and the first op that meets a CUDA tensor fails."""

    def __init__(self):
        super().__init__()
        self.sites: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            frames, frame = [], inspect.currentframe().f_back
            while frame is not None:
                if frame.f_code.co_filename.startswith(AGENT):
                    frames.append(frame)
                frame = frame.f_back
            # Parameters and buffers made while an nn.Module is built move with it (module.to(device)); an
            # __init__ of anything else (a distribution, the Trainer and what it calls) is watched.
            building = any(f.f_code.co_name == "__init__" and isinstance(f.f_locals.get("self"), nn.Module)
                           for f in frames)
            if frames and not building:
                where = inspect.getframeinfo(frames[0], context=1)
                self.sites.add(f"{Path(where.filename).name}:{where.lineno} {(where.code_context or [''])[0].strip()}")
        return func(*args, **kwargs)


def test_watch_catches_a_device_less_factory():
    watch = DeviceLess()
    with watch:
        torch.zeros(3, device="cpu")
    assert not watch.sites
    from agent import math_utils  # a factory call made from a file under agent/, as the run's would be

    code = compile("torch.ones(2)", math_utils.__file__, "exec")
    with watch:
        exec(code, {"torch": torch})
    assert len(watch.sites) == 1 and "math_utils.py:1" in next(iter(watch.sites))


def test_no_agent_code_builds_tensors_the_watch_cannot_see():
    """torch.from_numpy and torch.Tensor(...) never reach a TorchFunctionMode; agent/ uses neither."""
    for path in Path(AGENT).glob("*.py"):
        assert not re.search(r"torch\.from_numpy\(|torch\.Tensor\(", path.read_text()), path.name


@pytest.mark.slow
@pytest.mark.parametrize("obs", ["state", "pixels"])
def test_a_training_run_names_the_device_of_every_tensor_it_creates(tmp_path, obs):
    """Collect, train (world model and actor-critic), evaluate, report and checkpoint, all under the watch."""
    watch = DeviceLess()
    with watch:
        assert main(["train", "--env", "gym:Pendulum-v1", "--preset", "debug", "--logdir", str(tmp_path / obs),
                     "--steps", "400", "--no-progress", "--set", f"env.obs={obs}", *FAST]) == 0
    assert not watch.sites, "\n".join(sorted(watch.sites))


def test_rssm_observe_under_bf16_autocast_keeps_a_float32_state():
    """CUDA autocast runs matmuls in bf16; CPU autocast does the same, so the mixed-dtype ops show here."""
    from agent.config import preset
    from agent.rssm import RSSM

    cfg = preset("debug").world_model.rssm
    rssm = RSSM(8, 2, cfg)
    B, T = 3, 4
    embed, action = torch.randn(B, T, 8), torch.randn(B, T, 2)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        posterior, _ = rssm.observe(embed, action, is_first, rssm.initial(B), sample=True)
        imagined = rssm.img_step({k: v[:, -1] for k, v in posterior.items() if k in ("deter", "stoch")},
                                 action[:, -1])
    assert posterior["deter"].dtype == torch.float32 and imagined["deter"].dtype == torch.float32
    assert torch.isfinite(posterior["deter"]).all()


@pytest.mark.slow
def test_a_pixel_training_run_under_bf16_autocast(tmp_path, monkeypatch):
    """precision=bf16 is CUDA only; the same autocast on the CPU runs every op of the world model's update,
    observation step and report in bf16 where CUDA's would."""
    from agent.world_model import WorldModel

    monkeypatch.setattr(WorldModel, "_autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16))
    run = tmp_path / "run"
    assert main(["train", "--env", "gym:Pendulum-v1", "--preset", "debug", "--logdir", str(run),
                 "--steps", "400", "--no-progress", "--set", "env.obs=pixels", *FAST]) == 0
    updates = [json.loads(line).get("train/updates") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(u or 0 for u in updates) > 0  # the world model and the actor-critic did update under bf16
