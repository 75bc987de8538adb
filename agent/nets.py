"""Network building blocks of the world model: encoders, decoders and heads.

Image tensors inside the networks are float, channel-last (B, T, H, W, C), already scaled by
`WorldModel.preprocess` (pixels / 255 - 0.5). Every sequence module maps (B, T, ...) -> (B, T, ...).
"""

from __future__ import annotations

import math

import gymnasium.spaces as spaces
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DecoderConfig, EncoderConfig, WorldModelConfig
from .math_utils import symlog


def make_norm(kind: str, dim: int) -> nn.Module:
    """LayerNorm or RMSNorm over the last axis."""
    return nn.LayerNorm(dim) if kind == "layer" else nn.RMSNorm(dim)


class MLP(nn.Module):
    """`layers` x (Linear without bias -> norm -> SiLU); `layers=0` is the identity."""

    def __init__(self, in_dim: int, units: int, layers: int, norm: str = "layer"):
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(layers):
            linear = nn.Linear(in_dim if i == 0 else units, units, bias=False)
            mods += [linear, make_norm(norm, units), nn.SiLU()]
        self.net = nn.Sequential(*mods)
        self.out_dim = units if layers else in_dim

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        return self.net(x)


class ChannelNorm(nn.Module):
    """Norm over the channels of an NCHW map, independently at each pixel (DreamerV3's conv norm)."""

    def __init__(self, kind: str, channels: int):
        super().__init__()
        self.norm = make_norm(kind, channels)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------- Transformer


def sincos_2d(h: int, w: int, dim: int) -> Tensor:
    """Fixed 2D sin-cos positions (h * w, dim), row-major: half the channels encode y, half x."""
    assert dim % 4 == 0, dim
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    out_y = ys.reshape(-1, 1) * omega  # (h*w, dim/4)
    out_x = xs.reshape(-1, 1) * omega
    return torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], 1).float()  # (h*w, dim)


class Attention(nn.Module):
    """Multi-head attention of `queries` over `keys_values` via scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, keys_values: Tensor) -> Tensor:
        """(M, Nq, D), (M, Nk, D) -> (M, Nq, D)."""
        M, Nq, D = queries.shape
        Nk, h = keys_values.shape[1], self.heads
        q = self.q(queries).view(M, Nq, h, D // h).transpose(1, 2)  # (M, h, Nq, D/h)
        k, v = self.kv(keys_values).view(M, Nk, 2, h, D // h).permute(2, 0, 3, 1, 4)  # 2 x (M, h, Nk, D/h)
        out = F.scaled_dot_product_attention(q, k, v)  # (M, h, Nq, D/h)
        return self.proj(out.transpose(1, 2).reshape(M, Nq, D))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attn(norm(x)), then x + MLP(norm(x)) with SiLU."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, norm: str = "layer"):
        super().__init__()
        self.norm1, self.norm2 = make_norm(norm, dim), make_norm(norm, dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.SiLU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """(M, N, D) -> (M, N, D)."""
        h = self.norm1(x)
        x = x + self.attn(h, h)
        return x + self.mlp(self.norm2(x))


class AttentionPool(nn.Module):
    """A few learned queries attend over the tokens; their outputs, normalised and concatenated,
    are the embedding."""

    def __init__(self, dim: int, queries: int, heads: int, norm: str = "layer"):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(queries, dim) * 0.02)
        self.norm_in, self.norm_out = make_norm(norm, dim), make_norm(norm, dim)
        self.attn = Attention(dim, heads)
        self.out_dim = queries * dim

    def forward(self, tokens: Tensor) -> Tensor:
        """(M, N, D) -> (M, P * D)."""
        M = tokens.shape[0]
        q = self.queries.unsqueeze(0).expand(M, -1, -1)  # (M, P, D)
        pooled = self.norm_out(self.attn(q, self.norm_in(tokens)))  # (M, P, D)
        return pooled.reshape(M, -1)


# --------------------------------------------------------------------------------------------- encoders


def tubelet_indices(is_first: Tensor, frames: int, context_valid: Tensor) -> Tensor:
    """Which frame each tubelet slot reads: (B, T) bool, k_t, (B,) bool -> (B, T, k_t) long.

    Indices point into the extended sequence `cat([context (k_t-1 frames), window (T frames)], 1)`,
    where window frame t sits at k_t - 1 + t. Slot j of the tubelet at t wants frame t - k_t + 1 + j
    (oldest first). It is clamped from below to the first frame the tubelet may see:
      - the last is_first at or before t, if any (so nothing from a previous episode leaks in);
      - else the first context frame if the context is valid;
      - else the window's first frame (a window starting mid-episode without context).
    Clamping repeats that first frame for the missing slots, which is the left padding. Exact: frames
    before the start are never read.
    """
    B, T = is_first.shape
    k = frames
    time = torch.arange(T, device=is_first.device)
    wanted = time[:, None] + torch.arange(k, device=is_first.device)  # (T, k): (k-1+t) - (k-1) + j
    last_first = torch.where(is_first, time, -1).cummax(1).values  # (B, T), -1 where none yet
    no_first_start = torch.where(context_valid, 0, k - 1).to(time.dtype)  # (B,)
    start = torch.where(last_first >= 0, last_first + k - 1, no_first_start[:, None])  # (B, T)
    return torch.maximum(wanted[None], start[..., None])  # (B, T, k)


class PatchVideoEncoder(nn.Module):
    """Causal tubelet Transformer: frames (B, T, H, W, C) -> embeddings (B, T, P * D).

    The tubelet embedding is a Conv3d with kernel (k_t, p, p) and stride (1, p, p) applied at every t
    to frames t-k_t+1..t (`tubelet_indices` says which frame fills each slot). Because it is linear,
    it is computed as one matmul of every frame's patches with all k_t kernel slices, followed by a
    gather and a sum over the slots: the same numbers as the Conv3d on explicitly assembled clips
    (tested), without copying k_t frames per step. Then pre-norm Transformer blocks over the
    (H/p)*(W/p) tokens of each step with fixed 2D sin-cos positions, and attention pooling.

    A training sequence and an online step use this same code path: an online step is T=1 with the
    carried last k_t-1 frames as `context`.
    """

    def __init__(self, image_shape: tuple[int, int, int], cfg: EncoderConfig, norm: str = "layer"):
        super().__init__()
        H, W, C = image_shape
        p, D = cfg.patch, cfg.width
        self.frames, self.patch, self.grid = cfg.tubelet_frames, p, (H // p, W // p)
        self.tubelet = nn.Conv3d(C, D, (self.frames, p, p), stride=(1, p, p))
        self.register_buffer("pos", sincos_2d(H // p, W // p, D), persistent=False)  # (N, D)
        self.blocks = nn.ModuleList(
            TransformerBlock(D, cfg.heads, cfg.mlp_ratio, norm) for _ in range(cfg.depth))
        self.norm = make_norm(norm, D)
        self.pool = AttentionPool(D, cfg.pool_queries, cfg.heads, norm)
        self.out_dim = self.pool.out_dim

    def patchify(self, frames: Tensor) -> Tensor:
        """(B, T, H, W, C) -> (B, T, N, p*p*C), patches row-major, pixels in (py, px, c) order."""
        B, T, H, W, C = frames.shape
        p, (gh, gw) = self.patch, self.grid
        x = frames.reshape(B, T, gh, p, gw, p, C).permute(0, 1, 2, 4, 3, 5, 6)  # (B, T, gh, gw, p, p, C)
        return x.reshape(B, T, gh * gw, p * p * C)

    def tokens(self, frames: Tensor, is_first: Tensor, context: Tensor | None = None,
               context_valid: Tensor | None = None) -> Tensor:
        """Tubelet tokens before the Transformer: (B, T, H, W, C) -> (B, T, N, D). Arguments as `forward`."""
        B, T = frames.shape[:2]
        k = self.frames
        if context is None:
            context = frames[:, :1].expand(B, k - 1, *frames.shape[2:])  # never read: context_valid False
            context_valid = torch.zeros(B, dtype=torch.bool, device=frames.device)
        elif context_valid is None:
            context_valid = torch.ones(B, dtype=torch.bool, device=frames.device)
        extended = torch.cat([context, frames], 1)  # (B, T+k-1, H, W, C)
        patches = self.patchify(extended)  # (B, T+k-1, N, p*p*C)
        D = self.tubelet.out_channels
        # Conv3d weight (D, C, k, p, p) -> one (p*p*C, k*D) matrix whose input order matches patchify.
        weight = self.tubelet.weight.permute(3, 4, 1, 2, 0).reshape(-1, k * D)  # (p*p*C, k*D)
        per_slot = (patches @ weight).view(*patches.shape[:3], k, D)  # (B, T+k-1, N, k, D)
        index = tubelet_indices(is_first, k, context_valid)  # (B, T, k)
        rows = torch.arange(B, device=frames.device)[:, None]  # (B, 1)
        out = self.tubelet.bias
        for j in range(k):
            out = out + per_slot[:, :, :, j][rows, index[:, :, j]]  # (B, T, N, D)
        return out

    def forward(self, frames: Tensor, is_first: Tensor, context: Tensor | None = None,
                context_valid: Tensor | None = None) -> Tensor:
        """Embed each step from its causal clip.

        frames (B, T, H, W, C) float; is_first (B, T) bool; context (B, k_t-1, H, W, C) float: the frames
        before the window, oldest first (None: none known, the window's first frame is repeated);
        context_valid (B,) bool: per row, whether the context may be read (default: all, when given).
        Returns (B, T, P * D).
        """
        B, T = frames.shape[:2]
        x = self.tokens(frames, is_first, context, context_valid)  # (B, T, N, D)
        x = x.flatten(0, 1) + self.pos  # (B*T, N, D)
        for block in self.blocks:
            x = block(x)
        return self.pool(self.norm(x)).view(B, T, -1)  # (B, T, P*D)


class CNNEncoder(nn.Module):
    """DreamerV3's per-frame encoder: stride-2 convs (kernel 4) with d, 2d, 4d, 8d... channels down to
    `min_res`, each followed by a per-pixel channel norm and SiLU; flattened. (B, T, H, W, C) -> (B, T, E)."""

    def __init__(self, image_shape: tuple[int, int, int], depth: int, min_res: int = 4, norm: str = "layer"):
        super().__init__()
        H, W, C = image_shape
        layers, ch, res = [], C, H
        for i in range(int(math.log2(H // min_res))):
            out = depth * 2**i
            layers += [nn.Conv2d(ch, out, 4, 2, 1, bias=False), ChannelNorm(norm, out), nn.SiLU()]
            ch, res = out, res // 2
        self.net = nn.Sequential(*layers)
        self.out_dim = ch * res * res

    def forward(self, frames: Tensor, is_first: Tensor | None = None, context: Tensor | None = None,
                context_valid: Tensor | None = None) -> Tensor:
        """(B, T, H, W, C) -> (B, T, E). Per frame, so is_first and context are not needed."""
        B, T, H, W, C = frames.shape
        x = frames.reshape(B * T, H, W, C).permute(0, 3, 1, 2)  # (B*T, C, H, W)
        return self.net(x).reshape(B, T, -1)


class MLPEncoder(nn.Module):
    """State vectors (B, T, n) -> (B, T, units), symlog on the inputs (DreamerV3)."""

    def __init__(self, n: int, units: int, layers: int, symlog_inputs: bool = True, norm: str = "layer"):
        super().__init__()
        self.symlog_inputs = symlog_inputs
        self.mlp = MLP(n, units, layers, norm)
        self.out_dim = self.mlp.out_dim

    def forward(self, state: Tensor) -> Tensor:
        """(B, T, n) -> (B, T, units)."""
        return self.mlp(symlog(state) if self.symlog_inputs else state)


class MultiEncoder(nn.Module):
    """Encodes the `image` and/or `state` observations and concatenates their embeddings (image first)."""

    def __init__(self, obs_space: spaces.Dict, cfg: WorldModelConfig):
        super().__init__()
        e = cfg.encoder
        self.image: nn.Module | None = None
        self.state: nn.Module | None = None
        dims = 0
        if "image" in obs_space.spaces:
            shape = tuple(obs_space["image"].shape)
            if e.kind == "patch":
                self.image = PatchVideoEncoder(shape, e, cfg.norm)
            else:
                self.image = CNNEncoder(shape, e.cnn_depth, e.cnn_min_res, cfg.norm)
            dims += self.image.out_dim
        if "state" in obs_space.spaces:
            n = int(obs_space["state"].shape[0])
            self.state = MLPEncoder(n, e.mlp_units, e.mlp_layers, e.symlog_state, cfg.norm)
            dims += self.state.out_dim
        if not dims:
            raise ValueError(f"obs_space needs an 'image' or 'state' key, got {list(obs_space.spaces)}")
        self.out_dim = dims

    def forward(self, obs: dict[str, Tensor], is_first: Tensor, context: Tensor | None = None,
                context_valid: Tensor | None = None) -> Tensor:
        """obs: preprocessed (B, T, ...) tensors; context/context_valid as in `PatchVideoEncoder`.
        Returns (B, T, E)."""
        parts = []
        if self.image is not None:
            parts.append(self.image(obs["image"], is_first, context, context_valid))
        if self.state is not None:
            parts.append(self.state(obs["state"]))
        return torch.cat(parts, -1) if len(parts) > 1 else parts[0]


# --------------------------------------------------------------------------------------------- decoders


class ConvDecoder(nn.Module):
    """Transposed CNN (DreamerV3's decoder): features -> Linear -> (8d, 4, 4) -> stride-2 transposed
    convs 8d -> 4d -> 2d -> d -> C, each but the last with channel norm and SiLU. Predicts pixels in
    the preprocessed space (x / 255 - 0.5). (B, T, F) -> (B, T, H, W, C)."""

    def __init__(self, feat_dim: int, image_shape: tuple[int, int, int], cfg: DecoderConfig,
                 norm: str = "layer"):
        super().__init__()
        H, W, C = image_shape
        n = int(math.log2(H // cfg.cnn_min_res))
        self.image_shape, self.start = image_shape, (cfg.cnn_depth * 2 ** (n - 1), cfg.cnn_min_res)
        ch, res = self.start
        self.linear = nn.Linear(feat_dim, ch * res * res)
        layers: list[nn.Module] = [ChannelNorm(norm, ch), nn.SiLU()]
        for i in reversed(range(n)):
            last = i == 0
            out = C if last else cfg.cnn_depth * 2 ** (i - 1)
            layers.append(nn.ConvTranspose2d(ch, out, 4, 2, 1, bias=last))
            if not last:
                layers += [ChannelNorm(norm, out), nn.SiLU()]
            ch = out
        self.net = nn.Sequential(*layers)

    def forward(self, feat: Tensor) -> Tensor:
        """(B, T, F) -> (B, T, H, W, C)."""
        B, T = feat.shape[:2]
        ch, res = self.start
        x = self.linear(feat).reshape(B * T, ch, res, res)  # (B*T, 8d, 4, 4)
        x = self.net(x)  # (B*T, C, H, W)
        return x.permute(0, 2, 3, 1).reshape(B, T, *self.image_shape)


class PatchDecoder(nn.Module):
    """Token-wise decoder: features -> Linear to N tokens of width D_dec (+ 2D sin-cos positions) ->
    `patch_depth` Transformer blocks -> norm -> Linear to each p x p x C patch -> image.
    With patch_depth=0 each patch is a linear function of its token. (B, T, F) -> (B, T, H, W, C)."""

    def __init__(self, feat_dim: int, image_shape: tuple[int, int, int], patch: int, cfg: DecoderConfig,
                 norm: str = "layer"):
        super().__init__()
        H, W, C = image_shape
        D = cfg.patch_width
        self.image_shape, self.patch, self.grid = image_shape, patch, (H // patch, W // patch)
        N = self.grid[0] * self.grid[1]
        self.tokens = nn.Linear(feat_dim, N * D)
        self.register_buffer("pos", sincos_2d(*self.grid, D), persistent=False)  # (N, D)
        self.blocks = nn.ModuleList(
            TransformerBlock(D, cfg.patch_heads, 2, norm) for _ in range(cfg.patch_depth))
        self.norm = make_norm(norm, D)
        self.out = nn.Linear(D, patch * patch * C)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(B, T, N, p*p*C) -> (B, T, H, W, C); the inverse of `PatchVideoEncoder.patchify`."""
        B, T = patches.shape[:2]
        H, W, C = self.image_shape
        (gh, gw), p = self.grid, self.patch
        x = patches.reshape(B, T, gh, gw, p, p, C).permute(0, 1, 2, 4, 3, 5, 6)  # (B, T, gh, p, gw, p, C)
        return x.reshape(B, T, H, W, C)

    def forward(self, feat: Tensor) -> Tensor:
        """(B, T, F) -> (B, T, H, W, C)."""
        B, T = feat.shape[:2]
        x = self.tokens(feat).reshape(B * T, self.grid[0] * self.grid[1], -1) + self.pos  # (B*T, N, D)
        for block in self.blocks:
            x = block(x)
        return self.unpatchify(self.out(self.norm(x)).reshape(B, T, x.shape[1], -1))  # (B, T, N, p*p*C)


class StateDecoder(nn.Module):
    """Features -> symlog(state) prediction; trained with MSE in symlog space. (B, T, F) -> (B, T, n)."""

    def __init__(self, feat_dim: int, n: int, units: int, layers: int, norm: str = "layer"):
        super().__init__()
        self.mlp = MLP(feat_dim, units, layers, norm)
        self.out = nn.Linear(self.mlp.out_dim, n)

    def forward(self, feat: Tensor) -> Tensor:
        """(B, T, F) -> (B, T, n) in symlog space."""
        return self.out(self.mlp(feat))


class RewardHead(nn.Module):
    """Features -> logits over symlog two-hot bins. The output layer starts at zero, so the initial
    prediction is exactly 0 and early reward gradients do not disturb the representation (DreamerV3)."""

    def __init__(self, feat_dim: int, units: int, layers: int, bins: int, norm: str = "layer"):
        super().__init__()
        self.mlp = MLP(feat_dim, units, layers, norm)
        self.out = nn.Linear(self.mlp.out_dim, bins)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, feat: Tensor) -> Tensor:
        """(..., F) -> (..., bins) logits."""
        return self.out(self.mlp(feat))


class ContinueHead(nn.Module):
    """Features -> Bernoulli logit of 'the episode continues after this step' (1 - is_terminal)."""

    def __init__(self, feat_dim: int, units: int, layers: int, norm: str = "layer"):
        super().__init__()
        self.mlp = MLP(feat_dim, units, layers, norm)
        self.out = nn.Linear(self.mlp.out_dim, 1)

    def forward(self, feat: Tensor) -> Tensor:
        """(..., F) -> (...) logits."""
        return self.out(self.mlp(feat)).squeeze(-1)
