"""Helpers shared by the benchmarks: machine description and results files."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from agent.revision import git_revision


def machine_info() -> dict[str, Any]:
    """What ran the benchmark: enough to tell two results files' machines apart."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": _cpu_model(),
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
    }
    revision = git_revision(Path(__file__).parent)
    info["git_commit"] = revision["commit"]
    info["git_dirty"] = revision.get("dirty")
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (a killed run never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table of strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def fmt(value: float | None, digits: int = 2) -> str:
    """A number with ``digits`` decimals, or "-" for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def mean_or_none(values: list[float | None]) -> float | None:
    """The mean of the values that are not None (None when there are none)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def panels(n: int, cols: int, width: float = 5.0, height: float = 3.6) -> tuple[Any, list[Any]]:
    """A matplotlib figure (Agg) of ``n`` panels of ``width`` x ``height`` inches in rows of ``cols`` (those past
    ``n`` hidden), and its axes in reading order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def save_figure(fig: Any, path: str | Path, close: bool = True) -> Any:
    """Lay out and save ``fig`` to ``path``; closed unless it is still wanted (e.g. for TensorBoard)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    if close:
        plt.close(fig)
    return fig
