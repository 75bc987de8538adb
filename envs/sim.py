"""The simulator's true state behind any MuJoCo task (dm_control or Gymnasium), named by joint.

Probes of a world model's latent state need the physics the pixels came from: joint positions ``qpos``
and velocities ``qvel``, read from the raw ``mujoco.MjData`` that both dm_control and Gymnasium MuJoCo
envs expose as ``env.unwrapped.data``. Read after ``reset``/``step``, the state belongs to the
observation that call returned (action repeat included).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

_FREE_QPOS = ("x", "y", "z", "qw", "qx", "qy", "qz")
_FREE_QVEL = ("vx", "vy", "vz", "wx", "wy", "wz")
_BALL_QPOS = ("qw", "qx", "qy", "qz")
_BALL_QVEL = ("wx", "wy", "wz")


def _mujoco(env: gym.Env) -> tuple[Any, Any]:
    """(MjModel, MjData) of a dm_control or Gymnasium MuJoCo env; a ValueError naming the env otherwise."""
    base = env.unwrapped
    model, data = getattr(base, "model", None), getattr(base, "data", None)
    if not isinstance(model, mujoco.MjModel) or not isinstance(data, mujoco.MjData):
        raise ValueError(f"{type(base).__name__} has no MuJoCo simulator state; only dm_control and Gymnasium "
                         "MuJoCo tasks do.")
    return model, data


def has_sim_state(env: gym.Env) -> bool:
    """Whether ``sim_state`` works for this env (it is a MuJoCo task)."""
    try:
        _mujoco(env)
    except ValueError:
        return False
    return True


def sim_state(env: gym.Env) -> dict[str, np.ndarray]:
    """Copies of the simulator's generalised positions ``qpos`` (nq,) and velocities ``qvel`` (nv,)."""
    _, data = _mujoco(env)
    return {"qpos": np.array(data.qpos, np.float64), "qvel": np.array(data.qvel, np.float64)}


def sim_state_names(env: gym.Env) -> dict[str, list[str]]:
    """A name per entry of ``sim_state``: ``qpos[<joint>]``/``qvel[<joint>]`` for slide and hinge joints,
    with a component suffix for free joints (``qpos[root:x]`` .. ``qpos[root:qz]``, ``qvel[root:vx]`` ..
    ``qvel[root:wz]``) and ball joints. Unnamed joints are called ``joint<i>``."""
    model, _ = _mujoco(env)
    qpos: list[str] = [""] * model.nq
    qvel: list[str] = [""] * model.nv
    for j in range(model.njnt):
        name = model.joint(j).name or f"joint{j}"
        kind = int(model.jnt_type[j])
        pos_parts, vel_parts = {int(mujoco.mjtJoint.mjJNT_FREE): (_FREE_QPOS, _FREE_QVEL),
                                int(mujoco.mjtJoint.mjJNT_BALL): (_BALL_QPOS, _BALL_QVEL)}.get(kind, (("",), ("",)))
        p0, v0 = int(model.jnt_qposadr[j]), int(model.jnt_dofadr[j])
        for i, part in enumerate(pos_parts):
            qpos[p0 + i] = f"qpos[{name}{':' + part if part else ''}]"
        for i, part in enumerate(vel_parts):
            qvel[v0 + i] = f"qvel[{name}{':' + part if part else ''}]"
    return {"qpos": qpos, "qvel": qvel}


def unlimited_hinges(env: gym.Env) -> list[str]:
    """``qpos`` names of hinge joints without a range limit: angles that can wind past 2*pi (a swinging
    pole), which a picture shows only modulo 2*pi."""
    model, _ = _mujoco(env)
    names = sim_state_names(env)["qpos"]
    return [names[int(model.jnt_qposadr[j])] for j in range(model.njnt)
            if int(model.jnt_type[j]) == int(mujoco.mjtJoint.mjJNT_HINGE) and not model.jnt_limited[j]]
