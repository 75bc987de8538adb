"""The world model: encoders, RSSM, decoders, reward and continue heads, and their one optimizer.

Batch format (B, T) from the replay, tensors on the model's device:
  image uint8 (B, T, H, W, 3) and/or state float32 (B, T, n), as `obs_space` has `image`/`state`;
  action float32 (B, T, A) (one-hot for Discrete); reward float32 (B, T);
  is_first, is_last, is_terminal bool (B, T).
Row t holds obs_t, the reward received on arriving at obs_t (0 at is_first) and action_t, the action
CHOSEN at obs_t (DreamerV3's convention). The RSSM step for t therefore consumes action_{t-1}: zero at
is_first, and at the start of a window the carried state's `action` (zero for a fresh state).
The reward head at t predicts reward_t; the continue head predicts 1 - is_terminal_t.

Carry (the state between windows and between online steps), a dict of (B, ...) tensors:
  deter (B, D), stoch (B, S, K): the RSSM state after the last step;
  action (B, A): the action taken at the last step, consumed as prev_action by the next one;
  frames (B, k_t-1, H, W, 3) uint8 and frames_valid (B,) bool, only with the patch encoder on images:
    the last k_t-1 frames the next step's tubelet may read (already cut at episode starts).
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any

import gymnasium.spaces as spaces
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import AgentConfig, validate
from .distributed import average_gradients
from .math_utils import (
    categorical_entropy,
    categorical_kl,
    symexp,
    symlog,
    symlog_bins,
    symlog_twohot_loss,
    twohot_decode,
)
from .nets import (
    ContinueHead,
    ConvDecoder,
    MultiEncoder,
    PatchDecoder,
    RewardHead,
    StateDecoder,
    tubelet_indices,
)
from .rssm import RSSM

Carry = dict[str, Tensor]


class WorldModel(nn.Module):
    """Dreamer-style world model with one Adam optimizer; see the module docstring for data formats.

    Parameters are initialised from `cfg.seed` without touching the global RNG, and all sampling uses
    the model's own generator (seeded from `cfg.seed`, saved by `checkpoint`), so two models with the
    same seed fed the same batches stay identical.
    """

    def __init__(self, obs_space: spaces.Dict, act_space: spaces.Box | spaces.Discrete, cfg: AgentConfig):
        super().__init__()
        self.has_image = "image" in obs_space.spaces
        self.has_state = "state" in obs_space.spaces
        image_shape = tuple(obs_space["image"].shape) if self.has_image else None
        validate(cfg, image_shape)
        self.cfg = cfg
        wm = cfg.world_model
        self.device = torch.device(cfg.device)
        if isinstance(act_space, spaces.Discrete):
            self.action_dim = int(act_space.n)
        elif isinstance(act_space, spaces.Box):
            self.action_dim = int(math.prod(act_space.shape))
        else:
            raise ValueError(f"act_space must be Box or Discrete, got {act_space}")
        self.uses_frames = self.has_image and wm.encoder.kind == "patch"
        self.tubelet_frames = wm.encoder.tubelet_frames
        self.image_shape = image_shape

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.encoder = MultiEncoder(obs_space, wm)
            self.rssm = RSSM(self.encoder.out_dim, self.action_dim, wm.rssm, wm.norm)
            F_dim = self.rssm.feat_dim
            self.image_decoder: nn.Module | None = None
            self.state_decoder: StateDecoder | None = None
            if self.has_image:
                if wm.decoder.kind == "cnn":
                    self.image_decoder = ConvDecoder(F_dim, image_shape, wm.decoder, wm.norm)
                else:
                    self.image_decoder = PatchDecoder(
                        F_dim, image_shape, wm.encoder.patch, wm.decoder, wm.norm)
            if self.has_state:
                n = int(obs_space["state"].shape[0])
                self.state_decoder = StateDecoder(
                    F_dim, n, wm.decoder.mlp_units, wm.decoder.mlp_layers, wm.norm)
            self.reward = RewardHead(F_dim, wm.heads.units, wm.heads.layers, wm.heads.bins, wm.norm)
            self.continue_ = ContinueHead(F_dim, wm.heads.units, wm.heads.layers, wm.norm)
        self.register_buffer("bins", symlog_bins(wm.heads.bins, wm.heads.bin_range), persistent=False)
        self.to(self.device)
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(cfg.seed)
        self.rssm.generator = self.generator
        o = wm.optim
        # fused: one kernel per parameter instead of about ten ops (the same update up to rounding).
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=o.lr, eps=o.eps, weight_decay=o.weight_decay,
                                           fused=True)

    # ----------------------------------------------------------------------------------------- bookkeeping

    def modules_by_name(self) -> dict[str, nn.Module]:
        """The top-level parts, for parameter counts and per-module grad norms."""
        parts = {"encoder": self.encoder, "rssm": self.rssm, "image_decoder": self.image_decoder,
                 "state_decoder": self.state_decoder, "reward": self.reward, "continue_": self.continue_}
        return {k: v for k, v in parts.items() if v is not None}

    def param_counts(self) -> dict[str, int]:
        """Parameter count per module and in total."""
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in self.modules_by_name().items()}
        counts["total"] = sum(counts.values())
        return counts

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to resume: {"model": parameters and buffers, "optimizer", "generator"}."""
        return {"model": self.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def restore(self, state: dict[str, Any]) -> None:
        """Load what `checkpoint()` returned: parameters, optimizer and the sampling generator."""
        self.load_state_dict(state["model"])
        # Optimizer.load_state_dict keeps the given moment tensors when dtype and device match; copy them
        # so that a model restored from another live model's checkpoint does not share its Adam moments.
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        for group in self.optimizer.param_groups:  # checkpoints from before the fused step say fused=None
            group["fused"] = True
        self.generator.set_state(state["generator"])

    # ----------------------------------------------------------------------------------------- data

    def initial(self, B: int) -> Carry:
        """A fresh carry for B rows: the RSSM's initial state, zero action, no frames (`frames_valid`
        False, so a window that starts mid-episode repeats its own first frame)."""
        state = self.rssm.initial(B)
        carry = {"deter": state["deter"], "stoch": state["stoch"],
                 "action": torch.zeros(B, self.action_dim, device=self.device)}
        if self.uses_frames:
            H, W, C = self.image_shape
            carry["frames"] = torch.zeros(B, self.tubelet_frames - 1, H, W, C, dtype=torch.uint8,
                                          device=self.device)
            carry["frames_valid"] = torch.zeros(B, dtype=torch.bool, device=self.device)
        return carry

    def preprocess(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """A new dict with `image` as float pixels / 255 - 0.5 (the only place pixels leave uint8);
        other entries are passed through."""
        out = dict(batch)
        if "image" in batch:
            assert batch["image"].dtype == torch.uint8, f"image must be uint8, got {batch['image'].dtype}"
            out["image"] = batch["image"].float().div_(255.0).sub_(0.5)  # in place: no temporaries
        return out

    def embed(self, obs: dict[str, Tensor], is_first: Tensor, context: Carry | None = None) -> Tensor:
        """Embeddings (B, T, E) of preprocessed observations; `context` is a carry whose `frames`
        precede the window (None, or a carry without frames: the window starts without context)."""
        frames, valid = None, None
        if context is not None and "frames" in context:
            frames = self.preprocess({"image": context["frames"]})["image"]
            valid = context["frames_valid"]
        return self.encoder(obs, is_first, frames, valid)

    def _next_frames(self, images: Tensor, is_first: Tensor, context: Carry) -> tuple[Tensor, Tensor]:
        """The carry's last k_t-1 frames after this window (B, k_t-1, H, W, C) uint8, all valid: the
        newest slots of the last step's tubelet, so they are already cut at episode starts."""
        B, k = images.shape[0], self.tubelet_frames
        valid = torch.ones(B, dtype=torch.bool, device=images.device)
        if k == 1:
            return context["frames"], valid
        index = tubelet_indices(is_first, k, context["frames_valid"])[:, -1, 1:]  # (B, k-1)
        rows = torch.arange(B, device=images.device)[:, None]
        from_context = context["frames"][rows, index.clamp(max=k - 2)]  # (B, k-1, H, W, C)
        from_window = images[rows, (index - (k - 1)).clamp(min=0)]  # (B, k-1, H, W, C)
        in_context = (index < k - 1)[..., None, None, None]
        return torch.where(in_context, from_context, from_window), valid

    def observe(self, batch: dict[str, Tensor], state: Carry | None = None,
                sample: bool = True) -> tuple[dict[str, Tensor], dict[str, Tensor], Carry]:
        """Encode and filter a raw batch continuing from `state` (None: fresh windows).
        Returns (posterior, prior, last_state); posterior/prior as in `RSSM.observe`."""
        return self._observe(batch, self.preprocess(batch), state, sample)

    def _observe(self, batch: dict[str, Tensor], data: dict[str, Tensor], state: Carry | None,
                 sample: bool) -> tuple[dict[str, Tensor], dict[str, Tensor], Carry]:
        """`observe` with the batch already preprocessed into `data` (the raw batch is still needed:
        the carried frames stay uint8)."""
        is_first = batch["is_first"]
        B, T = is_first.shape
        state = self.initial(B) if state is None else state
        embed = self.embed(data, is_first, context=state)  # (B, T, E)
        prev_action = torch.cat([state["action"][:, None], batch["action"][:, :-1]], 1)  # (B, T, A)
        posterior, prior = self.rssm.observe(embed, prev_action, is_first,
                                             {"deter": state["deter"], "stoch": state["stoch"]}, sample)
        last = {"deter": posterior["deter"][:, -1], "stoch": posterior["stoch"][:, -1],
                "action": batch["action"][:, -1]}
        if self.uses_frames:
            last["frames"], last["frames_valid"] = self._next_frames(batch["image"], is_first, state)
        return posterior, prior, last

    def _check_batch(self, batch: dict[str, Tensor]) -> None:
        B, T = batch["is_first"].shape
        keys = ["action", "reward", "is_terminal"] + ["image"] * self.has_image + ["state"] * self.has_state
        for key in keys:
            assert key in batch, f"batch lacks {key!r}"
            shape = tuple(batch[key].shape)
            assert shape[:2] == (B, T), f"batch[{key!r}] has shape {shape}, not starting with (B, T)"
        assert batch["action"].shape[-1] == self.action_dim, f"action dim {batch['action'].shape[-1]}"

    # ----------------------------------------------------------------------------------------- training

    def loss(self, batch: dict[str, Tensor], state: Carry | None = None
             ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], Carry]:
        """World-model loss on a (B, T) batch continuing from `state` (None: fresh windows).

        Returns (total loss, unreduced (B, T) loss terms keyed as the loss-scale table, metrics of
        scalar tensors, posterior {deter, stoch, logits} (B, T, ...), last_state carry).
        """
        self._check_batch(batch)
        scales = self.cfg.world_model.loss
        data = self.preprocess(batch)
        posterior, prior, last = self._observe(batch, data, state, sample=True)
        feat = self.rssm.features(posterior)  # (B, T, F)
        losses: dict[str, Tensor] = {}

        # Reconstruction. mse_loss without reduction is (prediction - target)^2, the same numbers as a
        # subtraction and a square, in one pass forward and one backward (the image is the largest tensor).
        if self.image_decoder is not None:
            losses["image"] = F.mse_loss(self.image_decoder(feat).float(), data["image"], reduction="none"
                                         ).sum((-3, -2, -1))
        if self.state_decoder is not None:
            losses["state"] = F.mse_loss(self.state_decoder(feat).float(), symlog(batch["state"]), reduction="none"
                                         ).sum(-1)

        # Reward and continue.
        losses["reward"] = symlog_twohot_loss(self.reward(feat), batch["reward"], self.bins)
        continue_target = 1.0 - batch["is_terminal"].float()
        losses["continue_"] = F.binary_cross_entropy_with_logits(
            self.continue_(feat).float(), continue_target, reduction="none")

        # KL balancing with free bits: each term trains one side only, hence the detach.
        dyn = categorical_kl(posterior["logits"].detach(), prior["logits"]).sum(-1)  # trains the prior
        rep = categorical_kl(posterior["logits"], prior["logits"].detach()).sum(-1)  # trains the posterior
        losses["dyn"] = torch.clamp(dyn, min=scales.free_nats)
        losses["rep"] = torch.clamp(rep, min=scales.free_nats)

        total = sum(getattr(scales, k) * v.mean() for k, v in losses.items())
        with torch.no_grad():  # metrics only; the KL's value is dyn's (the detach changes gradients, not values)
            metrics = {
                "kl": dyn.mean(),
                "prior_entropy": categorical_entropy(prior["logits"]).sum(-1).mean(),
                "posterior_entropy": categorical_entropy(posterior["logits"]).sum(-1).mean(),
            }
        return total, losses, metrics, posterior, last

    def train_step(self, batch: dict[str, Tensor], state: Carry | None = None
                   ) -> tuple[dict[str, float], dict[str, Any]]:
        """One optimizer step on a batch. Returns (metrics, outputs).

        metrics (floats): loss/<term> (means), loss/total, grad_norm/<module>, grad_norm/total (before
        clipping), kl, prior_entropy, posterior_entropy. outputs: `posterior` (B, T, ...) detached (the
        starts for imagination), `last_state` detached (the carry for the next window of these rows).
        """
        self.train()
        with self._autocast():
            total, losses, metrics, posterior, last = self.loss(batch, state)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        # Data-parallel runs: average over ranks before the norms and clipping below (no-op in one process).
        loss_finite = average_gradients(self.parameters(), total)
        norms = {}
        for name, module in self.modules_by_name().items():
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            zero = torch.zeros((), device=self.device)
            norms[name] = torch.nn.utils.get_total_norm(grads) if grads else zero
        total_norm = torch.linalg.vector_norm(torch.stack(list(norms.values())))
        # A non-finite loss or gradient would poison the parameters and Adam's moments: skip the step.
        skipped = not bool(torch.isfinite(total_norm) & loss_finite)
        clip = self.cfg.world_model.optim.grad_clip
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            if clip > 0:
                torch.nn.utils.clip_grads_with_norm_(self.parameters(), clip, total_norm)
            self.optimizer.step()

        scalars = {"loss/total": total.detach()}
        scalars.update({f"loss/{k}": v.detach().mean() for k, v in losses.items()})
        scalars.update({f"grad_norm/{k}": v for k, v in norms.items()})
        scalars["grad_norm/total"] = total_norm
        scalars["skipped"] = torch.tensor(float(skipped), device=total_norm.device)
        scalars.update(metrics)
        values = torch.stack([v.float() for v in scalars.values()]).tolist()  # one device sync
        # float32 out (autocast leaves bf16 behind): imagination and the actor-critic run outside autocast.
        outputs = {"posterior": {k: v.detach().float() for k, v in posterior.items()},
                   "last_state": {k: v.detach().float() for k, v in last.items()}}
        return dict(zip(scalars.keys(), values)), outputs

    # ----------------------------------------------------------------------------------------- acting

    @torch.no_grad()
    def obs_step(self, carry: Carry, obs: dict[str, Tensor], prev_action: Tensor | None, is_first: Tensor,
                 sample: bool = True) -> tuple[Tensor, Carry]:
        """One online filtering step: (features (B, F), new carry).

        obs: raw observations (B, ...) (image uint8); prev_action (B, A): the action taken before this
        observation (None: use carry["action"]); is_first (B,) bool. The same code path as training
        (a T=1 window continuing from `carry`). The new carry's `action` is prev_action; after choosing
        an action, store it with `{**carry, "action": action}` so the next call can pass None.
        """
        prev_action = carry["action"] if prev_action is None else prev_action
        batch = {k: obs[k][:, None] for k in ("image", "state") if k in obs}
        batch.update(is_first=is_first[:, None], action=prev_action[:, None])
        with self._autocast():
            posterior, _, last = self.observe(batch, {**carry, "action": prev_action}, sample)
        return self.rssm.features({k: v[:, 0].float() for k, v in posterior.items()}), last

    # ----------------------------------------------------------------------------------------- reports

    def decode(self, feat: Tensor) -> dict[str, Tensor]:
        """Predictions from features (B, T, F) in observation units: image float in [0, 1], state,
        reward, continue_ (probability). Differentiable; wrap in no_grad where that is not needed."""
        out = {"reward": twohot_decode(self.reward(feat), self.bins),
               "continue_": torch.sigmoid(self.continue_(feat).float())}
        if self.image_decoder is not None:
            out["image"] = (self.image_decoder(feat).float() + 0.5).clamp(0.0, 1.0)
        if self.state_decoder is not None:
            out["state"] = symexp(self.state_decoder(feat).float())
        return out

    @torch.no_grad()
    def openloop(self, batch: dict[str, Tensor], context: int, sample: bool = True) -> dict[str, Tensor]:
        """Observe the first `context` steps, then imagine the rest with the batch's true actions.

        Returns (B, T, ...) predictions (see `decode`) for all T steps, posterior-based for t < context
        and prior rollouts after; plus `image_error` (B, T), the per-pixel MSE in [0, 1] units, when
        there are images. Episode starts after `context` are ignored (open loop).
        """
        B, T = batch["is_first"].shape
        assert 0 < context <= T, f"context must be in 1..{T}, got {context}"
        head = {k: v[:, :context] for k, v in batch.items()}
        with self._autocast():
            posterior, _, _ = self.observe(head, None, sample)
            start = {"deter": posterior["deter"][:, -1], "stoch": posterior["stoch"][:, -1]}
            actions = batch["action"][:, context - 1 : T - 1]  # (B, T-context, A): prev actions of the rest
            imagined = self.rssm.imagine_with_actions(start, actions, sample)  # (T-context+1, B, ...)
            deter = torch.cat([posterior["deter"], imagined["deter"][1:].transpose(0, 1)], 1)  # (B, T, D)
            stoch = torch.cat([posterior["stoch"], imagined["stoch"][1:].transpose(0, 1)], 1)  # (B, T, S, K)
            out = self.decode(self.rssm.features({"deter": deter, "stoch": stoch}))
        if "image" in out:
            truth = self.preprocess({"image": batch["image"]})["image"] + 0.5
            out["image_error"] = (out["image"] - truth).square().mean((-3, -2, -1))
        return out
