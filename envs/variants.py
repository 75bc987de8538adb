"""Task variants: physics multipliers and reward changes that keep a task's spaces.

A variant is a plain dict, e.g. ``{"gravity": 0.5, "mass": {"pole_1": 3.0}, "gear": -1}``. Every value
multiplies the model's value as loaded from its XML, so applying a variant twice gives the same model.
Physics keys work on any MuJoCo model (dm_control or Gymnasium MuJoCo); ``direction`` works on tasks
whose reward rewards moving forward (walker walk/run, cheetah run). Gymnasium's classic-control Pendulum
and CartPole take ``gravity``, ``mass``, ``gear`` and ``length`` by the same names (``envs.classic``).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import mujoco
import numpy as np

# key -> (what it multiplies, MuJoCo object type that named entries refer to, allowed range text)
PHYSICS_KEYS = {
    "gravity": ("the gravity vector", None, ">= 0"),
    "mass": ("body masses and inertias", mujoco.mjtObj.mjOBJ_BODY, "> 0"),
    "friction": ("geom friction coefficients", mujoco.mjtObj.mjOBJ_GEOM, ">= 0"),
    "gear": ("actuator gears (negative inverts the action)", mujoco.mjtObj.mjOBJ_ACTUATOR, "!= 0"),
    "damping": ("joint damping", mujoco.mjtObj.mjOBJ_JOINT, ">= 0"),
    "length": ("pole lengths (classic-control tasks only)", None, "> 0"),
}
VARIANT_KEYS = (*PHYSICS_KEYS, "direction")
MUJOCO_KEYS = tuple(key for key in VARIANT_KEYS if key != "length")


def _names(model: mujoco.MjModel, objtype: mujoco.mjtObj) -> list[str]:
    count = {
        mujoco.mjtObj.mjOBJ_BODY: model.nbody,
        mujoco.mjtObj.mjOBJ_GEOM: model.ngeom,
        mujoco.mjtObj.mjOBJ_ACTUATOR: model.nu,
        mujoco.mjtObj.mjOBJ_JOINT: model.njnt,
    }[objtype]
    return [mujoco.mj_id2name(model, objtype, i) or f"#{i}" for i in range(count)]


def check_number(key: str, value: Any, where: str = "") -> float:
    """``value`` as a float when it is a finite number within the range of physics key ``key``; a
    ``ValueError`` naming the key (and ``where``, e.g. ``[pole_1]``) and the rule otherwise."""
    label = f"variant {key}{where}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{label} must be a number, got {value!r}.")
    value = float(value)
    rule = PHYSICS_KEYS[key][2]
    bad = (not math.isfinite(value)) or {">= 0": value < 0, "> 0": value <= 0, "!= 0": value == 0}[rule]
    if bad:
        raise ValueError(f"{label} = {value!r} makes no sense: it multiplies {PHYSICS_KEYS[key][0]} and must be "
                         f"finite and {rule}.")
    return value


def did_you_mean(name: Any, choices: list[str] | tuple[str, ...], n: int = 2) -> str:
    """`` Did you mean: a, b?`` for the choices closest to ``name``; empty when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=n)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def variant_items(variant: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The (key, value) pairs of a variant (none for None); anything but a dict is a ``ValueError``."""
    if variant is None:
        return []
    if not isinstance(variant, dict):
        raise ValueError(f"variant must be a dict such as {{'gravity': 0.5}}, got {variant!r}.")
    return list(variant.items())


def check_parts(key: str, value: dict[str, Any], names: list[str], what: str, where: str) -> dict[str, float]:
    """A per-part value of ``key`` (e.g. ``{"pole_1": 3.0}``) checked against the ``names`` of the ``what``s
    (body, geom, part...) ``where`` holds; returns it with numbers as floats."""
    for name in value:
        if name not in names:
            raise ValueError(f"variant {key}: no {what} named {name!r} in {where}.{did_you_mean(name, names, 3)} "
                             f"Its {what}s: {', '.join(names)}.")
    return {name: check_number(key, mult, f"[{name}]") for name, mult in value.items()}


def check_variant(variant: dict[str, Any] | None, model: mujoco.MjModel, supports_direction: bool) -> dict[str, Any]:
    """Validate a variant against a model; returns it with numbers as floats. Raises ``ValueError`` naming
    the bad key, body, geom, actuator, joint or value."""
    checked: dict[str, Any] = {}
    for key, value in variant_items(variant):
        if key not in VARIANT_KEYS:
            raise ValueError(f"Unknown variant key {key!r}.{did_you_mean(key, MUJOCO_KEYS)} Known keys: "
                             f"{', '.join(MUJOCO_KEYS)}.")
        if key not in MUJOCO_KEYS:
            raise ValueError(f"variant key {key!r} applies to classic-control tasks (gym:Pendulum-v1, "
                             f"gym:CartPole-v1), not to MuJoCo models, whose lengths are their geometry; "
                             f"MuJoCo keys: {', '.join(MUJOCO_KEYS)}.")
        if key == "direction":
            if value not in (1, -1):
                raise ValueError(f"variant direction must be 1 (forward) or -1 (backward), got {value!r}.")
            if value == -1 and not supports_direction:
                raise ValueError("variant direction=-1 needs a task that rewards forward motion "
                                 "(dmc walker walk/run, cheetah run).")
            checked[key] = int(value)
        elif isinstance(value, dict):
            objtype = PHYSICS_KEYS[key][1]
            if objtype is None:
                raise ValueError(f"variant {key} takes one number, got {value!r}.")
            kind = objtype.name.removeprefix("mjOBJ_").lower()
            checked[key] = check_parts(key, value, _names(model, objtype), kind, "this model")
        else:
            checked[key] = check_number(key, value)
    return checked


def variant_label(variant: dict[str, Any]) -> str:
    """A short stable text for logs, e.g. ``gravity=0.5,mass[pole_1]=3``; empty for the default task."""
    parts = []
    for key in sorted(variant):
        value = variant[key]
        if isinstance(value, dict):
            parts += [f"{key}[{name}]={mult:g}" for name, mult in sorted(value.items())]
        else:
            parts.append(f"{key}={value:g}")
    return ",".join(parts)


class PhysicsDefaults:
    """The model's values as loaded, so that variants always multiply the original numbers."""

    def __init__(self, model: mujoco.MjModel):
        self.gravity = model.opt.gravity.copy()
        self.body_mass = model.body_mass.copy()
        self.body_inertia = model.body_inertia.copy()
        self.geom_friction = model.geom_friction.copy()
        self.actuator_gear = model.actuator_gear.copy()
        self.dof_damping = model.dof_damping.copy()

    def _ids(self, model: mujoco.MjModel, objtype: mujoco.mjtObj, value: float | dict, count: int):
        """Per-object multipliers: one number for all, or named entries (others stay 1)."""
        mult = np.ones(count)
        if isinstance(value, dict):
            for name, m in value.items():
                mult[mujoco.mj_name2id(model, objtype, name)] = m
        else:
            mult[:] = value
        return mult

    def apply(self, model: mujoco.MjModel, variant: dict[str, Any]) -> None:
        """Reset the physics fields to their defaults, then multiply them by the variant's values."""
        model.opt.gravity[:] = self.gravity * variant.get("gravity", 1.0)
        body = self._ids(model, mujoco.mjtObj.mjOBJ_BODY, variant.get("mass", 1.0), model.nbody)
        model.body_mass[:] = self.body_mass * body
        model.body_inertia[:] = self.body_inertia * body[:, None]
        geom = self._ids(model, mujoco.mjtObj.mjOBJ_GEOM, variant.get("friction", 1.0), model.ngeom)
        model.geom_friction[:] = self.geom_friction * geom[:, None]
        act = self._ids(model, mujoco.mjtObj.mjOBJ_ACTUATOR, variant.get("gear", 1.0), model.nu)
        model.actuator_gear[:] = self.actuator_gear
        model.actuator_gear[:, 0] = self.actuator_gear[:, 0] * act
        joint = self._ids(model, mujoco.mjtObj.mjOBJ_JOINT, variant.get("damping", 1.0), model.njnt)
        model.dof_damping[:] = self.dof_damping * joint[model.dof_jntid]
