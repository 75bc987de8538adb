"""Memory: the process's resident memory is logged, and a long run of updates does not grow it."""

import ctypes
import ctypes.util
import gc
import mmap

import gymnasium as gym
import numpy as np
import pytest
import torch

from agent.agent import Agent
from agent.config import apply_overrides, preset
from agent.logger import memory_mb

WARMUP, UPDATES = 30, 200
# The bound: after warm-up the agent keeps nothing per update; 200 updates of the debug agent (B=4, T=16)
# measured +0.07 MB, with gc and malloc_trim before each reading so that freed heap is not counted. 0.5 MB
# is 2.5 KB per update. Leaks seen to fail it (in a copy of this test): keeping each update's batch (about
# 2.7 KB of arrays; +1.4 MB, heap fragmentation included), its tensors from ``agent.to_torch`` (+1.4 MB), or
# only its metrics dict of floats (+1.0 MB); anything larger (a graph, activations) fails it by far.
BOUND_MB = 0.5


def random_batch(seed: int, B: int = 4, T: int = 16) -> dict[str, np.ndarray]:
    """A replay-like (B, T) batch of 5-dim states and 2-dim actions, each sequence starting an episode."""
    rng = np.random.default_rng(seed)
    batch = {"state": rng.normal(size=(B, T, 5)).astype(np.float32),
             "action": rng.uniform(-1, 1, (B, T, 2)).astype(np.float32),
             "reward": rng.uniform(0, 1, (B, T)).astype(np.float32),
             "is_first": np.zeros((B, T), bool), "is_last": np.zeros((B, T), bool),
             "is_terminal": np.zeros((B, T), bool)}
    batch["is_first"][:, 0] = True
    return batch


def _libc_malloc_trim():
    """glibc's ``malloc_trim`` (returns freed heap pages to the OS), or None on other C libraries."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def resident_mb(trim) -> float:
    """RSS after a collection and a trim: live memory, not heap pages freed but still mapped."""
    gc.collect()
    trim(0)
    return memory_mb()["memory/rss_mb"]


def test_memory_is_reported():
    values = memory_mb()
    assert set(values) == {"memory/rss_mb", "memory/peak_rss_mb"}
    assert values["memory/peak_rss_mb"] > 10  # a Python process with torch loaded
    if values["memory/rss_mb"] is not None:  # no /proc: None
        # 128 MB of fresh anonymous pages (an mmap, so no reuse of memory the process freed before), touched
        held = mmap.mmap(-1, 128 * 2**20)
        for page in range(0, len(held), 4096):
            held[page] = 1
        after = memory_mb()
        assert after["memory/rss_mb"] - values["memory/rss_mb"] > 100
        # The peak is at least the current RSS (the kernel updates its high-water mark lazily: a little slack).
        assert after["memory/peak_rss_mb"] > after["memory/rss_mb"] - 5
        held.close()


@pytest.mark.slow
def test_updates_do_not_grow_memory():
    trim = _libc_malloc_trim()
    if trim is None or memory_mb()["memory/rss_mb"] is None:
        pytest.skip("needs /proc/self/statm and glibc's malloc_trim for a stable reading")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        obs_space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)})
        cfg = apply_overrides(preset("debug"), ["actor_critic.horizon=5"])
        agent = Agent(obs_space, gym.spaces.Box(-1, 1, (2,), np.float32), cfg)
        batches = [random_batch(seed) for seed in range(8)]
        for i in range(WARMUP):
            agent.train_step(batches[i % len(batches)])
        before = resident_mb(trim)
        for i in range(UPDATES):
            agent.train_step(batches[i % len(batches)])
        grown = resident_mb(trim) - before
    finally:
        torch.set_num_threads(threads)
    assert grown < BOUND_MB, f"{UPDATES} updates grew resident memory by {grown:.2f} MB"
