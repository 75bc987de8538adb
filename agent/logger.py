"""One logger, owned by the loop: TensorBoard scalars, text and GIF videos, x-axis in env steps."""

from __future__ import annotations

import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter

try:
    import resource
except ImportError:  # Windows: no getrusage
    resource = None


def gif_bytes(video: np.ndarray, fps: int = 10) -> bytes:
    """Encode a uint8 video (T, H, W, 3) as an animated GIF."""
    frames = [Image.fromarray(frame) for frame in video]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return buffer.getvalue()


def memory_mb() -> dict[str, float | None]:
    """This process's resident memory now and its peak so far, in MB (2**20 bytes): ``memory/rss_mb`` from
    ``/proc/self/statm``, ``memory/peak_rss_mb`` from ``getrusage``; None where the OS has neither."""
    try:
        with open("/proc/self/statm") as file:
            rss = int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20  # field 2: resident pages
    except (OSError, ValueError, IndexError):
        rss = None
    peak = None
    if resource is not None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        peak = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    return {"memory/rss_mb": rss, "memory/peak_rss_mb": peak}


class Logger:
    """TensorBoard writer plus a JSON-lines file of the same scalars (easy to plot without TensorBoard).

    ``purge_step`` (on resume) drops events written after the checkpoint being resumed from.
    """

    def __init__(self, logdir: str | Path, purge_step: int | None = None):
        self.logdir = Path(logdir)
        self.writer = SummaryWriter(str(self.logdir), purge_step=purge_step, flush_secs=30)
        self.metrics_path = self.logdir / "metrics.jsonl"
        if purge_step is not None and self.metrics_path.exists():
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line and json.loads(line)["step"] < purge_step]
            self.metrics_path.write_text("".join(line + "\n" for line in kept))
        self._jsonl = open(self.metrics_path, "a")

    def scalars(self, values: dict[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        for key, value in clean.items():
            self.writer.add_scalar(key, value, step)
        if clean:
            self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
            self._jsonl.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def video(self, tag: str, video: np.ndarray, step: int, fps: int = 10) -> None:
        """A uint8 video (T, H, W, 3) as an animated GIF in TensorBoard's image tab."""
        T, H, W, C = video.shape
        image = Summary.Image(height=H, width=W, colorspace=C, encoded_image_string=gif_bytes(video, fps))
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def flush(self) -> None:
        self.writer.flush()
        self._jsonl.flush()

    def close(self) -> None:
        self.writer.close()
        self._jsonl.close()


class NullLogger:
    """The logger of a data-parallel rank other than 0: it logs nothing (rank 0 logs for the run)."""

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def text(self, tag: str, text: str, step: int = 0) -> None:
        pass

    def video(self, tag: str, video: np.ndarray, step: int, fps: int = 10) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a run's TensorBoard event files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True)
