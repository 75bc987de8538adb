"""Encoders and decoders: the causal tubelet encoder's index arithmetic, Conv3d equivalence and causality."""

import dataclasses

import pytest
import torch

from agent.config import DecoderConfig, EncoderConfig
from agent.nets import CNNEncoder, ConvDecoder, PatchDecoder, PatchVideoEncoder, tubelet_indices

ENC = EncoderConfig(tubelet_frames=2, patch=8, width=16, depth=1, heads=2, mlp_ratio=2, pool_queries=2)


def _encoder(frames: int = 2, seed: int = 0) -> PatchVideoEncoder:
    torch.manual_seed(seed)
    return PatchVideoEncoder((32, 32, 3), dataclasses.replace(ENC, tubelet_frames=frames)).eval()


def _frames(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(B, T, 32, 32, 3, generator=torch.Generator().manual_seed(seed)) - 0.5


def test_tubelet_indices_hand_case():
    # k = 3: window frame t sits at index 2 + t of cat([context (2 frames), window]).
    is_first = torch.tensor([[False, False, True, False, False], [False] * 5])
    valid = torch.tensor([True, False])
    expected = torch.tensor([
        # row 0: context valid, episode starts at t=2 (index 4): nothing before index 4 from t=2 on.
        [[0, 1, 2], [1, 2, 3], [4, 4, 4], [4, 4, 5], [4, 5, 6]],
        # row 1: no context, no is_first: the window's first frame (index 2) is repeated.
        [[2, 2, 2], [2, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6]],
    ])
    assert torch.equal(tubelet_indices(is_first, 3, valid), expected)


def _reference_clip(frames, context, valid, is_first, b, t, k):
    """The clip for (b, t) assembled by the rule in plain words, oldest frame first: (C, k, H, W)."""
    starts = [s for s in range(t + 1) if is_first[b, s]]
    lowest = starts[-1] if starts else (-(k - 1) if valid[b] else 0)
    clip = []
    for j in range(k):
        w = max(t - k + 1 + j, lowest)
        clip.append(frames[b, w] if w >= 0 else context[b, k - 1 + w])
    return torch.stack(clip).permute(3, 0, 1, 2)  # (k, H, W, C) -> (C, k, H, W)


def test_tubelet_tokens_equal_conv3d_on_explicit_clips():
    k, B, T = 3, 3, 6
    enc = _encoder(frames=k)
    frames, context = _frames(B, T), _frames(B, k - 1, seed=2)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[0, 3] = is_first[1, 1] = is_first[1, 2] = is_first[2, 0] = True
    valid = torch.tensor([True, False, True])
    with torch.no_grad():
        tokens = enc.tokens(frames, is_first, context, valid)  # (B, T, N, D)
        for b in range(B):
            for t in range(T):
                clip = _reference_clip(frames, context, valid, is_first, b, t, k)
                ref = enc.tubelet(clip[None])  # (1, D, 1, H/p, W/p)
                ref = ref.flatten(2).squeeze(0).transpose(0, 1)  # (N, D), row-major patches
                torch.testing.assert_close(tokens[b, t], ref, rtol=1e-5, atol=1e-5)


def _embed(enc, frames, is_first, context=None, valid=None):
    with torch.no_grad():
        return enc(frames, is_first, context, valid)


def test_patch_encoder_is_causal_and_respects_episode_starts():
    enc = _encoder(frames=3)
    B, T = 2, 7
    frames = _frames(B, T)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 4] = True
    base = _embed(enc, frames, is_first)
    assert base.shape == (B, T, enc.out_dim)

    future = frames.clone()
    future[:, 3:] = _frames(B, T - 3, seed=9)
    changed = _embed(enc, future, is_first)
    torch.testing.assert_close(changed[:, :3], base[:, :3], rtol=0, atol=1e-6)  # t < 3 never sees t >= 3
    assert (changed[:, 3] - base[:, 3]).abs().max() > 1e-3  # ... and t = 3 does

    before_start = frames.clone()
    before_start[:, :4] = _frames(B, 4, seed=10)  # the previous episode, which ends at t = 3
    changed = _embed(enc, before_start, is_first)
    torch.testing.assert_close(changed[:, 4:], base[:, 4:], rtol=0, atol=1e-6)

    previous = frames.clone()
    previous[:, 5] = _frames(B, 1, seed=11)[:, 0]  # same episode as t = 6 (and t = 7 if there were one)
    changed = _embed(enc, previous, is_first)
    assert (changed[:, 6] - base[:, 6]).abs().max() > 1e-3
    torch.testing.assert_close(changed[:, :5], base[:, :5], rtol=0, atol=1e-6)


def test_patch_encoder_context_is_read_only_when_valid():
    enc = _encoder(frames=2)
    frames, is_first = _frames(2, 4), torch.zeros(2, 4, dtype=torch.bool)
    ctx_a, ctx_b = _frames(2, 1, seed=3), _frames(2, 1, seed=4)
    invalid = torch.zeros(2, dtype=torch.bool)
    torch.testing.assert_close(_embed(enc, frames, is_first, ctx_a, invalid),
                               _embed(enc, frames, is_first, ctx_b, invalid), rtol=0, atol=1e-6)
    # Invalid context = no context: the window's first frame is repeated.
    torch.testing.assert_close(_embed(enc, frames, is_first, ctx_a, invalid), _embed(enc, frames, is_first),
                               rtol=0, atol=1e-6)
    valid = torch.ones(2, dtype=torch.bool)
    a, b = _embed(enc, frames, is_first, ctx_a, valid), _embed(enc, frames, is_first, ctx_b, valid)
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3  # a valid context feeds step 0 ...
    torch.testing.assert_close(a[:, 1:], b[:, 1:], rtol=0, atol=1e-6)  # ... and only step 0 when k_t = 2
    is_first[:, 0] = True  # ... unless step 0 starts an episode
    a, b = _embed(enc, frames, is_first, ctx_a, valid), _embed(enc, frames, is_first, ctx_b, valid)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [32, 64])
def test_cnn_encoder_and_decoders_shapes(size):
    frames = _frames(2, 3) if size == 32 else torch.rand(2, 3, 64, 64, 3)
    cnn = CNNEncoder((size, size, 3), depth=4, min_res=4)
    n = {32: 3, 64: 4}[size]  # stride-2 layers down to 4x4
    assert cnn(frames).shape == (2, 3, 4 * 2 ** (n - 1) * 4 * 4) and cnn.out_dim == 4 * 2 ** (n - 1) * 16
    feat = torch.randn(2, 3, 40)
    dec_cfg = DecoderConfig(cnn_depth=4, patch_width=16, patch_depth=1, patch_heads=2)
    assert ConvDecoder(40, (size, size, 3), dec_cfg)(feat).shape == (2, 3, size, size, 3)
    assert PatchDecoder(40, (size, size, 3), 8, dec_cfg)(feat).shape == (2, 3, size, size, 3)


def test_patch_decoder_unpatchify_inverts_patchify():
    enc = _encoder()
    dec = PatchDecoder(8, (32, 32, 3), 8, DecoderConfig(patch_width=16, patch_depth=0))
    frames = _frames(2, 3)
    patches = enc.patchify(frames)  # (2, 3, 16, 192)
    assert patches.shape == (2, 3, 16, 8 * 8 * 3)
    torch.testing.assert_close(patches[0, 0, 5], frames[0, 0, 8:16, 8:16].reshape(-1))  # row 1, column 1
    assert torch.equal(dec.unpatchify(patches), frames)
