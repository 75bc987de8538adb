"""Sequence replay: fixed-size chunks of consecutive steps, sampled as (B, T) windows.

Layout. Every key (``image``, ``state``, ``action``, ``reward``, ``is_first``...) is one preallocated
array of shape (slots + streams, chunk, ...); images stay uint8. Rows ``[0, slots)`` hold closed chunks,
rows ``[slots, slots + streams)`` are each env stream's open chunk. When a stream's chunk is full it is
closed: the insertion policy picks the slot it is copied to, or drops it:

- ``fifo``: the oldest slot is overwritten (the usual ring buffer);
- ``reservoir``: once every slot is used, a closed chunk replaces a random slot with probability
  slots / chunks_seen, so the buffer stays a uniform sample of the whole run (as in Continual-Dreamer).

Sampling. A sampled window is T consecutive steps of one stream, drawn uniformly over all such windows
held. Every chunk is labelled (stream, index) when it is opened, and a window that starts in a full
chunk may run on into the chunk labelled (same stream, index + 1) when that one is held too: the next
closed chunk, or the stream's open chunk. So a step lies in T windows wherever its stream's stored steps
run on T - 1 steps either side of it, not only in the middle of its chunk (chunk 256, T 64: with windows
kept inside chunks, a quarter of the steps lay in fewer windows, those at a chunk's edge in one). With
``fifo`` the chunks of a stream are consecutive, so only the oldest and newest T - 1 steps of each
stream lie in fewer windows. With ``reservoir`` the kept chunks are a random subset and mostly not
consecutive; since a window only crosses into a chunk labelled as the very next one of the same stream,
it never joins steps that were not consecutive in time: it stays inside its chunk unless the chunk's
successor happens to be kept as well. Windows may cross episode boundaries, which ``is_first`` marks.
A batch costs one fancy-indexing copy per key.

Persistence. A closed chunk is written once, to its own file, when it is kept. ``state_dict`` writes the
open chunks and returns the list of files that make up the buffer; ``collect_garbage`` (called after a
checkpoint is safely on disk) and ``load_state_dict`` delete chunk files that the checkpoint does not
name, so a run killed between checkpoints resumes with exactly the checkpointed contents.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np


class Replay:
    """Chunked sequence replay with an insertion policy and uniform window sampling.

    Args:
        capacity: steps held at most in closed chunks (rounded down to whole chunks).
        chunk: steps per chunk; windows longer than this cannot be sampled.
        policy: ``fifo`` or ``reservoir`` (see the module docstring).
        directory: where chunk files go; ``None`` keeps everything in memory (no persistence).
        seed: seeds sampling and reservoir decisions.
    """

    POLICIES = ("fifo", "reservoir")

    def __init__(self, capacity: int, chunk: int = 256, policy: str = "fifo",
                 directory: str | Path | None = None, seed: int = 0):
        if policy not in self.POLICIES:
            raise ValueError(f"replay policy must be one of {self.POLICIES}, got {policy!r}.")
        if chunk < 1 or capacity < 2 * chunk:
            raise ValueError(f"replay capacity ({capacity}) must hold at least two chunks of {chunk} steps.")
        self.chunk, self.policy = chunk, policy
        self.slots = capacity // chunk
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.rng = np.random.default_rng(seed)
        self.data: dict[str, np.ndarray] = {}
        self.streams = 0
        self.filled = np.zeros(self.slots, np.int64)  # grows by `streams` rows at the first add
        self.files: list[str | None] = [None] * self.slots  # the file of each closed chunk
        # (stream, index within the stream) of each row's chunk; (-1, -1) for none or unknown
        self.labels = np.full((self.slots, 2), -1, np.int64)
        self.closed = np.zeros(0, np.int64)  # chunks each stream has closed so far
        self.next_fifo = 0
        self.chunks_seen = 0
        self.steps_added = 0
        self._successor: np.ndarray | None = None  # `_successors` until a chunk is opened, closed or loaded

    # ----- writing

    def _allocate(self, step: dict[str, np.ndarray]) -> None:
        self.streams = len(next(iter(step.values())))
        rows = self.slots + self.streams
        for key, value in step.items():
            value = np.asarray(value)
            self.data[key] = np.zeros((rows, self.chunk, *value.shape[1:]), value.dtype)
        self.filled = np.concatenate([self.filled, np.zeros(self.streams, np.int64)])
        self.closed = np.zeros(self.streams, np.int64)
        self.labels = np.concatenate([self.labels, np.stack([np.arange(self.streams), self.closed], 1)])

    def add(self, step: dict[str, np.ndarray]) -> None:
        """Add one step of every stream: each value has a leading axis of N streams."""
        if not self.data:
            self._allocate(step)
        if set(step) != set(self.data):
            raise ValueError(f"replay step keys {sorted(step)} differ from the stored keys {sorted(self.data)}.")
        rows = np.arange(self.slots, self.slots + self.streams)
        index = self.filled[rows]
        for key, value in step.items():
            value = np.asarray(value)
            if value.shape != (self.streams, *self.data[key].shape[2:]):
                raise ValueError(f"replay step {key!r} has shape {value.shape}, expected "
                                 f"{(self.streams, *self.data[key].shape[2:])}.")
            self.data[key][rows, index] = value
        if np.any(index == 0):  # a chunk starts being held
            self._successor = None
        self.filled[rows] += 1
        self.steps_added += self.streams
        for stream in np.flatnonzero(self.filled[rows] == self.chunk):
            self._close(int(stream))

    def _close(self, stream: int) -> None:
        row = self.slots + stream
        slot = self._choose_slot()
        if slot is not None:
            for array in self.data.values():
                array[slot] = array[row]
            self.filled[slot] = self.chunk
            self.labels[slot] = self.labels[row]
            self.files[slot] = self._write_chunk(slot, "chunk") if self.directory is not None else None
        self.filled[row] = 0
        self.closed[stream] += 1
        self.labels[row] = (stream, self.closed[stream])
        self._successor = None

    def _choose_slot(self) -> int | None:
        self.chunks_seen += 1
        if self.policy == "fifo":
            slot, self.next_fifo = self.next_fifo, (self.next_fifo + 1) % self.slots
            return slot
        if self.chunks_seen <= self.slots:
            return self.chunks_seen - 1
        j = int(self.rng.integers(self.chunks_seen))
        return j if j < self.slots else None

    # ----- sampling

    def __len__(self) -> int:
        """Steps currently held (closed and open chunks)."""
        return int(self.filled.sum())

    def can_sample(self, length: int) -> bool:
        # A window that runs into a successor starts in a full chunk, which holds one of its own.
        return bool(np.any(self.filled >= length))

    def _successors(self) -> np.ndarray:
        """(rows,) the row holding the chunk that follows each row's chunk in its stream, or -1. It changes
        only when a chunk starts being held, is closed or is loaded, so it is kept until then."""
        if self._successor is None:
            self._successor = self._find_successors()
        return self._successor

    def _find_successors(self) -> np.ndarray:
        successor = np.full(len(self.filled), -1, np.int64)
        held = np.flatnonzero((self.filled > 0) & (self.labels[:, 0] >= 0))
        if len(held) == 0:
            return successor
        key = self.labels[held, 0] * 2**40 + self.labels[held, 1]  # (stream, index) as one sortable number
        order = np.argsort(key)
        position = np.minimum(np.searchsorted(key[order], key + 1), len(held) - 1)
        found = key[order][position] == key + 1
        successor[held[found]] = held[order[position[found]]]
        return successor

    def _windows(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the number of windows of ``length`` steps that start in it (at offsets 0, 1, ...), and
        the row its windows run on into (-1: none)."""
        successor = self._successors()
        inside = np.maximum(self.filled - length + 1, 0)
        crossing = np.where((self.filled == self.chunk) & (successor >= 0),
                            np.minimum(length - 1, self.filled[successor]), 0)
        return inside + crossing, successor

    def sample(self, batch: int, length: int) -> dict[str, np.ndarray]:
        """``batch`` windows of ``length`` consecutive steps, uniformly over all stored windows: (B, T, ...)."""
        if length > self.chunk:
            raise ValueError(f"cannot sample windows of {length} steps from chunks of {self.chunk}.")
        windows, successor = self._windows(length)
        total = int(windows.sum())
        if total == 0:
            raise ValueError(f"replay holds no window of {length} steps yet ({len(self)} steps stored).")
        pick = self.rng.integers(total, size=batch)
        ends = np.cumsum(windows)
        rows = np.searchsorted(ends, pick, side="right")
        offsets = pick - (ends[rows] - windows[rows])
        steps = offsets[:, None] + np.arange(length)  # (B, T), past the chunk's end into its successor
        beyond = steps >= self.chunk
        rows = np.where(beyond, successor[rows][:, None], rows[:, None])  # (B, T)
        steps = steps - self.chunk * beyond
        return {key: array[rows, steps] for key, array in self.data.items()}

    def bytes_per_step(self) -> int:
        """Memory one stored step takes, all keys together (64x64 pixels: about 12 KB)."""
        return int(sum(array.itemsize * int(np.prod(array.shape[2:])) for array in self.data.values()))

    # ----- persistence

    def _write_chunk(self, row: int, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}.npz"
        tmp = self.directory / (name + ".tmp")
        count = int(self.filled[row]) if prefix == "open" else self.chunk
        with open(tmp, "wb") as file:
            np.savez(file, **{key: array[row, :count] for key, array in self.data.items()})
        os.replace(tmp, self.directory / name)
        return name

    def state_dict(self) -> dict[str, Any]:
        """Counters, RNG and the names of the chunk files that hold the contents; writes the open chunks."""
        if self.directory is None:
            raise ValueError("this replay has no directory, so it cannot be saved; pass directory=...")
        open_files = [self._write_chunk(self.slots + s, "open") if self.filled[self.slots + s] else None
                      for s in range(self.streams)]
        return {"chunk": self.chunk, "slots": self.slots, "policy": self.policy, "streams": self.streams,
                "files": list(self.files), "open_files": open_files, "next_fifo": self.next_fifo,
                "chunks_seen": self.chunks_seen, "steps_added": self.steps_added,
                "labels": self.labels[: self.slots].tolist(), "closed": self.closed.tolist(),
                "rng": self.rng.bit_generator.state,
                "layout": {k: (str(a.dtype), list(a.shape[2:])) for k, a in self.data.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore contents and counters from ``state_dict``'s output and the files it names."""
        for field in ("chunk", "slots", "policy"):
            if state[field] != getattr(self, field):
                raise ValueError(f"replay {field} in the checkpoint ({state[field]!r}) differs from this run's "
                                 f"({getattr(self, field)!r}).")
        self.data, self.filled, self.streams = {}, np.zeros(self.slots, np.int64), 0
        self.labels, self.closed = np.full((self.slots, 2), -1, np.int64), np.zeros(0, np.int64)
        if state["layout"]:
            self.streams = state["streams"]
            template = {k: np.zeros((self.streams, *shape), dtype) for k, (dtype, shape) in state["layout"].items()}
            self._allocate(template)
        rows = [(slot, name) for slot, name in enumerate(state["files"])]
        rows += [(self.slots + s, name) for s, name in enumerate(state["open_files"])]
        for row, name in rows:
            if name is None:
                continue
            path = self.directory / name
            if not path.exists():
                raise ValueError(f"replay chunk {path} named by the checkpoint is missing.")
            with np.load(path) as chunk:
                count = len(chunk["is_first"]) if "is_first" in chunk else len(next(iter(chunk.values())))
                for key in self.data:
                    self.data[key][row, :count] = chunk[key]
            self.filled[row] = count
        self.files = list(state["files"])
        if "labels" in state:  # checkpoints written before chunks were labelled leave them unknown (-1)
            self.labels[: self.slots] = state["labels"]
            self.closed = np.array(state["closed"], np.int64)
            self.labels[self.slots:] = np.stack([np.arange(self.streams), self.closed], 1)
        self.next_fifo, self.chunks_seen = state["next_fifo"], state["chunks_seen"]
        self.steps_added = state["steps_added"]
        self.rng.bit_generator.state = state["rng"]
        self._successor = None
        self.collect_garbage(state)

    def collect_garbage(self, state: dict[str, Any]) -> None:
        """Delete chunk files that ``state`` (the checkpoint now on disk) does not name."""
        if self.directory is None:
            return
        keep = {name for name in [*state["files"], *state["open_files"]] if name}
        for path in self.directory.glob("*.npz*"):
            if path.name not in keep:
                path.unlink(missing_ok=True)


class MixedReplay:
    """Several replays fed the same steps, each batch drawn from them in fixed fractions.

    ``MixedReplay([Replay(..., policy='fifo'), Replay(..., policy='reservoir')], [0.5, 0.5])`` is the
    50:50 mix of recent and reservoir data used for continual learning.
    """

    def __init__(self, replays: list[Replay], fractions: list[float]):
        if len(replays) != len(fractions) or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
            raise ValueError(f"MixedReplay needs one non-negative fraction per replay summing to 1, got {fractions}.")
        self.replays, self.fractions = replays, fractions

    def add(self, step: dict[str, np.ndarray]) -> None:
        for replay in self.replays:
            replay.add(step)

    def __len__(self) -> int:
        return max(len(r) for r in self.replays)

    @property
    def steps_added(self) -> int:
        return self.replays[0].steps_added

    def can_sample(self, length: int) -> bool:
        return all(r.can_sample(length) for r in self.replays)

    def sample(self, batch: int, length: int) -> dict[str, np.ndarray]:
        counts = np.floor(np.array(self.fractions) * batch).astype(int)
        counts[0] += batch - counts.sum()
        parts = [r.sample(int(n), length) for r, n in zip(self.replays, counts) if n > 0]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def bytes_per_step(self) -> int:
        return self.replays[0].bytes_per_step()

    def state_dict(self) -> dict[str, Any]:
        return {"replays": [r.state_dict() for r in self.replays]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for replay, sub in zip(self.replays, state["replays"]):
            replay.load_state_dict(sub)

    def collect_garbage(self, state: dict[str, Any]) -> None:
        for replay, sub in zip(self.replays, state["replays"]):
            replay.collect_garbage(sub)
