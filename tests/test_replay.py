"""Sequence replay: windows, policies, persistence."""

import numpy as np
import pytest

from agent.replay import MixedReplay, Replay


def fill(replay, steps, streams=2, episode=50, start=0):
    """Each step records its own time index and stream, so windows can be checked exactly."""
    for t in range(start, start + steps):
        replay.add({
            "t": np.full(streams, t, np.int64),
            "stream": np.arange(streams),
            "image": np.full((streams, 4, 4, 3), t % 256, np.uint8),
            "is_first": np.full(streams, t % episode == 0),
        })


def test_windows_are_consecutive_steps_of_one_stream():
    replay = Replay(capacity=400, chunk=40)
    fill(replay, 300)
    batch = replay.sample(64, 16)
    assert batch["t"].shape == (64, 16) and batch["image"].shape == (64, 16, 4, 4, 3)
    assert batch["image"].dtype == np.uint8
    np.testing.assert_array_equal(np.diff(batch["t"], axis=1), 1)
    assert np.all(batch["stream"] == batch["stream"][:, :1])
    # Windows may cross episode boundaries; is_first marks where.
    crossing = batch["is_first"][:, 1:].any(axis=1)
    assert crossing.any()
    np.testing.assert_array_equal(batch["is_first"], batch["t"] % 50 == 0)


def test_open_chunks_are_sampled_before_any_chunk_closes():
    replay = Replay(capacity=1000, chunk=100)
    fill(replay, 20, streams=1)
    assert replay.can_sample(16) and not replay.can_sample(21)
    assert replay.sample(4, 16)["t"].max() < 20
    with pytest.raises(ValueError, match="no window of 32"):
        replay.sample(4, 32)


def test_fifo_keeps_the_newest_steps():
    replay = Replay(capacity=200, chunk=20)  # 10 slots of 20 steps, per stream 5 chunks
    fill(replay, 1000)
    assert len(replay) <= 200 + 2 * 20
    assert replay.sample(256, 10)["t"].min() >= 1000 - 100 - 20


@pytest.mark.parametrize("steps", [150, 1010])  # nothing dropped yet; the oldest chunks overwritten
def test_fifo_draws_every_stored_step_about_equally_often(steps):
    """Windows run on across chunk edges within a stream, so a step at a chunk's edge is drawn as often
    as one in its middle; only the first and last T - 1 steps a stream holds lie in fewer windows."""
    T, draws = 16, 50_000
    replay = Replay(capacity=400, chunk=40, seed=0)  # 10 slots: 5 closed chunks per stream, and an open one
    fill(replay, steps, streams=2)
    batch = replay.sample(draws, T)
    np.testing.assert_array_equal(np.diff(batch["t"], axis=1), 1)
    assert np.all(batch["stream"] == batch["stream"][:, :1])
    held = min(steps, 200 + steps % 40)  # steps each stream holds: the newest ones
    counts = np.zeros((2, steps))
    np.add.at(counts, (batch["stream"], batch["t"]), 1)
    middle = counts[:, steps - held + T - 1: steps - T + 1]  # steps with T - 1 held steps either side
    expected = draws * T / (2 * (held - T + 1))  # each lies in T of the held windows
    assert np.abs(middle / expected - 1).max() < 0.12
    assert counts[:, : steps - held].sum() == 0


@pytest.mark.parametrize("policy", ["fifo", "reservoir"])
def test_the_kept_successor_map_is_always_the_one_the_chunks_give(tmp_path, policy):
    """Sampling keeps the map of which chunk follows which between calls: after every add (chunks open, close
    and are overwritten) and after a resume it must equal the map computed afresh."""
    replay = Replay(capacity=60, chunk=10, policy=policy, directory=tmp_path, seed=1)
    for t in range(150):
        fill(replay, 1, start=t)
        if replay.can_sample(8):
            replay.sample(2, 8)
        np.testing.assert_array_equal(replay._successors(), replay._find_successors())
    restored = Replay(capacity=60, chunk=10, policy=policy, directory=tmp_path, seed=2)
    restored.load_state_dict(replay.state_dict())
    np.testing.assert_array_equal(restored._successors(), replay._find_successors())


def test_reservoir_windows_never_join_chunks_that_were_not_consecutive():
    replay = Replay(capacity=400, chunk=10, policy="reservoir", seed=1)
    fill(replay, 2000, streams=1)
    batch = replay.sample(5000, 8)
    np.testing.assert_array_equal(np.diff(batch["t"], axis=1), 1)
    kept = np.sort(replay.data["t"][: replay.slots, 0])
    # Where two consecutive chunks were both kept, windows run from one into the other.
    assert np.any(np.diff(kept) == 10) and np.any(batch["t"][:, 0] % 10 > 10 - 8)


def test_reservoir_keeps_a_sample_of_the_whole_run():
    replay = Replay(capacity=400, chunk=10, policy="reservoir", seed=1)
    fill(replay, 5000, streams=1)
    kept = replay.data["t"][: replay.slots, 0][replay.filled[: replay.slots] > 0]
    assert len(kept) == 40
    # A uniform sample of 500 chunks: old data survives, and the mean is near the middle.
    assert kept.min() < 1000 and 1500 < kept.mean() < 3500


def test_bytes_per_step():
    replay = Replay(capacity=100, chunk=10)
    fill(replay, 5)
    assert replay.bytes_per_step() == 8 + 8 + 48 + 1


def test_mismatched_steps_are_rejected():
    replay = Replay(capacity=100, chunk=10)
    fill(replay, 5)
    with pytest.raises(ValueError, match="keys"):
        replay.add({"t": np.zeros(2, np.int64)})
    with pytest.raises(ValueError, match="shape"):
        replay.add({"t": np.zeros(3, np.int64), "stream": np.zeros(3), "image": np.zeros((3, 4, 4, 3), np.uint8),
                    "is_first": np.zeros(3, bool)})
    with pytest.raises(ValueError, match="policy"):
        Replay(capacity=100, chunk=10, policy="lifo")


@pytest.mark.parametrize("policy", ["fifo", "reservoir"])
def test_save_and_resume_restores_exact_contents(tmp_path, policy):
    replay = Replay(capacity=200, chunk=20, policy=policy, directory=tmp_path, seed=3)
    fill(replay, 333)
    state = replay.state_dict()
    size = len(replay)
    expected = replay.sample(32, 8)
    replay.rng.bit_generator.state = state["rng"]
    # Work after the checkpoint writes new chunk files that the checkpoint does not name.
    fill(replay, 200, start=333)
    restored = Replay(capacity=200, chunk=20, policy=policy, directory=tmp_path, seed=99)
    restored.load_state_dict(state)
    got = restored.sample(32, 8)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    assert restored.steps_added == 666 and len(restored) == size
    names = {p.name for p in tmp_path.glob("*.npz")}
    assert names == {n for n in [*state["files"], *state["open_files"]] if n}
    # Adding continues where the checkpoint stopped.
    fill(restored, 40, start=333)
    assert restored.sample(64, 8)["t"].max() >= 333


def test_checkpoints_without_chunk_labels_still_load(tmp_path):
    """Replay state written before chunks were labelled: its chunks are sampled each on its own."""
    replay = Replay(capacity=200, chunk=20, directory=tmp_path)
    fill(replay, 100)
    state = replay.state_dict()
    del state["labels"], state["closed"]
    restored = Replay(capacity=200, chunk=20, directory=tmp_path)
    restored.load_state_dict(state)
    assert len(restored) == 200
    batch = restored.sample(500, 8)
    np.testing.assert_array_equal(np.diff(batch["t"], axis=1), 1)
    assert (batch["t"][:, 0] % 20).max() <= 20 - 8  # no window crosses a chunk edge
    fill(restored, 40, start=100)  # chunks closed from now on are labelled and joined
    assert np.any(restored.sample(500, 8)["t"][:, 0] % 20 > 20 - 8)


def test_resume_with_a_missing_chunk_file_is_a_clear_error(tmp_path):
    replay = Replay(capacity=200, chunk=20, directory=tmp_path)
    fill(replay, 100)
    state = replay.state_dict()
    (tmp_path / state["files"][0]).unlink()
    with pytest.raises(ValueError, match="missing"):
        Replay(capacity=200, chunk=20, directory=tmp_path).load_state_dict(state)
    with pytest.raises(ValueError, match="chunk"):
        Replay(capacity=200, chunk=10, directory=tmp_path).load_state_dict(state)


def test_mixed_replay_draws_fixed_fractions():
    recent = Replay(capacity=100, chunk=10)
    reservoir = Replay(capacity=100, chunk=10, policy="reservoir")
    mixed = MixedReplay([recent, reservoir], [0.5, 0.5])
    fill(mixed, 2000, streams=1)
    batch = mixed.sample(64, 5)
    assert batch["t"].shape == (64, 5)
    assert batch["t"][:32].min() >= 1880  # the FIFO half is recent
    assert batch["t"][32:].min() < 1500  # the reservoir half reaches back
    with pytest.raises(ValueError, match="fraction"):
        MixedReplay([recent, reservoir], [0.7, 0.7])
