"""Test-only fault injection: crashes at a known update, to exercise resuming and Ray Tune's restarts."""
from __future__ import annotations

from core.config import Config
from training.learner import Learner


class InjectedFault(RuntimeError):
    """The crash that ``debug.fail_at_update`` asks for."""


def after_update(cfg: Config, learner: Learner) -> None:
    """Called by the training loop after every update (and its checkpoint).

    ``debug.fail_at_update``: crash once. A marker file makes the crash happen once per agent, not
    again after the restart.
    """
    at = cfg.debug.fail_at_update
    marker = learner.agents[0].path / ".fault_injected"
    if at and learner.update == at and not marker.exists():
        marker.touch()
        raise InjectedFault(f"{learner.agents[0].name}: injected fault after update {at}")
