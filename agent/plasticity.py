"""Methods that keep the agent's networks trainable: shrink-and-perturb and ReDo, applied per module.

Both change parameters in place and reset the Adam state of what they change. "A fresh initialisation"
is a freshly built agent with the same config and another seed (``fresh_seed``), so every parameter gets
exactly the initialiser the agent itself uses: PyTorch's uniform Linear/Conv init, the RSSM's block-linear
init, norm scale 1 and shift 0, the zero-initialised critic and reward heads.

Shrink-and-perturb (Ash and Adams 2020, "On Warm-Starting Neural Network Training"): every parameter of a
module moves to ``shrink * theta + perturb * theta_fresh``. The authors' code (JordanAsh/warm_start,
``run.py``) uses a fresh network as the noise source, as here, and starts a new optimizer after each
shrink-perturb; so the whole module's Adam state is reset: both moments and the step count set to zero, which
is what a new Adam would hold. With the critic, the slow critic gets the same map (with the fresh critic),
so it stays the running average of what the critic has been, and its regulariser does not pull the change
back.

ReDo (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning"): on a batch, unit
i of a layer with H units has score s_i = mean |h_i| / ((1/H) sum_k mean |h_k|) (``unit_scores``, the
definition ``benchmarks.plasticity.dormant_fraction`` counts with); every unit with s_i <= tau is recycled:
its incoming entries take fresh values, its outgoing entries become zero, and the Adam moments of both are
zeroed while the step count (one per parameter tensor) is kept, as ReDo's own code does
(google/dopamine, ``labs/redo/weight_recyclers.py``). Incoming entries are reset first, then outgoing ones,
so an entry that is both (the next layer's row of a recycled unit reading a recycled unit) ends at zero.

Units are the outputs of every SiLU inside a module (``unit_layers`` lists them; the benchmark's dormant
fraction counts the same ones):
- Linear (no bias) -> norm -> SiLU (``nets.MLP``, the RSSM's input layers, the posterior's first layer; for
  convolutions channels, with ``ChannelNorm``): unit i's incoming entries are row i of the Linear (output
  channel i of the conv) AND the norm's scale and shift at i. The norm sits between the Linear and the
  SiLU, so h_i = silu(scale_i * normalised_i + shift_i): a unit goes dormant through its scale and shift as
  much as through its row, and a recycled unit starts again at scale 1, shift 0. Its outgoing entries are
  column i of the next layer's weight, which reads the SiLU's output directly (the next layer's own norm
  comes after that weight and is not touched). For the encoder's last layer the next layer is the RSSM's
  ``post_embed`` (the embedding's columns, after the image part; a conv channel owns its H*W flattened
  columns); for the RSSM's three input layers it is ``gru_shared`` (columns i, h+i, 2h+i); for the actor
  and critic bodies, their heads.
- The block GRU's hidden layers (``gru_block_in`` plus ``gru_shared``, then ``gru_hidden``, each followed by
  a norm over D/G and ``F.silu``): unit (g, j) is position j of block g. Incoming: column j of block g of
  the block-linear weight, and row g*D/G+j of ``gru_shared`` for the first layer; the norm is one (D/G,)
  norm shared by all G blocks, so its scale and shift at j are reset only when unit j is dormant in every
  block. Outgoing: row j of block g of the next block-linear weight (the gates' for the last layer).
- The posterior's first layer (``post_deter`` + ``post_embed`` -> ``post_norm`` -> ``F.silu``): incoming are
  row i of both Linears and the norm at i; outgoing the next posterior layer's column i.
- The patch encoder's Transformer MLPs (Linear with bias -> SiLU -> Linear, no norm): row i and bias i in,
  column i of the second Linear out.
With a norm in the layer, zeroing the outgoing weights does not leave the network's output exactly as it
was (ReDo's aim): the recycled unit's new pre-norm value also moves the norm's mean and variance, which
every unit of that layer shares.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .agent import Agent
from .config import PlasticityConfig
from .distributed import all_gather_flat, world_size
from .nets import CNNEncoder, PatchVideoEncoder

MaskFn = Callable[[Tensor, torch.Size], Tensor]  # unit mask (H,) bool, parameter shape -> entry mask (shape)


def fresh_seed(seed: int, index: int) -> int:
    """The seed of the fresh initialisation of a run's ``index``-th application (0, 1, ...): a function of
    the run's seed and the index only, so a resumed run and every data-parallel rank draw the same one."""
    return int(np.random.SeedSequence([seed, index, 1]).generate_state(1)[0])


def modules_of(agent: nn.Module) -> dict[str, nn.Module]:
    """The agent's modules that the methods apply to, by the names of ``PLASTICITY_MODULES``."""
    return {"encoder": agent.wm.encoder, "rssm": agent.wm.rssm, "actor": agent.ac.actor, "critic": agent.ac.critic}


def unit_scores(mean_abs: Tensor) -> Tensor:
    """ReDo's scores (H,) from each unit's mean |activation| (H,): divided by the layer's mean of those; all
    zero when the whole layer is silent (every unit then counts as dormant)."""
    layer_mean = mean_abs.mean()
    return mean_abs / layer_mean if layer_mean > 0 else torch.zeros_like(mean_abs)


# --------------------------------------------------------------------------------------------- units


def _rows(m: Tensor, shape: torch.Size) -> Tensor:
    """Axis 0 per unit: a Linear's rows, a conv's output channels, a bias or a norm's vectors."""
    return m.view(-1, *[1] * (len(shape) - 1)).expand(shape)


def _cols(offset: int = 0, repeat: int = 1) -> MaskFn:
    """Axis 1 per unit from ``offset``, ``repeat`` entries each: a Linear's input columns (a flattened conv
    map's H*W columns per channel), a conv's input channels."""
    def fn(m: Tensor, shape: torch.Size) -> Tensor:
        full = torch.zeros(shape[1], dtype=torch.bool, device=m.device)
        full[offset: offset + m.numel() * repeat] = m.repeat_interleave(repeat)
        return full.view(1, -1, *[1] * (len(shape) - 2)).expand(shape)
    return fn


def _block_in(groups: int) -> MaskFn:
    """A block-linear weight (G, I, J) that produces unit g*J + j: its column j of block g."""
    return lambda m, shape: m.view(groups, 1, -1).expand(shape)


def _block_out(groups: int) -> MaskFn:
    """A block-linear weight (G, J, O) that reads unit g*J + j: its row j of block g."""
    return lambda m, shape: m.view(groups, -1, 1).expand(shape)


def _shared_norm(groups: int) -> MaskFn:
    """A (J,) norm shared by G blocks: entry j only where unit j is dormant in every block."""
    return lambda m, shape: m.view(groups, -1).all(0)


@dataclass
class UnitLayer:
    """One layer of units: where its activations are read and which parameter entries each unit owns.

    ``source``'s forward output, after ``F.silu`` when ``silu`` (the RSSM's norms), holds the units on its
    last axis (the channel axis of NCHW maps; with ``blocks``, a block GRU's (B, G, D/G) is flattened to
    G*D/G units). Parameter names are those of ``agent.named_parameters()``.
    """

    module: str
    name: str
    source: nn.Module
    silu: bool
    incoming: list[tuple[str, MaskFn]]
    outgoing: list[tuple[str, MaskFn]] = field(default_factory=list)
    blocks: bool = False


def _params_of(module: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name, _ in module.named_parameters()]


def _chain(module: str, net: nn.Sequential, prefix: str, consumer: list[tuple[str, MaskFn]]) -> list[UnitLayer]:
    """(Linear or Conv without bias, norm, SiLU) triples in ``net``; the last layer's outgoing weights are
    ``consumer``'s."""
    n = len(net) // 3
    layers = []
    for k in range(n):
        layer, norm, silu = net[3 * k: 3 * k + 3]
        assert isinstance(silu, nn.SiLU) and layer.bias is None, f"{prefix}: not a (Linear, norm, SiLU) chain"
        norm_params = _params_of(norm, f"{prefix}.{3 * k + 1}")
        incoming = [(f"{prefix}.{3 * k}.weight", _rows), *[(p, _rows) for p in norm_params]]
        outgoing = [(f"{prefix}.{3 * k + 3}.weight", _cols())] if k < n - 1 else consumer
        layers.append(UnitLayer(module, f"{prefix}.{3 * k}", silu, False, incoming, outgoing))
    return layers


def _encoder_layers(encoder: nn.Module) -> list[UnitLayer]:
    embed_user = "wm.rssm.post_embed.weight"  # the only reader of the embedding
    layers, offset = [], 0
    if isinstance(encoder.image, CNNEncoder):
        channels = encoder.image.net[-3].out_channels
        per_channel = encoder.image.out_dim // channels  # the last map's H*W, flattened channel-major
        layers += _chain("encoder", encoder.image.net, "wm.encoder.image.net", [(embed_user, _cols(0, per_channel))])
    elif isinstance(encoder.image, PatchVideoEncoder):
        for b, block in enumerate(encoder.image.blocks):
            at = f"wm.encoder.image.blocks.{b}.mlp"
            incoming = [(f"{at}.0.weight", _rows), (f"{at}.0.bias", _rows)]
            layers.append(UnitLayer("encoder", f"{at}.0", block.mlp[1], False, incoming, [(f"{at}.2.weight", _cols())]))
    if encoder.image is not None:
        offset = encoder.image.out_dim
    if encoder.state is not None:
        layers += _chain("encoder", encoder.state.mlp.net, "wm.encoder.state.mlp.net", [(embed_user, _cols(offset))])
    return layers


def _rssm_layers(rssm: nn.Module) -> list[UnitLayer]:
    at, h, G = "wm.rssm", rssm.cfg.hidden, rssm.G
    shared = f"{at}.gru_shared.weight"
    layers = []
    for i, name in enumerate(("deter_in", "stoch_in", "action_in")):  # concatenated into gru_shared's input
        layers += _chain("rssm", getattr(rssm, name).net, f"{at}.{name}.net", [(shared, _cols(i * h))])
    linears = ["gru_block_in", *[f"gru_hidden.{k}" for k in range(len(rssm.gru_hidden))], "gru_gates"]
    for k, norm in enumerate(rssm.gru_norms):
        incoming = [(f"{at}.{linears[k]}.weight", _block_in(G)), *([(shared, _rows)] if k == 0 else []),
                    *[(p, _shared_norm(G)) for p in _params_of(norm, f"{at}.gru_norms.{k}")]]
        layers.append(UnitLayer("rssm", f"{at}.gru_norms.{k}", norm, True, incoming,
                                [(f"{at}.{linears[k + 1]}.weight", _block_out(G))], blocks=True))
    post_next = f"{at}.post_mlp.net.0.weight" if len(rssm.post_mlp.net) else f"{at}.post_out.weight"
    layers.append(UnitLayer("rssm", f"{at}.post_norm", rssm.post_norm, True,
                            [(f"{at}.post_deter.weight", _rows), (f"{at}.post_embed.weight", _rows),
                             *[(p, _rows) for p in _params_of(rssm.post_norm, f"{at}.post_norm")]],
                            [(post_next, _cols())]))
    layers += _chain("rssm", rssm.post_mlp.net, f"{at}.post_mlp.net", [(f"{at}.post_out.weight", _cols())])
    layers += _chain("rssm", rssm.prior_mlp.net, f"{at}.prior_mlp.net", [(f"{at}.prior_out.weight", _cols())])
    return layers


def unit_layers(agent: nn.Module) -> list[UnitLayer]:
    """Every layer of units of the encoder, RSSM, actor and critic (see the module docstring)."""
    ac = agent.ac
    return [*_encoder_layers(agent.wm.encoder), *_rssm_layers(agent.wm.rssm),
            *_chain("actor", ac.actor.body.net, "ac.actor.body.net", [("ac.actor.head.weight", _cols())]),
            *_chain("critic", ac.critic.body.net, "ac.critic.body.net", [("ac.critic.head.weight", _cols())])]


@contextlib.contextmanager
def eager_cell(rssm: nn.Module) -> Iterator[None]:
    """Run the RSSM's observe cell uncompiled (``rssm.compile``), so forward hooks inside it fire."""
    cell = getattr(rssm, "_cell", None)
    if cell is None or not hasattr(rssm, "_observe_cell"):
        yield
        return
    rssm._cell = rssm._observe_cell
    try:
        yield
    finally:
        rssm._cell = cell


@torch.no_grad()
def mean_activations(agent: nn.Module, layers: list[UnitLayer], batch: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Each layer's mean |unit output| (H,) over every row and step of a (B, T) replay batch, averaged over
    data-parallel ranks (so every rank recycles the same units).

    The world model filters the batch with the latent's mode and the actor and critic read its posterior
    features; no random numbers are drawn. ``benchmarks.plasticity.measure`` counts dormant units from these
    means too.
    """
    sums: dict[str, list] = {layer.name: [0.0, 0] for layer in layers}
    handles = []

    def hook(name: str, silu: bool, blocks: bool):
        def fn(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            out = F.silu(output) if silu else output
            if out.ndim == 4:  # (N, C, H, W) conv map: channels are the units
                out = out.movedim(1, -1)
            elif blocks:  # block GRU (B, G, D/G): unit g*D/G + j
                out = out.flatten(-2)
            flat = out.reshape(-1, out.shape[-1]).float()  # (N, H)
            sums[name][0] = sums[name][0] + flat.abs().sum(0)
            sums[name][1] += flat.shape[0]
        return fn

    for layer in layers:
        handles.append(layer.source.register_forward_hook(hook(layer.name, layer.silu, layer.blocks)))
    try:
        with eager_cell(agent.wm.rssm):
            posterior, _, _ = agent.wm.observe(agent.to_torch(batch), None, sample=False)
            feat = agent.wm.rssm.features(posterior)  # (B, T, F)
            agent.ac.actor(feat)
            agent.ac.critic(feat)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for name, (total, count) in sums.items():
        mean = total / max(count, 1)
        out[name] = all_gather_flat(mean).view(world_size(), -1).mean(0)  # (H,)
    return out


# --------------------------------------------------------------------------------------------- methods


def _optimizers(agent: nn.Module) -> list[torch.optim.Optimizer]:
    return [agent.wm.optimizer, agent.ac.actor_opt, agent.ac.critic_opt]


def _reset_adam(agent: nn.Module, param: Tensor, entries: Tensor | None) -> None:
    """Zero Adam's moments of ``param`` at ``entries`` (a bool mask); ``entries=None``: the whole tensor,
    step count included, as a new optimizer's. A parameter not stepped yet has no state to reset."""
    for opt in _optimizers(agent):
        state = opt.state.get(param)
        if not state:
            continue
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in state:
                if entries is None:
                    state[key].zero_()
                else:
                    state[key][entries] = 0
        if entries is None and torch.is_tensor(state.get("step")):
            state["step"].zero_()
        elif entries is None and "step" in state:
            state["step"] = 0


def _slow_twin(name: str) -> str | None:
    """The slow critic's parameter that tracks critic parameter ``name`` (None for others)."""
    return "ac.slow_critic." + name[len("ac.critic."):] if name.startswith("ac.critic.") else None


@torch.no_grad()
def shrink_perturb(agent: nn.Module, fresh: nn.Module, modules: tuple[str, ...], shrink: float,
                   perturb: float) -> dict[str, float]:
    """theta <- shrink * theta + perturb * theta_fresh for every parameter of ``modules`` (and the slow
    critic with the critic); their Adam state reset whole. Returns {} (no per-unit numbers)."""
    params, fresh_params = dict(agent.named_parameters()), dict(fresh.named_parameters())
    prefixes = {"encoder": "wm.encoder.", "rssm": "wm.rssm.", "actor": "ac.actor.", "critic": "ac.critic."}
    for name, param in params.items():
        if not any(name.startswith(prefixes[m]) for m in modules):
            continue
        param.copy_(shrink * param + perturb * fresh_params[name])
        _reset_adam(agent, param, None)
        twin = _slow_twin(name)
        if twin is not None:
            slow = agent.ac.slow_critic.get_parameter(twin[len("ac.slow_critic."):])
            slow.copy_(shrink * slow + perturb * fresh_params[name])
    return {}


@torch.no_grad()
def redo(agent: nn.Module, fresh: nn.Module, modules: tuple[str, ...], tau: float,
         batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Recycle every unit of ``modules`` whose score on ``batch`` is <= ``tau`` (see the module docstring).
    Returns ``plasticity/<module>/units`` and ``plasticity/<module>/units_reset``."""
    layers = [layer for layer in unit_layers(agent) if layer.module in modules]
    means = mean_activations(agent, layers, batch)
    dormant = {layer.name: unit_scores(means[layer.name]) <= tau for layer in layers}
    params, fresh_params = dict(agent.named_parameters()), dict(fresh.named_parameters())
    touched: dict[str, Tensor] = {}
    for side in ("incoming", "outgoing"):  # all incoming first: an entry on both sides ends at zero
        for layer in layers:
            if not dormant[layer.name].any():
                continue
            for name, mask_fn in getattr(layer, side):
                param = params[name]
                entries = mask_fn(dormant[layer.name], param.shape)
                param[entries] = fresh_params[name][entries] if side == "incoming" else 0.0
                touched[name] = touched[name] | entries if name in touched else entries
    for name, entries in touched.items():
        _reset_adam(agent, params[name], entries)
        twin = _slow_twin(name)
        if twin is not None:  # the slow critic tracks the critic: the same entries, the same values
            agent.ac.slow_critic.get_parameter(twin[len("ac.slow_critic."):])[entries] = params[name][entries]
    metrics: dict[str, float] = {}
    for module in modules:
        masks = [dormant[layer.name] for layer in layers if layer.module == module]
        metrics[f"plasticity/{module}/units"] = float(sum(m.numel() for m in masks))
        metrics[f"plasticity/{module}/units_reset"] = float(sum(int(m.sum()) for m in masks))
    return metrics


def apply(agent: nn.Module, fresh: nn.Module, cfg: PlasticityConfig, batch: dict[str, np.ndarray] | None
          ) -> dict[str, float]:
    """Apply ``cfg.method`` to ``cfg.modules`` of ``agent``, with ``fresh`` (an agent built like it, another
    seed) as the fresh initialisation; ``batch`` (B, T) from the replay, for ReDo's scores. Returns metrics:
    the method's own and, per module of ``PLASTICITY_MODULES``, the L2 norm of its parameters before and
    after (``weight_norm_before``/``_after``) and of the change (``weight_change``)."""
    before = {m: [p.detach().clone() for p in module.parameters()] for m, module in modules_of(agent).items()}
    if cfg.method == "shrink_perturb":
        metrics = shrink_perturb(agent, fresh, cfg.modules, cfg.shrink, cfg.perturb)
    elif cfg.method == "redo":
        if batch is None:
            raise ValueError("plasticity.method=redo needs a batch to score units on.")
        metrics = redo(agent, fresh, cfg.modules, cfg.tau, batch)
    else:
        raise ValueError(f"plasticity.method={cfg.method!r} changes nothing to apply.")
    for m, module in modules_of(agent).items():
        after = [p.detach() for p in module.parameters()]
        metrics[f"plasticity/{m}/weight_norm_before"] = _norm(before[m])
        metrics[f"plasticity/{m}/weight_norm_after"] = _norm(after)
        metrics[f"plasticity/{m}/weight_change"] = _norm([a - b for a, b in zip(after, before[m])])
    return metrics


def _norm(tensors: list[Tensor]) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors))) if tensors else 0.0


def fresh_agent(agent: Any, obs_space: Any, seed: int) -> nn.Module:
    """An agent built like ``agent`` (its config and spaces) with parameters initialised from ``seed``;
    the global random state is left as it was (agents initialise under forked RNGs)."""
    return Agent(obs_space, agent.act_space, dataclasses.replace(agent.cfg, seed=seed))

