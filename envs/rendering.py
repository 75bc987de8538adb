"""Headless rendering set-up and the error a user sees when no OpenGL backend works.

MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` when it is first imported. Without a display the
default (GLFW) fails deep inside MuJoCo with messages that do not say what to do, so this module picks
EGL when no display is set and turns backend failures into one readable error.
"""

from __future__ import annotations

import os

BACKENDS = {
    "egl": "headless GPU or software rendering through EGL (Debian/Ubuntu: apt install libegl1 libgl1; "
    "software fallback: libegl-mesa0)",
    "osmesa": "pure software rendering (Debian/Ubuntu: apt install libosmesa6)",
    "glfw": "rendering into a window; needs a display (DISPLAY set, or run under xvfb-run)",
}


class RenderingUnavailableError(RuntimeError):
    """No OpenGL backend could render a MuJoCo frame."""


def default_backend() -> None:
    """Choose EGL when the user set no backend and there is no display to open a window on.

    Must run before mujoco or dm_control are imported; an explicit ``MUJOCO_GL`` is always kept.
    """
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame-drawn Gymnasium envs, no window
    if os.environ.get("MUJOCO_GL") in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def rendering_error(cause: BaseException) -> RenderingUnavailableError:
    """Wrap a backend failure into an error that lists the backends and what each one needs."""
    chosen = os.environ.get("MUJOCO_GL", "<unset>")
    options = "\n".join(f"  MUJOCO_GL={name}: {need}" for name, need in BACKENDS.items())
    return RenderingUnavailableError(
        f"Could not render a MuJoCo frame with MUJOCO_GL={chosen} "
        f"({type(cause).__name__}: {cause}).\n"
        f"Set MUJOCO_GL before starting Python to one of:\n{options}\n"
        "or use obs='state', which needs no rendering."
    )
