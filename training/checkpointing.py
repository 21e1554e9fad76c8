"""Saving a learner's agents together and resuming them from a step all of them reached."""
from __future__ import annotations

from typing import Any

from core.checkpoint import CheckpointError, checkpoint_steps, load_latest, save_checkpoint
from training.learner import Learner


def save(learner: Learner, heldout: dict[str, list[float]]) -> None:
    """One checkpoint per agent at the learner's current step."""
    for i, agent in enumerate(learner.agents):
        payload = {"agent": agent.name, "update": learner.update, "lr_schedule": learner.lr_schedule.state(),
                   "heldout": {split: returns[i] for split, returns in heldout.items()},
                   **learner.state(i)}
        save_checkpoint(agent.checkpoints, learner.global_step, payload)


def restore(learner: Learner) -> bool:
    """Resume every agent from the newest step at which all of them have a readable checkpoint."""
    common = set.intersection(*(set(checkpoint_steps(a.checkpoints)) for a in learner.agents))
    for step in sorted(common, reverse=True):
        ckpts = [load_latest(a.checkpoints, "cpu", max_step=step) for a in learner.agents]
        if all(c is not None and c["step"] == step for c in ckpts):
            for i, ckpt in enumerate(ckpts):
                check_network(learner, ckpt)
                learner.load_state(i, ckpt)
            learner.update = ckpts[0]["update"]
            learner.lr_schedule = learner.lr_schedule.resumed(ckpts[0].get("lr_schedule"), learner.update)
            return True
    return False


def check_network(learner: Learner, ckpt: dict[str, Any]) -> None:
    expected = learner.spec.to_dict()
    if ckpt["network"] != expected:
        saved = ckpt["network"]
        if saved.get("kind") == "impala" and "trunk" not in saved and expected.get("trunk") == "idaac":
            # No config key selects the trunk, so "restore the settings" would be no advice at all.
            raise CheckpointError(
                "this IDAAC/DAAC checkpoint predates IDAAC's reference trunk (residual blocks that add "
                "relu(x) on the skip connection, docs/expgen.md) and cannot continue training under it; "
                "evaluate it with eval.py as it is, or train again under a new run name")
        raise CheckpointError(
            f"checkpoint network {ckpt['network']} differs from the config's {expected}; "
            "use a new run name or restore the original network settings"
        )
