"""The learner contract: what every engine provides to the one training loop (training/loop.py).

A learner owns its agents' networks, optimiser, envs and random streams and does one PPO
iteration per ``iterate`` call, however its library does it (our batched population, the
explorer, Stable-Baselines3, RLlib). Everything around an iteration (TensorBoard, held-out
curves, checkpoints, progress, Ray reports) is the loop's, written once.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.networks import NetworkSpec
from agents.population import Population
from agents.ppo import LRSchedule
from core.checkpoint import checkpoint_steps
from core.config import Config
from core.run_layout import AgentDir
from core.runtime import Runtime


class EpisodeLog:
    """Finished-episode numbers of one iteration, gathered as arrays (never per-env Python lists)."""

    def __init__(self) -> None:
        self.values: dict[str, list[np.ndarray]] = {}
        self.agents: dict[str, list[np.ndarray]] = {}

    def add(self, name: str, agent: int, values: np.ndarray) -> None:
        self.values.setdefault(name, []).append(np.asarray(values, np.float64))
        self.agents.setdefault(name, []).append(np.full(len(values), agent))

    def means(self, name: str, agent: int | None = None) -> float | None:
        if name not in self.values:
            return None
        v, who = np.concatenate(self.values[name]), np.concatenate(self.agents[name])
        v = v if agent is None else v[who == agent]
        return float(v.mean()) if len(v) else None


@dataclass
class IterationResult:
    """One iteration's outcome. ``metrics`` maps a name to one value per agent; a bare name is a
    loss term (logged as ``losses/<name>``), others carry their section (``explore/...``)."""

    episodes: EpisodeLog
    metrics: dict[str, np.ndarray]
    lr: float


class NonFiniteError(RuntimeError):
    """A loss term or parameter became NaN or infinite; the run stopped before checkpointing it."""

    @classmethod
    def of(cls, learner: "Learner", i: int, what: str) -> "NonFiniteError":
        """The error for agent i of ``learner`` in the update that just ended (``learner.update``)."""
        agent, u = learner.agents[i], learner.update
        steps = checkpoint_steps(agent.checkpoints)
        kept = f"its newest checkpoint (step {steps[0]}) is kept" if steps else "it has no checkpoint yet"
        return cls(f"{agent.name}: non-finite {what} in update {u} of {learner.num_updates} (steps "
                   f"{(u - 1) * learner.steps_per_update} to {u * learner.steps_per_update}); training "
                   f"stopped before saving it and {kept}. Try a lower lr or max_grad_norm in the "
                   f"config's {learner.settings_section} section; re-running resumes from the newest checkpoint")


class Learner(ABC):
    """One job's agents: a population shard of reward agents, the explorer, or one engine member."""

    agents: list[AgentDir]
    spec: NetworkSpec  # the architecture its checkpoints must match
    steps_per_update: int  # env steps per agent per iteration
    num_updates: int
    update: int = 0  # iterations done; ``iterate`` advances it, ``load_state`` restores it
    lr_schedule: LRSchedule  # the learning rate by update; checkpoints carry it (budgets may change)
    settings_section: str = "ppo"  # the config section of its optimisers (ppo, explorer.ppo, idaac)

    @property
    def global_step(self) -> int:
        """Env steps taken by each agent."""
        return self.update * self.steps_per_update

    @abstractmethod
    def iterate(self) -> IterationResult:
        """Collect one rollout per agent and update on it."""

    @abstractmethod
    def acting_population(self) -> tuple[Population, list[int]]:
        """The agents as one population on the job's device, and their seeds: what held-out
        evaluation plays."""

    @abstractmethod
    def finite_parameters(self) -> np.ndarray:
        """(agents,) bool: whether all of each agent's parameters are finite."""

    @abstractmethod
    def state(self, i: int) -> dict[str, Any]:
        """Agent i's checkpoint payload: ``network``, ``model`` and what resuming needs."""

    @abstractmethod
    def load_state(self, i: int, ckpt: dict[str, Any]) -> None:
        """Restore agent i from ``state``'s output (the loop restores ``update``)."""

    def close(self) -> None:
        """Release envs and workers."""


class MemberLearner(Learner):
    """The setup of an engine that trains one reward agent (``member``) at a time: SB3, RLlib."""

    def __init__(self, cfg: Config, member: int, runtime: Runtime) -> None:
        self.cfg, self.runtime = cfg, runtime
        self.seed = cfg.member_seeds[member]
        self.spec = NetworkSpec.from_config(cfg.network)
        self.agents = [cfg.layout.member(member)]
        self.steps_per_update, self.num_updates = cfg.steps_per_update, cfg.num_updates()
        self.lr_schedule = LRSchedule.from_config(cfg.ppo, self.num_updates)

    def acting_population(self) -> tuple[Population, list[int]]:
        pop = Population.from_state_dicts(self.spec, [self.exported_state()], bf16=self.runtime.bf16)
        return pop.to(self.runtime.device), [self.seed]

    @abstractmethod
    def exported_state(self) -> dict[str, Any]:
        """The library's network as a plain ``ActorCritic`` state dict on the CPU."""

    def finite_parameters(self) -> np.ndarray:
        return np.array([all(bool(v.isfinite().all()) for v in self.exported_state().values() if v.is_floating_point())])


def network_payload(spec: NetworkSpec, model: dict[str, Any]) -> dict[str, Any]:
    return {"network": spec.to_dict(), "model": model}
