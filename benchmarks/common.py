"""Helpers shared by the benchmarks: command lines, machine description, results files, tables and figures."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
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


def parser(doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    """A benchmark's argument parser: its help starts with the module docstring ``doc``, line breaks kept."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def exit_status(command: Callable[[], int | None]) -> int:
    """Run a command; a ValueError (a bad argument, file or setting) is one line on stderr and exit status 2."""
    try:
        return command() or 0
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def write_atomically(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` beside ``path``, then rename it there: a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, atomically."""
    return write_atomically(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=1) + "\n"))


def read_json(path: str | Path) -> Any:
    """The parsed JSON file at ``path``, or None when there is none; ValueError when it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file ([] when there is none)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


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


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panels(n: int, cols: int, width: float = 5.0, height: float = 3.6) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels of ``width`` x ``height`` inches in rows of ``cols`` (those past ``n`` hidden),
    and its axes in reading order."""
    rows = -(-n // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def save_figure(fig: Any, path: str | Path, close: bool = True, dpi: int = 110, **savefig: Any) -> Any:
    """Lay out (unless the figure has its own layout engine) and save ``fig`` to ``path``; closed unless it is
    still wanted (e.g. for TensorBoard)."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi, **savefig)
    if close:
        pyplot().close(fig)
    return fig
