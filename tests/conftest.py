"""Test set-up: headless rendering and quiet, predictable torch threads on a shared 2-core CPU."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
