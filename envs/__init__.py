"""One Gymnasium API over dm_control, Gymnasium and MuJoCo tasks, with task variants.

This package never imports torch or the agent.
"""

from .factory import make, make_vec, vector_env
from .registry import dmc_tasks, parse_spec
from .rendering import RenderingUnavailableError
from .sim import has_sim_state, sim_state, sim_state_names, unlimited_hinges
from .variants import VARIANT_KEYS, variant_label

__all__ = ["make", "make_vec", "vector_env", "parse_spec", "dmc_tasks", "RenderingUnavailableError", "VARIANT_KEYS",
           "variant_label", "has_sim_state", "sim_state", "sim_state_names", "unlimited_hinges"]
