"""Learning to act inside the world model's imagination (DreamerV3's actor-critic).

From posterior states of replayed sequences the model imagines ``horizon`` steps under the actor. The
critic regresses lambda returns of those rollouts with a symlog two-hot output and is kept near a slow
(EMA) copy of itself. The actor maximises returns scaled by a percentile return normaliser, plus an
entropy bonus, with one of two gradients (``actor_grad``): REINFORCE on advantages, or backpropagation
of the return through the model's differentiable dynamics (continuous actions only). The world model's
parameters are frozen during imagination, so neither loss can change it (tests check both).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from gymnasium import spaces
from torch import Tensor, nn

from .config import ActorCriticConfig
from .distributed import all_gather_flat, average_gradients
from .math_utils import (
    ReturnNormalizer,
    categorical_entropy,
    lambda_return,
    replay_lambda_return,
    symlog_bins,
    symlog_twohot_loss,
    twohot_decode,
    unimix_logits,
)
from .nets import MLP


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of ``modules`` take no gradient inside the block (gradients still flow through them)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class ActionDist:
    """The actor's distribution over one action per row, for Box (bounded normal) or Discrete spaces."""

    def __init__(self, raw: Tensor, discrete: bool, cfg: ActorCriticConfig):
        self.discrete = discrete
        if discrete:
            self.logits = unimix_logits(raw, cfg.unimix)  # (..., A)
        else:
            mean, std = raw.chunk(2, -1)
            # DreamerV3's bounded normal: mean in [-1, 1], std in [min_std, max_std]. Valid by construction,
            # so the argument checks (several ops and a read-back per distribution) are skipped.
            self.normal = torch.distributions.Normal(
                torch.tanh(mean), (cfg.max_std - cfg.min_std) * torch.sigmoid(std + 2.0) + cfg.min_std,
                validate_args=False)

    def sample(self) -> Tensor:
        """A sample; for continuous actions reparameterised, so it carries gradients when they are on."""
        if self.discrete:
            index = torch.distributions.Categorical(logits=self.logits).sample()
            return nn.functional.one_hot(index, self.logits.shape[-1]).float()
        return self.normal.rsample()

    def mode(self) -> Tensor:
        if self.discrete:
            return nn.functional.one_hot(self.logits.argmax(-1), self.logits.shape[-1]).float()
        return self.normal.mean

    def log_prob(self, action: Tensor) -> Tensor:
        if self.discrete:
            return (torch.log_softmax(self.logits, -1) * action).sum(-1)
        return self.normal.log_prob(action).sum(-1)

    def entropy(self) -> Tensor:
        if self.discrete:
            return categorical_entropy(self.logits)
        return self.normal.entropy().sum(-1)


class Actor(nn.Module):
    """Features -> action distribution."""

    def __init__(self, feat_dim: int, act_space: spaces.Box | spaces.Discrete, cfg: ActorCriticConfig, norm: str):
        super().__init__()
        self.discrete = isinstance(act_space, spaces.Discrete)
        self.act_dim = int(act_space.n) if self.discrete else int(act_space.shape[0])
        self.cfg = cfg
        self.body = MLP(feat_dim, cfg.units, cfg.layers, norm)
        self.head = nn.Linear(cfg.units, self.act_dim if self.discrete else 2 * self.act_dim)

    def forward(self, feat: Tensor) -> ActionDist:
        return ActionDist(self.head(self.body(feat)), self.discrete, self.cfg)


class Critic(nn.Module):
    """Features -> logits over symlog two-hot bins of the return; output layer zero-initialised."""

    def __init__(self, feat_dim: int, cfg: ActorCriticConfig, norm: str):
        super().__init__()
        self.body = MLP(feat_dim, cfg.units, cfg.layers, norm)
        self.head = nn.Linear(cfg.units, cfg.bins)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, feat: Tensor) -> Tensor:
        return self.head(self.body(feat))


class ActorCritic(nn.Module):
    """Actor, critic, slow critic, return normaliser and their optimizers."""

    def __init__(self, feat_dim: int, act_space: spaces.Box | spaces.Discrete, cfg: ActorCriticConfig,
                 norm: str = "layer"):
        super().__init__()
        self.cfg = cfg
        discrete = isinstance(act_space, spaces.Discrete)
        if cfg.actor_grad == "dynamics" and discrete:
            raise ValueError("actor_critic.actor_grad=dynamics needs continuous actions; use reinforce or auto.")
        # DreamerV3's first code release: backpropagation for continuous actions, REINFORCE for discrete.
        self.dynamics_grad = cfg.actor_grad == "dynamics" or (cfg.actor_grad == "auto" and not discrete)
        self.actor = Actor(feat_dim, act_space, cfg, norm)
        self.critic = Critic(feat_dim, cfg, norm)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.normalizer = ReturnNormalizer(cfg.return_decay, cfg.return_low, cfg.return_high)
        self.register_buffer("bins", symlog_bins(cfg.bins, cfg.bin_range))
        # fused: one kernel per parameter instead of about ten ops (the same update up to rounding).
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, eps=cfg.eps, fused=True)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, eps=cfg.eps, fused=True)

    def value(self, feat: Tensor, slow: bool = False) -> Tensor:
        """Expected return of each state (decoded from the two-hot bins)."""
        return twohot_decode((self.slow_critic if slow else self.critic)(feat), self.bins)

    def losses(self, feat: Tensor, action: Tensor, reward: Tensor, continue_: Tensor
               ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Unreduced (H, N) actor and critic losses of an imagined trajectory, and scalar metric tensors.

        feat, action: (H+1, N, F) and (H+1, N, A), row 0 the start state and action[t] chosen at state t;
        reward, continue_: (H+1, N), predicted on arriving at each state. With ``dynamics`` gradients the
        trajectory must be differentiable with respect to the actor.
        """
        cfg = self.cfg
        if self.dynamics_grad:
            with frozen(self.critic):  # the actor's gradient passes through values, never into the critic
                value = self.value(feat)  # (H+1, N)
            logits = self.critic(feat[:-1].detach())  # the critic's own forward on fixed states
        else:
            # Nothing upstream of feat needs a gradient: one critic forward serves values and the critic loss.
            all_logits = self.critic(feat.detach())  # (H+1, N, K)
            value = twohot_decode(all_logits.detach(), self.bins)
            logits = all_logits[:-1]
        ret = lambda_return(reward[1:], value[:-1], continue_[1:], value[-1], cfg.lambda_, cfg.discount)
        with torch.no_grad():
            # Weight of state t: the chance the imagined episode is still running there, discounted.
            weight = torch.cumprod(torch.cat([continue_[:1], cfg.discount * continue_[1:-1]]), 0)
            self.normalizer.update(all_gather_flat(ret))  # every rank's returns: one scale for all ranks
            scale = self.normalizer.scale()
            advantage = (ret - value[:-1]) / scale  # (H, N)
            slow_value = self.value(feat[:-1], slow=True)

        dist = self.actor(feat[:-1])
        entropy = dist.entropy()
        if self.dynamics_grad:
            # Backpropagation through the model's dynamics: maximise the normalised return itself.
            actor = -ret / scale - cfg.entropy * entropy
        else:
            # REINFORCE: the advantage is a fixed weight (no_grad above) on the action's log-likelihood.
            actor = -dist.log_prob(action[:-1].detach()) * advantage - cfg.entropy * entropy

        # The critic regresses fixed targets from fixed states: detach both.
        critic = self._critic_loss(logits, ret.detach(), slow_value)
        losses = {"actor": actor * weight, "critic": critic * weight}
        metrics = {
            "imagine/return": ret.mean(),
            "imagine/value": value.mean(),
            "imagine/reward": reward[1:].mean(),
            "imagine/continue": continue_[1:].mean(),
            "actor/entropy": entropy.mean(),
            "actor/advantage_std": advantage.std(),
            "actor/return_scale": scale,
        }
        return losses, {k: v.detach() for k, v in metrics.items()}

    def _critic_loss(self, logits: Tensor, ret: Tensor, slow_value: Tensor) -> Tensor:
        """Two-hot cross-entropy of the critic's ``logits`` against the returns, plus ``slow_reg`` times that
        against the slow critic's values; one logsumexp serves both."""
        lse = torch.logsumexp(logits.float(), -1)
        return symlog_twohot_loss(logits, ret, self.bins, lse) + self.cfg.slow_reg * symlog_twohot_loss(
            logits, slow_value, self.bins, lse)

    def replay_value_loss(self, feat: Tensor, reward: Tensor, is_first: Tensor, is_terminal: Tensor
                          ) -> tuple[Tensor, dict[str, Tensor]]:
        """Critic loss on replayed sequences, time on the first axis (T, N): the critic regresses lambda
        returns built from the real rewards along the sequence, bootstrapped with its own values.

        reward[t] is the reward received on arriving at state t (0 at an episode's first step). A sequence
        may cross into a new episode (``is_first``); the transition into it belongs to no episode, so the
        state before it gets no target and the return before that bootstraps from its value there.
        Returns the scalar loss (mean over states with a target) and metrics.
        """
        cfg = self.cfg
        all_logits = self.critic(feat.detach())  # (T, N, K): values and the loss's logits in one forward
        with torch.no_grad():
            value = twohot_decode(all_logits.detach(), self.bins)  # (T, N)
            slow_value = self.value(feat[:-1].detach(), slow=True)
            ret, inside = replay_lambda_return(reward, value, is_first, is_terminal, cfg.lambda_, cfg.discount)
        loss = self._critic_loss(all_logits[:-1], ret, slow_value)
        mask = inside.float()
        loss = (loss * mask).sum() / mask.sum().clamp(min=1.0)
        return loss, {"replay/return": (ret * mask).sum() / mask.sum().clamp(min=1.0), "replay/value": value.mean()}

    def update(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """One optimizer step of actor and critic; returns their losses and gradient norms (scalar tensors)
        and ``skipped`` (1.0 where a non-finite loss or gradient skipped a step). An optional
        ``replay_value`` loss (a scalar) is added to the critic's, scaled by ``replay_value``."""
        loss = {"actor": losses["actor"].mean(), "critic": losses["critic"].mean()}
        if "replay_value" in losses:
            loss["critic"] = loss["critic"] + self.cfg.replay_value * losses["replay_value"]
        self.actor_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        # One backward pass for both: no parameter takes gradient from both losses (the critic's states are
        # detached, the actor's loss sees the critic frozen), so each gets exactly its own loss's gradient.
        (loss["actor"] + loss["critic"]).backward()
        metrics: dict[str, Tensor] = {}
        skipped = []
        for name, opt, module in (("actor", self.actor_opt, self.actor), ("critic", self.critic_opt, self.critic)):
            # Data-parallel runs: average over ranks before clipping (no-op in one process).
            loss_finite = average_gradients(module.parameters(), loss[name])
            norm = nn.utils.clip_grad_norm_(module.parameters(), self.cfg.grad_clip)
            if torch.isfinite(norm) and loss_finite:
                opt.step()
            else:  # skip rather than poison parameters and Adam's moments
                opt.zero_grad(set_to_none=True)
                skipped.append(name)
            metrics[f"train/loss/{name}"] = loss[name].detach()
            metrics[f"train/grad_norm/{name}"] = norm
        self.update_slow_critic()
        metrics["skipped"] = torch.tensor(float(bool(skipped)), device=norm.device)
        return metrics

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        """Move the slow critic a fraction ``slow_rate`` towards the critic."""
        torch._foreach_lerp_(list(self.slow_critic.parameters()), list(self.critic.parameters()), self.cfg.slow_rate)

    def optimizer_state(self) -> dict[str, Any]:
        return {"actor": self.actor_opt.state_dict(), "critic": self.critic_opt.state_dict()}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.actor_opt.load_state_dict(state["actor"])
        self.critic_opt.load_state_dict(state["critic"])
        for opt in (self.actor_opt, self.critic_opt):  # checkpoints from before the fused step say fused=None
            for group in opt.param_groups:
                group["fused"] = True
