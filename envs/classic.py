"""Physics variants for Gymnasium's classic-control tasks, by the MuJoCo variants' key names.

Classic-control envs keep their physics in plain attributes (Pendulum: ``g``, ``m``, ``l``, ``max_torque``;
CartPole: ``gravity``, ``masscart``, ``masspole``, ``length``, ``force_mag``), which their ``step`` reads
every time. A variant multiplies the values the env was built with, as MuJoCo variants multiply the XML's,
so applying one twice gives the same env. Keys mean what they mean for MuJoCo tasks (``envs.variants``):

- ``gravity``: the gravitational acceleration (>= 0);
- ``mass``: a body's mass (> 0); one number for every body, or ``{"pole": 2.0}`` by part;
- ``length``: the pole's length (> 0); classic control only (a MuJoCo model's lengths are its geometry);
- ``gear``: the torque or force that one unit of action produces (!= 0; -1 inverts the action).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from .variants import VARIANT_KEYS, check_number, check_parts, did_you_mean, variant_items


class ClassicPhysics:
    """What a variant changes in one classic-control env. ``parts`` maps each supported key to the env's
    parts and the attribute of each that the key multiplies."""

    parts: dict[str, dict[str, str]] = {}

    def __init__(self, env: gym.Env, task_name: str):
        self.task_name = task_name
        self.defaults = {attr: float(getattr(env, attr)) for attrs in self.parts.values() for attr in attrs.values()}

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.parts)

    def check(self, variant: dict[str, Any] | None) -> dict[str, Any]:
        """Validate a variant for this env; returns it with numbers as floats. Raises ``ValueError`` naming
        the bad key, part or value, with close matches."""
        checked: dict[str, Any] = {}
        for key, value in variant_items(variant):
            if key not in VARIANT_KEYS:
                raise ValueError(f"Unknown variant key {key!r}.{did_you_mean(key, self.keys)} Keys of "
                                 f"{self.task_name}: {', '.join(self.keys)}.")
            if key not in self.parts:
                raise ValueError(f"variant key {key!r} does not apply to {self.task_name}; its keys: "
                                 f"{', '.join(self.keys)}.")
            if isinstance(value, dict):
                checked[key] = check_parts(key, value, list(self.parts[key]), "part", self.task_name)
            else:
                checked[key] = check_number(key, value)
        return checked

    def multiplier(self, variant: dict[str, Any], key: str, part: str) -> float:
        value = variant.get(key, 1.0)
        return value.get(part, 1.0) if isinstance(value, dict) else value

    def apply(self, env: gym.Env, variant: dict[str, Any]) -> None:
        """Set every attribute to its default times the variant's multiplier (1 where the variant is silent)."""
        for key, attrs in self.parts.items():
            for part, attr in attrs.items():
                setattr(env, attr, self.defaults[attr] * self.multiplier(variant, key, part))

    def action(self, action: Any, variant: dict[str, Any]) -> Any:
        """The action the env receives (in its own units) for the agent's ``action``."""
        return action


class PendulumPhysics(ClassicPhysics):
    """``gym:Pendulum-v1``: angular acceleration = 3 g / (2 l) sin(th) + 3 / (m l^2) u, with u clipped to
    [-max_torque, max_torque]. ``gear`` scales the torque limit by |gear| and multiplies u by gear, so the
    same action gives gear times the torque (the control cost, 0.001 u^2, is on the torque applied)."""

    parts = {"gravity": {"world": "g"}, "mass": {"pole": "m"}, "length": {"pole": "l"},
             "gear": {"motor": "max_torque"}}

    def apply(self, env: gym.Env, variant: dict[str, Any]) -> None:
        super().apply(env, variant)
        env.max_torque = self.defaults["max_torque"] * abs(self.multiplier(variant, "gear", "motor"))

    def action(self, action: Any, variant: dict[str, Any]) -> Any:
        gear = self.multiplier(variant, "gear", "motor")
        return action if gear == 1.0 else np.asarray(action) * np.float32(gear)


class CartPolePhysics(ClassicPhysics):
    """``gym:CartPole-v1`` (and v0): the push is +-force_mag, so ``gear`` multiplies force_mag (negative
    pushes the other way); total mass and pole mass-length are derived again after every change."""

    parts = {"gravity": {"world": "gravity"}, "mass": {"cart": "masscart", "pole": "masspole"},
             "length": {"pole": "length"}, "gear": {"motor": "force_mag"}}

    def apply(self, env: gym.Env, variant: dict[str, Any]) -> None:
        super().apply(env, variant)
        env.total_mass = env.masspole + env.masscart
        env.polemass_length = env.masspole * env.length


CLASSIC_ENVS: dict[str, type[ClassicPhysics]] = {"PendulumEnv": PendulumPhysics, "CartPoleEnv": CartPolePhysics}
CLASSIC_SPECS = ("gym:Pendulum-v1", "gym:CartPole-v1")  # for error messages


def classic_physics(env: gym.Env, task_name: str) -> ClassicPhysics | None:
    """The variant handler of a classic-control env (``env.unwrapped``), or None for any other env."""
    cls = CLASSIC_ENVS.get(type(env).__name__)
    return cls(env, task_name) if cls is not None else None

