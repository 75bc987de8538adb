"""Plasticity of the agent's modules: the fraction of dormant units and the effective rank of features.

Both are measured on a probe batch from the replay, with forward hooks, for four modules: the world
model's encoder and RSSM, the actor and the critic.

- Dormant units (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning",
  ReDo, Definition 3.1): unit i of a layer with H units has score
  s_i = E_x |h_i(x)| / ((1/H) sum_k E_x |h_k(x)|); it is tau-dormant when s_i <= tau. The units are the
  outputs of every SiLU inside a module (channels for convolutions, averaged over positions too), and the
  fraction is over all units of the module. The RSSM's GRU and posterior layers apply ``F.silu`` to a
  norm's output; their hooks sit on those norms and apply the same SiLU, so those units count too.
- Effective rank (Roy and Vetterli 2007, "The effective rank: a measure of effective dimensionality";
  used for plasticity by Lyle et al. 2022 and Kumar et al. 2021): for a feature matrix (N, D) with
  singular values sigma, p_k = sigma_k / sum sigma, erank = exp(-sum p_k log p_k), between 1 and
  min(N, D). The features are each module's output representation: the encoder's embedding, the RSSM's
  model state (deter and stoch), and the last hidden layer of the actor and of the critic.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent.plasticity import eager_cell, unit_scores

MODULES = ("encoder", "rssm", "actor", "critic")


def dormant_fraction(activations: list[Tensor], tau: float = 0.025) -> float:
    """Fraction of tau-dormant units over all layers; each tensor is one layer's (N, H) activations.

    ReDo's score of unit i is its mean |activation| over the N inputs divided by the layer's average of
    those means; tau = 0.025 is ReDo's threshold for its Atari experiments (tau = 0 counts exactly dead
    units). A layer whose units are all zero has every unit dormant.
    """
    dormant, total = 0, 0
    for h in activations:
        mean_abs = h.detach().abs().float().mean(0)  # (H,)
        score = unit_scores(mean_abs)  # the scores ReDo (agent.plasticity) recycles by
        dormant += int((score <= tau).sum())
        total += mean_abs.numel()
    return dormant / total if total else float("nan")


def effective_rank(features: Tensor) -> float:
    """exp(entropy of the normalised singular values) of an (N, D) feature matrix (Roy and Vetterli 2007).

    Equals r for a matrix with r equal non-zero singular values; 0 for an all-zero matrix.
    """
    sigma = torch.linalg.svdvals(features.detach().double())
    if sigma.sum() <= 0:
        return 0.0
    p = sigma / sigma.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _units(output: Tensor) -> Tensor:
    """(N, H) units of an activation: channels for (N, C, H, W) conv maps, the last axis otherwise."""
    if output.ndim == 4:
        return output.permute(0, 2, 3, 1).reshape(-1, output.shape[1])  # (N*H*W, C)
    return output.reshape(-1, output.shape[-1])  # (N..., H)


@contextlib.contextmanager
def record_activations(modules: dict[str, nn.Module], gru_norms: dict[str, list[nn.Module]] | None = None
                       ) -> Iterator[dict[str, dict[str, list[Tensor]]]]:
    """Forward hooks on every ``nn.SiLU`` inside each named module (and on the norms in ``gru_norms``,
    whose outputs go through ``F.silu``); yields {module: {layer: [outputs (N, H), one per call]}}.

    A layer called several times (the RSSM cell once per time step) contributes one tensor per call.
    Hooks are removed on exit.
    """
    records: dict[str, dict[str, list[Tensor]]] = {name: defaultdict(list) for name in modules}
    handles = []

    def hook(store: list[Tensor], apply_silu: bool, flatten_blocks: bool):
        def fn(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            out = F.silu(output) if apply_silu else output
            if flatten_blocks:  # block-GRU hidden (B, G, D/G): every block position is its own unit
                out = out.reshape(out.shape[0], -1)
            store.append(_units(out.detach()))
        return fn

    for name, module in modules.items():
        for layer_name, layer in module.named_modules():
            if isinstance(layer, nn.SiLU):
                handles.append(layer.register_forward_hook(hook(records[name][layer_name], False, False)))
        for i, norm in enumerate((gru_norms or {}).get(name, [])):
            handles.append(norm.register_forward_hook(hook(records[name][f"silu_of_norm{i}"], True, True)))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def measure(agent: nn.Module, batch: dict[str, np.ndarray], tau: float = 0.025) -> dict[str, dict[str, float]]:
    """Dormant fraction and effective rank per module on one (B, T) replay batch.

    The world model filters the batch with the latent's mode (``sample=False``), so the measurement
    draws no random numbers and leaves the training run's random streams untouched. Returns
    {module: {"dormant": fraction, "effective_rank": erank}} for ``MODULES``.
    """
    wm, ac = agent.wm, agent.ac
    rssm = wm.rssm
    modules = {"encoder": wm.encoder, "rssm": rssm, "actor": ac.actor, "critic": ac.critic}
    norms = {"rssm": [*rssm.gru_norms, rssm.post_norm]}
    outputs: dict[str, Tensor] = {}

    def keep(name: str):
        def fn(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            outputs[name] = output.detach()
        return fn

    heads = [wm.encoder.register_forward_hook(keep("encoder")),
             ac.actor.body.register_forward_hook(keep("actor")),
             ac.critic.body.register_forward_hook(keep("critic"))]
    try:
        with record_activations(modules, norms) as records, eager_cell(rssm):  # hooks fire in the cell
            data = agent.to_torch(batch)
            posterior, _, _ = wm.observe(data, None, sample=False)
            feat = rssm.features(posterior)  # (B, T, F)
            ac.actor(feat)
            ac.critic(feat)
    finally:
        for handle in heads:
            handle.remove()
    outputs["rssm"] = feat
    result = {}
    for name in MODULES:
        layers = [torch.cat(calls) for calls in records[name].values() if calls]
        features = outputs[name].reshape(-1, outputs[name].shape[-1])  # (B*T, F)
        result[name] = {"dormant": dormant_fraction(layers, tau), "effective_rank": effective_rank(features)}
    return result
