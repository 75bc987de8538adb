"""Recurrent state-space model (RSSM), DreamerV3 style.

State: `deter` (B, D) from a block-diagonal normalised GRU and `stoch` (B, S, K), S one-hot samples
of K-way categoricals with a 1% uniform mix and straight-through gradients. The prior predicts stoch
from deter alone; the posterior also sees the observation embedding.

The recurrent cell follows the structure of DreamerV3's newest public code (our implementation):
deter, stoch and action each go through Linear -> norm -> SiLU to `hidden` units; each of G blocks of
deter, together with those shared inputs, feeds a block-linear hidden layer (norm, SiLU) and block-linear
GRU gates; gates: reset = sigmoid, candidate = tanh(reset * cand), update = sigmoid(update - 1).
Continuous actions are divided by max(1, |a|) (no gradient through the divisor).

`observe` is the hot path: everything that does not depend on the recurrence is computed for all T
before the loop (the action input layer, the embedding's share of the posterior's first layer, the
reset masks, the initial state, all sampling noise), and the prior MLP runs on all T after it. The loop
body is one cell call with static shapes and no RNG, which `torch.compile` can compile.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RSSMConfig
from .math_utils import categorical_mode_st, categorical_sample_st, unimix_dist
from .nets import MLP, make_norm

State = dict[str, Tensor]


class BlockLinear(nn.Module):
    """Block-diagonal linear map on G groups: (..., G, I) -> (..., G, O), one (I, O) weight per group."""

    def __init__(self, groups: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        nn.init.uniform_(self.weight, -in_features**-0.5, in_features**-0.5)
        self.bias = nn.Parameter(torch.zeros(groups, out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """(B, G, I) -> (B, G, O)."""
        x = x.transpose(0, 1)  # (G, B, I): one matmul per group, the bias added by the same op
        out = torch.bmm(x, self.weight) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)
        return out.transpose(0, 1)  # (B, G, O)


class RSSM(nn.Module):
    """Deterministic block-GRU path + stochastic categorical latent; see the module docstring.

    State dicts: `deter` (..., D), `stoch` (..., S, K); outputs of `observe`/`img_step` add `logits`
    (..., S, K), the unimix log-probabilities. `generator`, when set, drives all sampling noise.
    """

    def __init__(self, embed_dim: int, action_dim: int, cfg: RSSMConfig, norm: str = "layer"):
        super().__init__()
        self.cfg = cfg
        D, h, S, K, G = cfg.deter, cfg.hidden, cfg.stoch, cfg.classes, cfg.blocks
        self.D, self.S, self.K, self.G = D, S, K, G
        self.generator: torch.Generator | None = None
        # Inputs of the recurrent cell.
        self.deter_in = MLP(D, h, 1, norm)
        self.stoch_in = MLP(S * K, h, 1, norm)
        self.action_in = MLP(action_dim, h, 1, norm)
        # Block GRU: per group, [deter block, shared 3h inputs] -> hidden -> gates. The shared inputs'
        # share of the first block layer is one ordinary Linear, so they are not copied G times.
        self.gru_shared = nn.Linear(3 * h, D, bias=False)
        self.gru_block_in = BlockLinear(G, D // G, D // G, bias=False)
        self.gru_hidden = nn.ModuleList(BlockLinear(G, D // G, D // G, bias=False)
                                        for _ in range(cfg.dyn_layers - 1))
        self.gru_norms = nn.ModuleList(make_norm(norm, D // G) for _ in range(cfg.dyn_layers))
        self.gru_gates = BlockLinear(G, D // G, 3 * D // G)
        # Prior: deter -> logits.
        self.prior_mlp = MLP(D, h, cfg.prior_layers, norm)
        self.prior_out = nn.Linear(h, S * K)
        # Posterior: [deter, embed] -> logits; the first layer is split so the embed part is hoisted.
        self.post_deter = nn.Linear(D, h, bias=False)
        self.post_embed = nn.Linear(embed_dim, h, bias=False)
        self.post_norm = make_norm(norm, h)
        self.post_mlp = MLP(h, h, cfg.posterior_layers - 1, norm)
        self.post_out = nn.Linear(h, S * K)
        if cfg.initial == "learned":
            self.initial_deter = nn.Parameter(torch.zeros(D))
        self._cell = (torch.compile(self._observe_cell, dynamic=False, mode=cfg.compile_mode) if cfg.compile
                      else self._observe_cell)

    # ----------------------------------------------------------------------------------------- pieces

    def initial(self, B: int) -> State:
        """Initial state for B rows. "learned": deter = tanh(w) for a learned w, stoch = the prior's
        mode at that deter (DreamerV3 paper). "zero": both zero (DreamerV3's newest code)."""
        device = self.prior_out.weight.device
        if self.cfg.initial == "zero":
            return {"deter": torch.zeros(B, self.D, device=device),
                    "stoch": torch.zeros(B, self.S, self.K, device=device)}
        deter = torch.tanh(self.initial_deter)  # (D,)
        stoch = categorical_mode_st(self._prior_logits(deter))  # (S, K)
        return {"deter": deter.expand(B, -1), "stoch": stoch.expand(B, -1, -1)}

    def features(self, state: State) -> Tensor:
        """concat(deter, flattened stoch): (..., D + S*K)."""
        return torch.cat([state["deter"], state["stoch"].flatten(-2)], -1)

    @property
    def feat_dim(self) -> int:
        """Size of `features`."""
        return self.D + self.S * self.K

    def _action_input(self, action: Tensor) -> Tensor:
        """(..., A) -> (..., h), with actions scaled into [-1, 1] as DreamerV3 does."""
        action = action / torch.clamp(action.abs(), min=1.0).detach()
        return self.action_in(action)

    def _core(self, deter: Tensor, stoch_flat: Tensor, action_in: Tensor) -> Tensor:
        """One block-GRU step: deter (B, D), stoch (B, S*K), action input (B, h) -> new deter (B, D)."""
        B, G = deter.shape[0], self.G
        shared = torch.cat([self.deter_in(deter), self.stoch_in(stoch_flat), action_in], -1)  # (B, 3h)
        blocks = deter.view(B, G, -1)  # (B, G, D/G)
        x = self.gru_block_in(blocks) + self.gru_shared(shared).view(B, G, -1)  # (B, G, D/G)
        x = F.silu(self.gru_norms[0](x))
        for layer, norm in zip(self.gru_hidden, self.gru_norms[1:]):
            x = F.silu(norm(layer(x)))
        reset, cand, update = self.gru_gates(x).chunk(3, -1)  # 3 x (B, G, D/G)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)
        # update * cand + (1 - update) * blocks, in one op (and fewer in the backward). Under autocast the
        # gates come out of bf16 matmuls: the state keeps its own dtype (float32).
        return torch.lerp(blocks, cand.to(blocks.dtype), update.to(blocks.dtype)).reshape(B, -1)  # (B, D)

    def _prior_logits(self, deter: Tensor) -> Tensor:
        """(..., D) -> unimix log-probabilities (..., S, K)."""
        return self._prior_dist(deter)[0]

    def _prior_dist(self, deter: Tensor) -> tuple[Tensor, Tensor | None]:
        """(..., D) -> unimix log-probabilities (..., S, K) and their probabilities (None without unimix)."""
        logits = self.prior_out(self.prior_mlp(deter))
        return unimix_dist(logits.unflatten(-1, (self.S, self.K)), self.cfg.unimix)

    def _posterior_dist(self, deter: Tensor, embed_in: Tensor) -> tuple[Tensor, Tensor | None]:
        """deter (B, D), precomputed embed share (B, h) -> unimix log-probabilities (B, S, K) and their
        probabilities (None without unimix)."""
        x = F.silu(self.post_norm(self.post_deter(deter) + embed_in))
        logits = self.post_out(self.post_mlp(x))
        return unimix_dist(logits.unflatten(-1, (self.S, self.K)), self.cfg.unimix)

    def _noise(self, *shape: int) -> Tensor:
        """Uniform noise (..., 1) for inverse-CDF sampling, from `generator` if set."""
        return torch.rand(*shape, 1, device=self.prior_out.weight.device, generator=self.generator)

    def _sample(self, logits: Tensor, noise: Tensor | None, probs: Tensor | None = None) -> Tensor:
        return categorical_mode_st(logits) if noise is None else categorical_sample_st(logits, noise, probs)

    # ----------------------------------------------------------------------------------------- observe

    def _observe_cell(self, deter: Tensor, stoch: Tensor, action_in: Tensor, embed_in: Tensor,
                      noise: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """One posterior step on (B, ...) tensors (already reset where an episode starts): GRU step,
        posterior sample. Returns deter (B, D), stoch (B, S*K), posterior logits (B, S, K)."""
        deter = self._core(deter, stoch, action_in)
        logits, probs = self._posterior_dist(deter, embed_in)
        stoch = self._sample(logits, noise, probs).flatten(1)
        return deter, stoch, logits

    def observe(self, embed: Tensor, prev_action: Tensor, is_first: Tensor, state: State | None = None,
                sample: bool = True) -> tuple[State, State]:
        """Filter a sequence: posterior and prior states for every step.

        embed (B, T, E); prev_action (B, T, A): the action taken before step t (action_{t-1});
        is_first (B, T) bool: at those steps the state resets to `initial` and prev_action is zeroed;
        state: the state before step 0 (None: `initial`). sample=False uses the mode (deterministic).
        Returns (posterior, prior), each {deter (B, T, D), stoch (B, T, S, K), logits (B, T, S, K)};
        prior[t] is the prediction of step t from posterior[t-1] and prev_action[t] (same deter).
        """
        B, T, _ = embed.shape
        init = self.initial(B)
        state = init if state is None else state
        # Hoisted out of the time loop: everything that does not depend on the recurrence.
        prev_action = prev_action * (~is_first).unsqueeze(-1).to(prev_action.dtype)
        action_in = self._action_input(prev_action).transpose(0, 1)  # (T, B, h)
        embed_in = self.post_embed(embed).transpose(0, 1)  # (T, B, h)
        first = is_first.transpose(0, 1).unsqueeze(-1)  # (T, B, 1)
        noise = self._noise(T, B, self.S) if sample else None  # (T, B, S, 1)
        init_deter, init_stoch = init["deter"], init["stoch"].flatten(1)
        deter, stoch = state["deter"], state["stoch"].flatten(1)  # (B, D), (B, S*K)
        # Which steps reset any row, read once: steps without a reset skip the two `where`s (and their
        # backward), which would return their input unchanged.
        resets = is_first.any(0).tolist()  # T bools
        action_in, embed_in, first = action_in.unbind(0), embed_in.unbind(0), first.unbind(0)  # T x (B, ...)
        noise = [None] * T if noise is None else noise.unbind(0)
        deters, stochs, logits = [], [], []
        for t in range(T):
            if resets[t]:
                deter = torch.where(first[t], init_deter, deter)
                stoch = torch.where(first[t], init_stoch, stoch)
            deter, stoch, logit = self._cell(deter, stoch, action_in[t], embed_in[t], noise[t])
            deters.append(deter)
            stochs.append(stoch)
            logits.append(logit)
        deter_seq = torch.stack(deters, 1)  # (B, T, D)
        posterior = {"deter": deter_seq, "stoch": torch.stack(stochs, 1).unflatten(-1, (self.S, self.K)),
                     "logits": torch.stack(logits, 1)}
        prior_logits, prior_probs = self._prior_dist(deter_seq)  # (B, T, S, K), all steps in one batch
        prior_noise = self._noise(B, T, self.S) if sample else None
        prior = {"deter": deter_seq, "stoch": self._sample(prior_logits, prior_noise, prior_probs),
                 "logits": prior_logits}
        return posterior, prior

    def obs_step(self, state: State, prev_action: Tensor, embed: Tensor, is_first: Tensor,
                 sample: bool = True) -> tuple[State, State]:
        """One online step, the same code path as `observe` with T = 1.

        state {deter (B, D), stoch (B, S, K)}; prev_action (B, A); embed (B, E); is_first (B,).
        Returns (posterior, prior) of (B, ...) tensors.
        """
        posterior, prior = self.observe(
            embed[:, None], prev_action[:, None], is_first[:, None], state, sample)
        return ({k: v[:, 0] for k, v in posterior.items()}, {k: v[:, 0] for k, v in prior.items()})

    # ----------------------------------------------------------------------------------------- imagine

    def img_step(self, state: State, action: Tensor, sample: bool = True) -> State:
        """Prior step: state {deter (N, D), stoch (N, S, K)}, action (N, A) -> {deter, stoch, logits}."""
        deter = self._core(state["deter"], state["stoch"].flatten(1), self._action_input(action))
        logits, probs = self._prior_dist(deter)
        noise = self._noise(deter.shape[0], self.S) if sample else None
        return {"deter": deter, "stoch": self._sample(logits, noise, probs), "logits": logits}

    def imagine(self, start: State, policy: Callable[[State], Tensor], horizon: int,
                sample: bool = True) -> State:
        """Roll the prior forward under `policy` for `horizon` steps.

        start: {deter (N, D), stoch (N, S, K)} (other keys ignored); policy: state dict of (N, ...) ->
        action (N, A). Returns {deter (H+1, N, D), stoch (H+1, N, S, K), action (H+1, N, A)}; row 0 is
        the start, action[h] = policy(state h), so action[H] is the policy's action at the last state
        (never executed; available for the actor loss).
        """
        state = {"deter": start["deter"], "stoch": start["stoch"]}
        deters, stochs, actions = [state["deter"]], [state["stoch"]], []
        for _ in range(horizon):
            action = policy(state)
            actions.append(action)
            nxt = self.img_step(state, action, sample)
            state = {"deter": nxt["deter"], "stoch": nxt["stoch"]}
            deters.append(state["deter"])
            stochs.append(state["stoch"])
        actions.append(policy(state))
        return {"deter": torch.stack(deters), "stoch": torch.stack(stochs), "action": torch.stack(actions)}

    def imagine_with_actions(self, start: State, actions: Tensor, sample: bool = True) -> State:
        """Open-loop prediction under given actions: start {deter (N, D), stoch (N, S, K)}, actions
        (N, H, A), actions[:, h] applied at state h. Returns {deter (H+1, N, D), stoch (H+1, N, S, K),
        logits (H, N, S, K)} with row 0 the start (logits are those of rows 1..H)."""
        N, H, _ = actions.shape
        action_in = self._action_input(actions).transpose(0, 1)  # (H, N, h), hoisted
        deter, stoch = start["deter"], start["stoch"].flatten(1)
        deters, stochs, logits = [deter], [start["stoch"]], []
        for h in range(H):
            deter = self._core(deter, stoch, action_in[h])
            logit, probs = self._prior_dist(deter)
            sample_h = self._sample(logit, self._noise(N, self.S) if sample else None, probs)  # (N, S, K)
            stoch = sample_h.flatten(1)
            deters.append(deter)
            stochs.append(sample_h)
            logits.append(logit)
        logits_seq = torch.stack(logits) if logits else deter.new_zeros(0, N, self.S, self.K)
        return {"deter": torch.stack(deters), "stoch": torch.stack(stochs), "logits": logits_seq}
