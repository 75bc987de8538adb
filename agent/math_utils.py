"""Pure math helpers shared by the world model and the actor-critic.

Sources of the ideas (the code is ours): symlog/symexp, symlog two-hot regression with 255 bins,
1% uniform mix in categoricals, percentile return normalisation: DreamerV3 (Hafner et al. 2023).
lambda-returns: Sutton & Barto, TD(lambda); the recursive form as used by Dreamer (Hafner et al. 2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def symlog(x: Tensor) -> Tensor:
    """sign(x) * log(1 + |x|): compresses large magnitudes, identity-like near 0."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """Inverse of `symlog`: sign(x) * (exp(|x|) - 1)."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def symlog_bins(num: int = 255, bin_range: float = 20.0, device: torch.device | str | None = None) -> Tensor:
    """An odd number `num` of bin centres uniformly spaced in symlog space on [-bin_range, bin_range],
    exactly symmetric with an exact 0 in the middle."""
    assert num % 2 == 1 and num >= 3, f"num must be odd and >= 3, got {num}"
    half = torch.linspace(-bin_range, 0.0, (num + 1) // 2, device=device)
    return torch.cat([half, -half[:-1].flip(0)])


def _twohot_weights(x: Tensor, bins: Tensor) -> tuple[Tensor, Tensor]:
    """The lower of the two bins around each ``x`` (clamped into the range) and the upper one's weight."""
    K = bins.shape[0]
    x = x.clamp(bins[0], bins[-1])
    below = (torch.searchsorted(bins, x.contiguous(), right=True) - 1).clamp(0, K - 2)  # (...)
    return below, (x - bins[below]) / (bins[below + 1] - bins[below])


def twohot_encode(x: Tensor, bins: Tensor) -> Tensor:
    """Two-hot encoding of `x` (..., ) onto sorted `bins` (K,) -> (..., K).

    `x` is in the same space as `bins` (for the symlog two-hot loss pass `symlog(value)`). The two
    neighbouring bins get weights proportional to closeness, so the expected bin value equals x
    inside the range; values outside the range go entirely to the end bin.
    """
    below, w_hi = _twohot_weights(x, bins)
    out = torch.zeros(*x.shape, bins.shape[0], dtype=x.dtype, device=x.device)
    out.scatter_(-1, below.unsqueeze(-1), (1.0 - w_hi).unsqueeze(-1))
    out.scatter_add_(-1, (below + 1).unsqueeze(-1), w_hi.unsqueeze(-1))
    return out


def twohot_decode(logits: Tensor, bins: Tensor) -> Tensor:
    """symexp of the expected bin value under softmax(logits): (..., K) -> (...).

    `bins` are symmetric around an exact 0 (`symlog_bins`), so the expectation is
    sum_i bins[i] * (p[i] - p[K-1-i]) over the lower half: uniform probabilities (zero-initialised
    logits) decode to exactly 0, as DreamerV3 ensures, and it is one matrix-vector product.
    """
    probs = torch.softmax(logits.float(), -1)
    m = bins.shape[0] // 2
    mirrored = probs[..., :m] - probs[..., m + 1 :].flip(-1)  # (..., m): p[i] - p[K-1-i]
    return symexp(mirrored @ bins[:m])


def symlog_twohot_loss(logits: Tensor, target: Tensor, bins: Tensor, lse: Tensor | None = None) -> Tensor:
    """Cross-entropy of `logits` (..., K) against two-hot(symlog(target)) for raw `target` (...) -> (...).

    Only the two target bins have weight, so it is logsumexp(logits) minus their weighted logits: the
    same number as the dense sum over K, without building the (..., K) two-hot tensor. `lse`, optional:
    logsumexp(logits.float(), -1) already computed, for several targets of the same logits.
    """
    below, w_hi = _twohot_weights(symlog(target.float()), bins)
    logits = logits.float()
    picked = logits.gather(-1, torch.stack([below, below + 1], -1))  # (..., 2)
    lse = torch.logsumexp(logits, -1) if lse is None else lse
    return lse - ((1.0 - w_hi) * picked[..., 0] + w_hi * picked[..., 1])


def lambda_return(
    reward: Tensor, value: Tensor, continue_: Tensor, bootstrap: Tensor, lambda_: float, discount: float,
    cut: Tensor | None = None,
) -> Tensor:
    """TD(lambda) returns, time on the FIRST axis: inputs (H, ...), `bootstrap` (...), output (H, ...).

    Alignment, for a trajectory of states s_0..s_H:
      value[t]     = V(s_t)                       for t = 0..H-1 (value[0] is used only where cut[0])
      reward[t]    = reward of the transition s_t -> s_{t+1}
      continue_[t] = 1 if s_{t+1} is not terminal (0 stops the return after reward[t])
      bootstrap    = V(s_H)
      cut[t]       = True where there is no transition s_t -> s_{t+1} (optional): R_t = value[t] there
    and, with v_{t+1} = value[t+1] for t < H-1 and v_H = bootstrap,
      R_t = reward[t] + discount * continue_[t] * ((1 - lambda_) * v_{t+1} + lambda_ * R_{t+1}),  R_H = v_H.
    With an imagined trajectory (H+1, N) whose reward/continue are predicted AT each state (DreamerV3's
    convention: rew[t] = reward on arriving at s_t), call it as
      lambda_return(rew[1:], val[:-1], con[1:], val[-1], lambda_, discount).
    """
    H = reward.shape[0]
    next_value = torch.cat([value[1:], bootstrap.unsqueeze(0)], 0)
    factor = discount * continue_
    base = reward + factor * (1.0 - lambda_) * next_value
    # Per-step slices taken once (unbind) and R_t = base_t + decay_t * R_{t+1} in one op (addcmul).
    base, decay = base.unbind(0), (factor * lambda_).unbind(0)
    if cut is not None:
        cut, value = cut.unbind(0), value.unbind(0)
    out = []
    ret = bootstrap
    for t in reversed(range(H)):
        ret = torch.addcmul(base[t], decay[t], ret)
        if cut is not None:  # no transition s_t -> s_{t+1}: the return there is the state's value
            ret = torch.where(cut[t], value[t], ret)
        out.append(ret)
    return torch.stack(out[::-1], 0)


def replay_lambda_return(reward: Tensor, value: Tensor, is_first: Tensor, is_terminal: Tensor, lambda_: float,
                         discount: float) -> tuple[Tensor, Tensor]:
    """TD(lambda) returns along replayed sequences that may cross episode boundaries, time FIRST.

    Inputs (T, ...) in the replay's convention: reward[t] received on arriving at state t, is_first[t] and
    is_terminal[t] of state t, value[t] = V(s_t). Returns ``(ret, inside)``, both (T-1, ...): for t < T-1,
      R_t = reward[t+1] + discount * (1 - is_terminal[t+1]) * ((1 - lambda_) * value[t+1] + lambda_ * R_{t+1})
    with R_{T-1} = value[T-1]; where state t+1 starts a new episode (``inside[t]`` False) there is no
    transition, R_t = value[t], and that state should get no target.
    """
    inside = ~is_first[1:].bool()  # the transition t -> t+1 stays within one episode
    ret = lambda_return(reward[1:], value[:-1], 1.0 - is_terminal[1:].float(), value[-1], lambda_, discount,
                        cut=~inside)
    return ret, inside


class ReturnNormalizer(nn.Module):
    """Scale for advantages: max(floor, EMA(P95) - EMA(P5)) of the returns seen (DreamerV3).

    The EMAs start at 0 and update as low <- decay * low + (1 - decay) * P5(returns). The floor of 1
    keeps small returns from being blown up. Buffers make it follow `.to(device)` and `state_dict`.
    """

    def __init__(self, decay: float = 0.99, low: float = 5.0, high: float = 95.0, floor: float = 1.0):
        super().__init__()
        self.decay, self.q_low, self.q_high, self.floor = decay, low / 100.0, high / 100.0, floor
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @torch.no_grad()
    def update(self, returns: Tensor) -> None:
        """Fold the percentiles of a batch of `returns` (any shape) into the EMAs."""
        flat = returns.detach().float().reshape(-1)
        quantiles = torch.quantile(flat, torch.tensor([self.q_low, self.q_high], device=flat.device))
        self.low.mul_(self.decay).add_((1.0 - self.decay) * quantiles[0])
        self.high.mul_(self.decay).add_((1.0 - self.decay) * quantiles[1])

    def scale(self) -> Tensor:
        """The current scale, a scalar tensor >= floor."""
        return torch.clamp(self.high - self.low, min=self.floor)

    def forward(self, x: Tensor) -> Tensor:
        """x / scale (for advantages, which are already differences of returns)."""
        return x / self.scale()


# --------------------------------------------------------------------------------------------- categoricals


def unimix_logits(logits: Tensor, unimix: float) -> Tensor:
    """Logits (..., K) of (1 - unimix) * softmax(logits) + unimix / K, as log-probabilities."""
    return unimix_dist(logits, unimix)[0]


def unimix_dist(logits: Tensor, unimix: float) -> tuple[Tensor, Tensor | None]:
    """`unimix_logits` and the probabilities they are the log of (None without a mix), so that a
    sampler can take them as they are instead of a softmax of the log-probabilities."""
    if unimix <= 0.0:
        return F.log_softmax(logits, -1), None
    probs = torch.softmax(logits, -1)
    probs = (1.0 - unimix) * probs + unimix / logits.shape[-1]
    return torch.log(probs), probs


def categorical_sample_st(logits: Tensor, noise: Tensor, probs: Tensor | None = None) -> Tensor:
    """One-hot sample (..., K) of Categorical(logits) with straight-through gradients.

    `noise` (..., 1) is uniform on [0, 1): the sample is the first class whose CDF exceeds it
    (inverse-CDF sampling, exact, one random number per categorical). Passing the noise in keeps
    this function free of RNG state, so the RSSM can draw all noise before its time loop.
    Forward value: the one-hot sample; gradient: that of the probabilities. `probs`, when given, are
    softmax(logits) already (e.g. from `unimix_dist`): the same values up to rounding and the same
    gradient with respect to whatever produced them, without another softmax.
    """
    probs = torch.softmax(logits, -1) if probs is None else probs
    cdf = probs.detach().cumsum(-1)
    # The number of CDF entries <= noise: the CDF is sorted, so one binary search per row.
    index = torch.searchsorted(cdf, noise, right=True).clamp_max_(logits.shape[-1] - 1)  # (..., 1)
    # The one-hot minus the probabilities is a constant; adding the probabilities back carries the gradient.
    onehot = torch.zeros_like(cdf).scatter_(-1, index, 1.0)
    return probs + onehot.sub_(probs.detach())


def categorical_mode_st(logits: Tensor) -> Tensor:
    """One-hot argmax (..., K) with straight-through gradients of the probabilities."""
    probs = torch.softmax(logits, -1)
    onehot = F.one_hot(probs.argmax(-1), logits.shape[-1]).to(probs.dtype)
    return onehot + probs - probs.detach()


def categorical_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(p || q) between categoricals over the last axis: (..., K) -> (...)."""
    log_p = F.log_softmax(logits_p.float(), -1)
    log_q = F.log_softmax(logits_q.float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def categorical_entropy(logits: Tensor) -> Tensor:
    """Entropy over the last axis: (..., K) -> (...)."""
    log_p = F.log_softmax(logits.float(), -1)
    return -(log_p.exp() * log_p).sum(-1)
