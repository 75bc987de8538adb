"""Which code ran: the git commit of a checkout. Cheap to import (no torch), for benchmarks' results files too."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def git_revision(where: str | Path | None = None) -> dict[str, Any]:
    """The commit the code at ``where`` (default: this package) is checked out at, and whether the
    worktree has uncommitted changes; ``{"commit": None}`` outside a git checkout."""
    cwd = Path(where) if where is not None else Path(__file__).parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd, timeout=10,
                                  check=True).stdout.strip()

        return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
