"""Known-answer tests of agent/math_utils.py; every expected number is worked out by hand in a comment."""

import math

import pytest
import torch

from agent.math_utils import (
    ReturnNormalizer,
    categorical_entropy,
    categorical_kl,
    categorical_mode_st,
    categorical_sample_st,
    lambda_return,
    replay_lambda_return,
    symexp,
    symlog,
    symlog_bins,
    symlog_twohot_loss,
    twohot_decode,
    twohot_encode,
    unimix_logits,
)


def test_symlog_symexp_known_values_and_inverse():
    e1 = math.e - 1.0
    x = torch.tensor([0.0, e1, -e1, math.e**2 - 1.0])
    # symlog(e - 1) = log(e) = 1; symlog(e^2 - 1) = 2; odd function.
    torch.testing.assert_close(symlog(x), torch.tensor([0.0, 1.0, -1.0, 2.0]))
    y = torch.linspace(-50, 50, 101, dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(y)), y)


def test_symlog_bins_are_uniform_symmetric_with_exact_zero():
    bins = symlog_bins(255, 20.0)
    assert bins.shape == (255,)
    assert bins[0] == -20.0 and bins[-1] == 20.0 and bins[127] == 0.0
    assert torch.equal(bins, -bins.flip(0))
    torch.testing.assert_close(bins.diff(), torch.full((254,), 40.0 / 254))


def test_twohot_encode_hand_cases():
    bins = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    x = torch.tensor([0.5, 1.0, -0.25, 5.0, -5.0, 2.0])
    expected = torch.tensor([
        [0.0, 0.0, 0.5, 0.5, 0.0],  # exactly between bins 0 and 1
        [0.0, 0.0, 0.0, 1.0, 0.0],  # on a bin
        [0.0, 0.25, 0.75, 0.0, 0.0],  # -0.25 is a quarter of the way from 0 to -1
        [0.0, 0.0, 0.0, 0.0, 1.0],  # above the range: last bin
        [1.0, 0.0, 0.0, 0.0, 0.0],  # below the range: first bin
        [0.0, 0.0, 0.0, 0.0, 1.0],  # the last bin itself
    ])
    torch.testing.assert_close(twohot_encode(x, bins), expected)


def test_twohot_decode_zero_logits_is_exactly_zero_and_roundtrips():
    bins = symlog_bins(255, 20.0)
    assert twohot_decode(torch.zeros(3, 255), bins).eq(0.0).all()  # what a zero-initialised head predicts
    values = torch.tensor([-1234.5, -3.0, 0.0, 0.7, 42.0])
    logits = torch.log(twohot_encode(symlog(values), bins).clamp_min(1e-30))
    torch.testing.assert_close(twohot_decode(logits, bins), values, rtol=1e-4, atol=1e-4)


def test_symlog_twohot_loss_is_entropy_of_the_target():
    bins = torch.tensor([-1.0, 0.0, 1.0])
    target = symexp(torch.tensor([0.5]))  # symlog(target) = 0.5 -> 0.5/0.5 on bins 0 and 1
    perfect = torch.log(torch.tensor([[1e-30, 0.5, 0.5]]))
    torch.testing.assert_close(symlog_twohot_loss(perfect, target, bins), torch.tensor([math.log(2.0)]))
    uniform = torch.zeros(1, 3)  # cross-entropy with uniform predictions = log 3
    torch.testing.assert_close(symlog_twohot_loss(uniform, target, bins), torch.tensor([math.log(3.0)]))


def test_symlog_twohot_loss_and_decode_match_their_dense_definitions():
    """The loss reads only the two target bins and the decode pairs mirrored bins; both must equal the dense
    sums over all K bins, with targets beyond the range on the end bin."""
    bins = symlog_bins(255)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 255, generator=g) * 3
    target = torch.cat([torch.randn(60, generator=g) * 30, torch.tensor([0.0, 1e12, -1e12, 2.5])])
    dense = -(twohot_encode(symlog(target), bins) * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(symlog_twohot_loss(logits, target, bins), dense, rtol=1e-5, atol=1e-5)
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(twohot_decode(logits, bins), symexp((probs * bins).sum(-1)), rtol=1e-4, atol=1e-4)


def test_lambda_return_three_steps_by_hand():
    # discount 0.9, lambda 0.5; value[0] is unused; v_1 = 10, v_2 = 20, bootstrap v_3 = 30.
    reward = torch.tensor([1.0, 2.0, 3.0])
    value = torch.tensor([999.0, 10.0, 20.0])
    bootstrap = torch.tensor(30.0)
    cont = torch.ones(3)
    # R_2 = 3 + 0.9 * (0.5 * 30 + 0.5 * 30) = 30
    # R_1 = 2 + 0.9 * (0.5 * 20 + 0.5 * 30) = 24.5
    # R_0 = 1 + 0.9 * (0.5 * 10 + 0.5 * 24.5) = 16.525
    out = lambda_return(reward, value, cont, bootstrap, 0.5, 0.9)
    torch.testing.assert_close(out, torch.tensor([16.525, 24.5, 30.0]))
    # A terminal after reward[1] (continue_[1] = 0): R_1 = 2, R_0 = 1 + 0.9 * (0.5 * 10 + 0.5 * 2) = 6.4.
    cont = torch.tensor([1.0, 0.0, 1.0])
    torch.testing.assert_close(lambda_return(reward, value, cont, bootstrap, 0.5, 0.9)[:2],
                               torch.tensor([6.4, 2.0]))


def test_lambda_return_limits_and_batch_axes():
    reward = torch.tensor([[1.0], [2.0], [3.0]]).expand(3, 4)  # (H, N)
    value = torch.tensor([[0.0], [10.0], [20.0]]).expand(3, 4)
    cont, bootstrap = torch.ones(3, 4), torch.full((4,), 30.0)
    # lambda 0: one-step TD targets r_t + 0.9 v_{t+1} = [1 + 9, 2 + 18, 3 + 27].
    torch.testing.assert_close(lambda_return(reward, value, cont, bootstrap, 0.0, 0.9)[:, 0],
                               torch.tensor([10.0, 20.0, 30.0]))
    # lambda 1: discounted rewards + bootstrap: R_2 = 30, R_1 = 2 + 27 = 29, R_0 = 1 + 0.9 * 29 = 27.1.
    out = lambda_return(reward, value, cont, bootstrap, 1.0, 0.9)
    assert out.shape == (3, 4)
    torch.testing.assert_close(out[:, 2], torch.tensor([27.1, 29.0, 30.0]))


def test_replay_lambda_return_stops_at_episode_boundaries_and_terminals():
    # T = 5 replayed states, discount 0.9, lambda 0.5; reward[t] arrives with state t; values 10, 20, 30, 40, 50.
    reward = torch.tensor([0.0, 1.0, 2.0, 0.0, 4.0])
    value = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0])
    first = torch.tensor([True, False, False, True, False])  # state 3 starts a new episode
    terminal = torch.zeros(5, dtype=torch.bool)
    ret, inside = replay_lambda_return(reward, value, first, terminal, 0.5, 0.9)
    assert inside.tolist() == [True, True, False, True]
    # R_3 = r_4 + 0.9 * (0.5 * v_4 + 0.5 * R_4) with R_4 = v_4 = 50: 4 + 45 = 49
    # R_2 = v_2 = 30 (no transition into the next episode)
    # R_1 = r_2 + 0.9 * (0.5 * v_2 + 0.5 * R_2) = 2 + 0.9 * 30 = 29
    # R_0 = r_1 + 0.9 * (0.5 * v_1 + 0.5 * R_1) = 1 + 0.9 * (10 + 14.5) = 23.05
    torch.testing.assert_close(ret, torch.tensor([23.05, 29.0, 30.0, 49.0]))
    # State 2 terminal: R_1 = r_2 = 2, R_0 = 1 + 0.9 * (0.5 * 20 + 0.5 * 2) = 10.9.
    terminal[2] = True
    ret, _ = replay_lambda_return(reward, value, first, terminal, 0.5, 0.9)
    torch.testing.assert_close(ret[:2], torch.tensor([10.9, 2.0]))
    # Batch axes after time: the same sequence twice gives the same returns twice.
    ret2, _ = replay_lambda_return(*(x[:, None].expand(5, 2) for x in (reward, value, first, terminal)), 0.5, 0.9)
    torch.testing.assert_close(ret2, ret[:, None].expand(4, 2))


def test_return_normalizer_ema_floor_and_state_dict():
    norm = ReturnNormalizer()
    norm.update(torch.arange(101.0))  # P5 = 5, P95 = 95 -> low = 0.05, high = 0.95, range 0.9 -> floor 1
    torch.testing.assert_close(norm.low, torch.tensor(0.05))
    torch.testing.assert_close(norm.high, torch.tensor(0.95))
    assert norm.scale().item() == 1.0
    norm = ReturnNormalizer()
    norm.update(torch.arange(1001.0))  # P5 = 50, P95 = 950 -> low 0.5, high 9.5, scale 9
    torch.testing.assert_close(norm.scale(), torch.tensor(9.0))
    torch.testing.assert_close(norm(torch.tensor(18.0)), torch.tensor(2.0))
    norm.update(torch.arange(1001.0))  # low = 0.99 * 0.5 + 0.5 = 0.995, high = 18.905 -> scale 17.91
    torch.testing.assert_close(norm.scale(), torch.tensor(17.91))
    other = ReturnNormalizer()
    other.load_state_dict(norm.state_dict())
    torch.testing.assert_close(other.scale(), norm.scale())


def test_unimix_logits_mixes_in_uniform():
    logits = torch.tensor([[100.0, -100.0]])
    probs = unimix_logits(logits, 0.01).exp()
    torch.testing.assert_close(probs, torch.tensor([[0.995, 0.005]]))  # 0.99 * [1, 0] + 0.01 / 2
    torch.testing.assert_close(unimix_logits(torch.randn(5, 7), 0.01).exp().sum(-1), torch.ones(5))


def test_categorical_sample_st_inverse_cdf_and_gradient():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2])).requires_grad_()
    # CDF = [0.5, 0.8, 1.0]: u < 0.5 -> 0, 0.5 <= u < 0.8 -> 1, else 2.
    for u, cls in ((0.0, 0), (0.49, 0), (0.6, 1), (0.85, 2), (0.9999999, 2)):
        sample = categorical_sample_st(logits, torch.tensor([u]))
        torch.testing.assert_close(sample.detach(), torch.eye(3)[cls])
    weights = torch.tensor([1.0, 2.0, 3.0])
    (categorical_sample_st(logits, torch.tensor([0.6])) * weights).sum().backward()
    grad_st = logits.grad.clone()
    logits.grad = None
    (torch.softmax(logits, -1) * weights).sum().backward()
    torch.testing.assert_close(grad_st, logits.grad)  # straight-through: gradient of the probabilities


def test_categorical_sample_st_frequencies_match_probs():
    gen = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.1, 0.6, 0.3])
    noise = torch.rand(40000, 1, generator=gen)
    samples = categorical_sample_st(torch.log(probs).expand(40000, 3), noise)
    torch.testing.assert_close(samples.mean(0), probs, atol=0.01, rtol=0)
    torch.testing.assert_close(categorical_mode_st(torch.log(probs)), torch.tensor([0.0, 1.0, 0.0]))


def test_categorical_kl_and_entropy_known_values():
    p = torch.log(torch.tensor([0.5, 0.5]))
    q = torch.log(torch.tensor([0.25, 0.75]))
    # KL = 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75)
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    assert categorical_kl(p, q).item() == pytest.approx(expected, abs=1e-6)
    assert categorical_kl(q, q).item() == pytest.approx(0.0, abs=1e-7)
    assert categorical_entropy(torch.zeros(4)).item() == pytest.approx(math.log(4.0), abs=1e-6)
