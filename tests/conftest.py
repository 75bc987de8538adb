"""Test set-up: headless rendering and quiet, predictable torch threads on a shared 2-core CPU."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"] if os.environ["MUJOCO_GL"] != "glfw" else "")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
