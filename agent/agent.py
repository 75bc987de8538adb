"""The agent: world model plus actor-critic behind the small seam the loop uses.

``act`` (observations and a carry -> actions and a carry), ``train`` (a replayed batch -> metrics),
``report`` (a batch -> open-loop predictions for videos) and ``checkpoint``/``restore``.
The agent never sees an env or a logger; it receives spaces and numpy arrays and returns dicts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from .actor_critic import ActorCritic, frozen
from .config import AgentConfig
from .math_utils import twohot_decode
from .world_model import Carry, WorldModel


class Agent(nn.Module):
    """A Dreamer-style agent for a Dict observation space and a Box or Discrete action space."""

    def __init__(self, obs_space: spaces.Dict, act_space: spaces.Box | spaces.Discrete, cfg: AgentConfig):
        super().__init__()
        self.cfg = cfg
        self.act_space = act_space
        self.discrete = isinstance(act_space, spaces.Discrete)
        self.device = torch.device(cfg.device)
        self.wm = WorldModel(obs_space, act_space, cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            self.ac = ActorCritic(self.wm.rssm.feat_dim, act_space, cfg.actor_critic,
                                  cfg.world_model.norm).to(self.device)
        self.skipped_updates = 0

    def param_counts(self) -> dict[str, int]:
        """Parameters per module (world model parts, actor, critic) and in total."""
        counts = {k: v for k, v in self.wm.param_counts().items() if k != "total"}
        counts["actor"] = sum(p.numel() for p in self.ac.actor.parameters())
        counts["critic"] = sum(p.numel() for p in self.ac.critic.parameters())
        counts["total"] = sum(counts.values())
        return counts

    # ----- acting

    def initial(self, N: int) -> Carry:
        return self.wm.initial(N)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], is_first: np.ndarray, carry: Carry | None,
            explore: bool = True) -> tuple[np.ndarray, Carry]:
        """Actions (N, A) float32 for N observations: sampled when ``explore``, else the mode (of the
        latent state too).

        Box actions are clipped to [-1, 1]; Discrete actions are one-hot (the env takes ``argmax``).
        """
        N = len(is_first)
        carry = self.initial(N) if carry is None else carry
        obs_t = {k: torch.as_tensor(v, device=self.device) for k, v in obs.items() if k in ("image", "state")}
        first = torch.as_tensor(is_first, dtype=torch.bool, device=self.device)
        # Evaluation is deterministic end to end: the latent's mode as well as the action's.
        feat, carry = self.wm.obs_step(carry, obs_t, None, first, sample=explore)
        dist = self.ac.actor(feat)
        action = dist.sample() if explore else dist.mode()
        if not self.discrete:
            action = action.clamp(-1.0, 1.0)
        return action.float().cpu().numpy(), {**carry, "action": action.float()}

    # ----- learning

    def to_torch(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v, device=self.device) for k, v in batch.items()}

    def train_step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One world-model update and one actor-critic update on a (B, T) batch; returns metrics.

        A non-finite loss or gradient skips that update (counted in ``train/skipped_updates``).
        """
        data = self.to_torch(batch)
        wm_metrics, outputs = self.wm.train_step(data)
        metrics = {f"train/{k}": v for k, v in wm_metrics.items()}
        if wm_metrics["skipped"]:
            self.skipped_updates += 1
            metrics["train/skipped_updates"] = float(self.skipped_updates)
            return metrics
        posterior = outputs["posterior"]
        # Every replayed state starts an imagined rollout: (B, T, ...) -> (B*T, ...).
        start = {k: v.reshape(-1, *v.shape[2:]) for k, v in posterior.items() if k in ("deter", "stoch")}
        start_continue = 1.0 - data["is_terminal"].float().reshape(-1)  # (B*T,)
        starts = self.cfg.actor_critic.starts
        if 0 < starts < len(start_continue):  # a random subset of the replayed states, to save compute
            pick = torch.randperm(len(start_continue), generator=self.wm.generator, device=self.device)[:starts]
            start = {k: v[pick] for k, v in start.items()}
            start_continue = start_continue[pick]
        replay = None
        if self.cfg.actor_critic.replay_value > 0:  # the replayed sequences, time first: (T, B, ...)
            replay = {"feat": self.wm.rssm.features(posterior).transpose(0, 1),  # posterior is detached
                      **{k: data[k].transpose(0, 1) for k in ("reward", "is_first", "is_terminal")}}
        ac_metrics = self.actor_critic_step(start, start_continue, replay)
        values = torch.stack([v.float() for v in ac_metrics.values()]).tolist()  # one device sync
        metrics.update(zip(ac_metrics.keys(), values))
        metrics["train/skipped_updates"] = float(self.skipped_updates)
        return metrics

    def actor_critic_step(self, start: dict[str, torch.Tensor], start_continue: torch.Tensor,
                          replay: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Imagine from ``start`` (N, ...) and update actor and critic; the world model stays as it is.
        ``replay`` (features, rewards and flags of the replayed sequences, time first) adds the critic's
        replay-return loss. Returns scalar metric tensors (read back once by the caller)."""
        with frozen(self.wm):  # no gradient ever reaches the world model's parameters from here
            with torch.set_grad_enabled(self.ac.dynamics_grad):  # differentiable rollouts only when used
                traj = self.imagine(start, start_continue)
            losses, metrics = self.ac.losses(traj["feat"], traj["action"], traj["reward"], traj["continue_"])
        if replay is not None:
            losses["replay_value"], replay_metrics = self.ac.replay_value_loss(
                replay["feat"], replay["reward"].float(), replay["is_first"], replay["is_terminal"])
            metrics.update(replay_metrics)
        update = self.ac.update(losses)
        if update.pop("skipped"):
            self.skipped_updates += 1
        return {**metrics, **update}

    def imagine(self, start: dict[str, torch.Tensor], start_continue: torch.Tensor) -> dict[str, torch.Tensor]:
        """Roll the world model ``horizon`` steps under the actor from detached starts.

        Returns a trajectory: ``feat`` (H+1, N, F), ``action`` (H+1, N, A), predicted ``reward`` and
        ``continue_`` probabilities (H+1, N); row 0 is the start: its reward is 0 and unused, its continue
        flag the replayed one. Under ``torch.no_grad`` for REINFORCE; with gradients on (and the world model
        frozen) the trajectory is differentiable with respect to the actor, for dynamics backpropagation.
        """
        rssm = self.wm.rssm
        traj = rssm.imagine(start, lambda s: self.ac.actor(rssm.features(s)).sample(),
                            self.cfg.actor_critic.horizon)
        feat = rssm.features(traj)  # (H+1, N, F)
        # The start's reward and continue flag are not predicted: rows 1..H only.
        reward = twohot_decode(self.wm.reward(feat[1:]), self.wm.bins)  # (H, N)
        continue_ = torch.sigmoid(self.wm.continue_(feat[1:]).float())  # (H, N)
        return {"feat": feat, "action": traj["action"],
                "reward": torch.cat([torch.zeros_like(reward[:1]), reward]),
                "continue_": torch.cat([start_continue[None], continue_])}

    # ----- reports

    @torch.no_grad()
    def report(self, batch: dict[str, np.ndarray], sequences: int = 4, context: int = 5) -> dict[str, Any]:
        """Open-loop predictions on the first ``sequences`` rows of a batch.

        Returns ``openloop``: a uint8 video (T, 2H, sequences*W, 3), real frames above and the model's
        frames below (observed for ``context`` steps, imagined with the true actions after), when the
        observations have images; and ``openloop_reward_error``, the mean absolute reward error of the
        imagined part.
        """
        data = self.to_torch({k: v[:sequences] for k, v in batch.items()})
        T = data["is_first"].shape[1]
        out = self.wm.openloop(data, min(context, T))
        report: dict[str, Any] = {
            "openloop_reward_error": (out["reward"][:, context:] - data["reward"][:, context:]).abs().mean().item()}
        if "image" in out:
            truth = data["image"].float() / 255.0  # (B, T, H, W, 3)
            panel = torch.cat([truth, out["image"]], 2)  # (B, T, 2H, W, 3)
            video = torch.cat(list(panel), 2)  # (T, 2H, B*W, 3)
            report["openloop"] = (video * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return report

    # ----- saving

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to resume (parameters, optimizers, return normaliser, sampling generator,
        counters). Checkpoints on disk hold this layout under "agent"; `restore` reads it back."""
        return {"world_model": self.wm.checkpoint(), "actor_critic": self.ac.state_dict(),
                "actor_critic_optim": self.ac.optimizer_state(), "skipped_updates": self.skipped_updates}

    def restore(self, state: dict[str, Any]) -> None:
        """Load what `checkpoint()` returned."""
        self.wm.restore(state["world_model"])
        self.ac.load_state_dict(state["actor_critic"])
        self.ac.load_optimizer_state(state["actor_critic_optim"])
        self.skipped_updates = state["skipped_updates"]
