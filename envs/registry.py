"""Environment specs: parsing ``dmc:<domain>-<task>`` and ``gym:<id>``, with suggestions for typos."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

# Tasks the suite lacks, built from a suite task and a reward variant on the same body.
EXTRA_DMC_TASKS: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("walker", "walk_backwards"): ("walk", {"direction": -1}),
    ("walker", "run_backwards"): ("run", {"direction": -1}),
    ("cheetah", "run_backwards"): ("run", {"direction": -1}),
}


@dataclass(frozen=True)
class Spec:
    """A parsed spec: which backend builds the env and which task it runs."""

    kind: str  # "dmc" or "gym"
    name: str  # "walker-walk" or "Pendulum-v1", as the user wrote it
    domain: str = ""
    task: str = ""  # for dmc: the suite task that is loaded (after aliases)
    implied_variant: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def dmc_tasks() -> list[str]:
    """Every ``domain-task`` name that ``dmc:`` accepts, suite tasks and our extra ones."""
    from dm_control import suite

    names = [f"{d}-{t}" for d, t in suite.ALL_TASKS]
    return sorted(names + [f"{d}-{t}" for d, t in EXTRA_DMC_TASKS])


def parse_spec(spec: str) -> Spec:
    """Parse and check a spec; unknown specs raise a ``ValueError`` that names them and suggests matches."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"Env spec {spec!r} must look like 'dmc:<domain>-<task>' (e.g. 'dmc:walker-walk') "
            "or 'gym:<id>' (e.g. 'gym:Pendulum-v1')."
        )
    kind, name = spec.split(":", 1)
    if kind == "dmc":
        return _parse_dmc(spec, name)
    if kind == "gym":
        return _parse_gym(spec, name)
    hint = _suggest(kind, ["dmc", "gym"])
    raise ValueError(f"Unknown env backend {kind!r} in spec {spec!r}; use 'dmc:' or 'gym:'.{hint}")


def _parse_dmc(spec: str, name: str) -> Spec:
    from dm_control import suite

    if "-" not in name:
        raise ValueError(f"dm_control spec {spec!r} must be 'dmc:<domain>-<task>', e.g. 'dmc:walker-walk'.")
    domain, task = name.split("-", 1)
    domains = sorted({d for d, _ in suite.ALL_TASKS})
    if domain not in domains:
        raise ValueError(f"Unknown dm_control domain {domain!r} in spec {spec!r}.{_suggest(domain, domains)}"
                         f" Known domains: {', '.join(domains)}.")
    tasks = sorted({t for d, t in suite.ALL_TASKS if d == domain} | {t for d, t in EXTRA_DMC_TASKS if d == domain})
    if task not in tasks:
        raise ValueError(f"Unknown task {task!r} for dm_control domain {domain!r} in spec {spec!r}."
                         f"{_suggest(task, tasks)} Tasks of {domain}: {', '.join(tasks)}.")
    base_task, implied = EXTRA_DMC_TASKS.get((domain, task), (task, {}))
    return Spec("dmc", name, domain, base_task, dict(implied))


def _parse_gym(spec: str, name: str) -> Spec:
    import gymnasium

    if name not in gymnasium.registry:
        ids = list(gymnasium.registry.keys())
        raise ValueError(f"Unknown Gymnasium id {name!r} in spec {spec!r}.{_suggest(name, ids)}")
    return Spec("gym", name)
