"""Fixed datasets for training a world model alone: recording them, reading them, sampling windows.

A dataset is a directory with ``dataset.json`` (how it was recorded) and two replay directories, ``train/`` and
``heldout/``, of ``.npz`` chunk files as ``agent.replay`` writes them; recorded episodes are one file each and add
``state``, ``qpos`` and ``qvel``. Any training run's ``replay/`` directory can be read too (a window never joins
two files). Episode i of a split is acted on by ``policies[i % len(policies)]``:

- ``random``: uniform actions in [-1, 1];
- ``smooth``: per action dimension an AR(1) (discrete Ornstein-Uhlenbeck) process
  x_{t+1} = rho x_t + sqrt(1 - rho^2) sigma eps_t from its stationary law, clipped to [-1, 1]: it pushes one way
  for about 1 / (1 - rho) steps and reaches states uniform noise never does (a swung-up pole);
- ``agent``: a trained agent's exploring policy (``--checkpoint``; its action repeat must be the dataset's).

Train episode i resets the env with seed ``seed + i``, held-out episode j with ``seed + HELDOUT_OFFSET + j``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import write_atomically

POLICIES = ("random", "smooth", "agent")
HELDOUT_OFFSET = 1_000_000
Episode = dict[str, np.ndarray]
Policy = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------- policies


class SmoothRandomPolicy:
    """Temporally correlated random actions (see the module docstring): (obs, is_first (1,)) -> (1, A).

    Restarts from the stationary law N(0, sigma^2) at every ``is_first``."""

    def __init__(self, action_shape: tuple[int, ...], rng: np.random.Generator, rho: float = 0.95,
                 sigma: float = 0.8):
        if not 0 <= rho < 1 or sigma <= 0:
            raise ValueError(f"smooth policy needs 0 <= rho < 1 and sigma > 0, got rho={rho}, sigma={sigma}.")
        self.shape, self.rng, self.rho, self.sigma = tuple(action_shape), rng, rho, sigma
        self.x = np.zeros(self.shape)

    def __call__(self, obs: dict[str, np.ndarray], is_first: np.ndarray) -> np.ndarray:
        noise = self.rng.normal(0.0, self.sigma, self.shape)
        self.x = noise if is_first[0] else self.rho * self.x + np.sqrt(1 - self.rho**2) * noise
        return np.clip(self.x, -1, 1).astype(np.float32)[None]  # (1, A)


def uniform_policy(action_shape: tuple[int, ...], rng: np.random.Generator) -> Policy:
    """Uniform actions in [-1, 1]: (obs, is_first (1,)) -> (1, A)."""
    return lambda obs, is_first: rng.uniform(-1, 1, (1, *action_shape)).astype(np.float32)


def agent_policy(agent: Any, keys: list[str], explore: bool = True) -> Policy:
    """A trained agent's exploring (or, without ``explore``, deterministic) policy, restarting its latent state
    at every ``is_first``."""
    carry = None

    def act(obs: dict[str, np.ndarray], is_first: np.ndarray) -> np.ndarray:
        nonlocal carry
        carry = None if is_first[0] else carry
        action, carry = agent.act({k: obs[k] for k in keys}, is_first, carry, explore=explore)
        return action

    return act


# --------------------------------------------------------------------------------------------- recording


def episode_seed(seed: int, split: str, index: int) -> int:
    """The env reset seed of episode ``index`` of ``split``; the policy's RNG is seeded with it too."""
    return seed + index + (HELDOUT_OFFSET if split == "heldout" else 0)


def make_policy(name: str, env: Any, rng: np.random.Generator, agent: tuple[Any, list[str]] | None,
                rho: float, sigma: float) -> Policy:
    """The policy called ``name`` for a fresh episode of ``env``."""
    if name == "random":
        return uniform_policy(env.action_space.shape, rng)
    if name == "smooth":
        return SmoothRandomPolicy(env.action_space.shape, rng, rho, sigma)
    if agent is None:
        raise ValueError("the agent policy needs --checkpoint.")
    return agent_policy(*agent)


def write_episode(directory: Path, index: int, episode: Episode) -> Path:
    """Write one episode as a compressed chunk file, atomically (a killed recording leaves no half file)."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as file:  # a file, so that numpy adds no .npz to the name
            np.savez_compressed(file, **episode)

    return write_atomically(directory / f"chunk-ep{index:06d}.npz", save)


def record_split(env: Any, directory: Path, split: str, episodes: int, policies: list[str], seed: int,
                 agent: tuple[Any, list[str]] | None, rho: float, sigma: float, max_steps: int = 0,
                 progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Record ``episodes`` episodes of one split into ``directory`` (skipping those already written, so a
    killed recording resumes); returns one summary per episode: policy, seed, length, return."""
    from .insight import record_episode

    summaries = []
    for i in range(episodes):
        name, s = policies[i % len(policies)], episode_seed(seed, split, i)
        path = directory / f"chunk-ep{i:06d}.npz"
        if not path.exists():
            policy = make_policy(name, env, np.random.default_rng(s), agent, rho, sigma)
            write_episode(directory, i, record_episode(env, list(env.observation_space.spaces), policy, s, max_steps))
        with np.load(path) as episode:
            summary = {"index": i, "policy": name, "seed": s, "length": int(len(episode["reward"])),
                       "return": float(episode["reward"].sum())}
        summaries.append(summary)
        progress(f"  {split} {i + 1}/{episodes}: {name:6s} length {summary['length']}, return {summary['return']:.1f}")
    return summaries


# --------------------------------------------------------------------------------------------- reading


def chunk_files(directory: str | Path) -> list[Path]:
    """The chunk files of a replay directory, sorted by name (recorded episodes: by index)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory.")
    files = sorted(p for p in directory.glob("*.npz") if p.is_file())
    if not files:
        raise ValueError(f"{directory} holds no .npz chunk files (a replay directory or a recorded split).")
    return files


def load_segments(directory: str | Path, keys: list[str] | None = None, limit: int = 0) -> list[Episode]:
    """Every chunk file of a replay directory as a dict of (T, ...) arrays (only ``keys`` when given; the
    first ``limit`` files when > 0). A key missing from a file is a ValueError naming both."""
    out = []
    for path in chunk_files(directory)[: limit or None]:
        with np.load(path) as chunk:
            missing = [k for k in keys or [] if k not in chunk]
            if missing:
                raise ValueError(f"{path} lacks {missing} (it has {sorted(chunk.files)}).")
            out.append({k: chunk[k] for k in (keys or chunk.files)})
    return out


def split_episodes(segments: list[Episode]) -> list[Episode]:
    """Whole episodes: each segment cut before every ``is_first`` after its first step; parts that do not
    start with ``is_first`` (an episode begun in an earlier chunk) are dropped."""
    out = []
    for seg in segments:
        starts = np.flatnonzero(seg["is_first"])
        ends = [*starts[1:], len(seg["is_first"])]
        out += [{k: v[a:b] for k, v in seg.items()} for a, b in zip(starts, ends)]
    return out


class WindowSampler:
    """Uniform windows of ``length`` consecutive steps from segments, never across two segments.

    ``sample(B)`` returns (B, T, ...) arrays of every key; ``state_dict``/``load_state_dict`` carry the
    random generator, so a resumed run draws the batches the uninterrupted one would have."""

    def __init__(self, segments: list[Episode], length: int, seed: int):
        self.segments = [s for s in segments if len(s["is_first"]) >= length]
        if not self.segments:
            lengths = sorted({len(s["is_first"]) for s in segments})
            raise ValueError(f"no segment holds a window of {length} steps (segment lengths {lengths[:10]}).")
        self.length = length
        self.windows = np.array([len(s["is_first"]) - length + 1 for s in self.segments])
        self.ends = np.cumsum(self.windows)
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int) -> dict[str, np.ndarray]:
        """``batch`` windows, uniformly over all windows of all segments: (B, T, ...)."""
        pick = self.rng.integers(self.ends[-1], size=batch)
        rows = np.searchsorted(self.ends, pick, side="right")
        offsets = pick - (self.ends[rows] - self.windows[rows])
        parts = [{k: v[o : o + self.length] for k, v in self.segments[r].items()} for r, o in zip(rows, offsets)]
        return {k: np.stack([p[k] for p in parts]) for k in parts[0]}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
