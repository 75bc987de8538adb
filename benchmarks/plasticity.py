"""Plasticity of the agent's modules: the fraction of dormant units and the effective rank of features.

Both are measured on a probe batch from the replay for four modules: the world model's encoder and RSSM,
the actor and the critic.

- Dormant units (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning",
  ReDo, Definition 3.1): unit i of a layer with H units has score
  s_i = E_x |h_i(x)| / ((1/H) sum_k E_x |h_k(x)|); it is tau-dormant when s_i <= tau. The units are those
  ReDo recycles (`agent.plasticity.unit_layers`): the outputs of every SiLU inside a module (channels for
  convolutions, averaged over positions too), the RSSM's ``F.silu`` of its GRU and posterior norms
  included; the fraction is over all units of the module. Their mean |h| comes from the same code that
  scores units for ReDo (`agent.plasticity.mean_activations`).
- Effective rank (Roy and Vetterli 2007, "The effective rank: a measure of effective dimensionality";
  used for plasticity by Lyle et al. 2022 and Kumar et al. 2021): for a feature matrix (N, D) with
  singular values sigma, p_k = sigma_k / sum sigma, erank = exp(-sum p_k log p_k), between 1 and
  min(N, D). The features are each module's output representation: the encoder's embedding, the RSSM's
  model state (deter and stoch), and the last hidden layer of the actor and of the critic.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from agent.plasticity import mean_activations, unit_layers, unit_scores

MODULES = ("encoder", "rssm", "actor", "critic")


def dormant_fraction(mean_abs: list[Tensor], tau: float = 0.025) -> float:
    """Fraction of tau-dormant units over all layers; each tensor is one layer's mean |activation| per unit
    (H,) over a batch.

    ReDo's score of unit i is its mean |activation| divided by the layer's average of those means; tau = 0.025
    is ReDo's threshold for its Atari experiments (tau = 0 counts exactly dead units). A layer whose units
    are all zero has every unit dormant.
    """
    dormant = sum(int((unit_scores(m.float()) <= tau).sum()) for m in mean_abs)
    total = sum(m.numel() for m in mean_abs)
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


@torch.no_grad()
def measure(agent: nn.Module, batch: dict[str, np.ndarray], tau: float = 0.025) -> dict[str, dict[str, float]]:
    """Dormant fraction and effective rank per module on one (B, T) replay batch.

    The world model filters the batch with the latent's mode (``sample=False``), so the measurement
    draws no random numbers and leaves the training run's random streams untouched. Returns
    {module: {"dormant": fraction, "effective_rank": erank}} for ``MODULES``.
    """
    wm, ac = agent.wm, agent.ac
    outputs: dict[str, Tensor] = {}

    def keep(name: str, feat: str | None = None):
        def fn(_module: nn.Module, inputs: tuple, output: Tensor) -> None:
            outputs[name] = output.detach()
            if feat:  # the actor reads the model state: the RSSM's output representation
                outputs[feat] = inputs[0].detach()
        return fn

    hooks = [wm.encoder.register_forward_hook(keep("encoder")),
             ac.actor.body.register_forward_hook(keep("actor", feat="rssm")),
             ac.critic.body.register_forward_hook(keep("critic"))]
    layers = unit_layers(agent)
    try:
        means = mean_activations(agent, layers, batch)  # one forward: world model, actor and critic
    finally:
        for handle in hooks:
            handle.remove()
    return {name: {"dormant": dormant_fraction([means[layer.name] for layer in layers if layer.module == name], tau),
                   "effective_rank": effective_rank(outputs[name].reshape(-1, outputs[name].shape[-1]))}
            for name in MODULES}
