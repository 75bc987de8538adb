"""What CUDA would catch, caught on the CPU: tensors the agent creates without naming a device, and lerps
that mix bf16 and float32 under autocast. Both broke the first run on a GPU; CPU tests never saw them because
every tensor lands on the CPU by default."""

import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from agent.cli import main

AGENT = str(Path(__file__).resolve().parents[1] / "agent")
FACTORIES = {torch.tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.linspace,
             torch.rand, torch.randn, torch.randint, torch.eye, torch.scalar_tensor}
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
        if func in FACTORIES and "device" not in kwargs:
            frames = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(AGENT)]
            # Parameters and buffers made while building a module move with it (module.to(device)).
            if frames and not any(f.name == "__init__" for f in frames):
                self.sites.add(f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].line}")
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
    assert main(["train", "--env", "gym:Pendulum-v1", "--preset", "debug", "--logdir", str(tmp_path / "run"),
                 "--steps", "400", "--no-progress", "--set", "env.obs=pixels", *FAST]) == 0
