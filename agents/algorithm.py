"""Member algorithms: what trains a population of networks from its rollouts.

An algorithm object owns its networks (stacked on the member axis: ``agents/population.py``), its
optimisers and ``update(UpdateInput) -> metrics``. The learner (training/native_learner.py) owns
the envs, the rollout and GAE; it acts with ``algorithm.pop`` and hands each rollout over. Every
algorithm keeps the population's contract: per-member seeds, minibatch streams, gradient-norm
clipping, Adam moments and (M,) metrics, so a member trained in a population equals it alone.

PPO (``PPOAlgorithm``) is here; IDAAC and DAAC are in agents/idaac.py; ``agents/registry.py`` maps
``member.algo`` to the class.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from agents.minibatches import Batch, Minibatch, MinibatchStrategy
from agents.networks import NetworkSpec, PolicyOutput
from agents.population import MemberSpec, Population
from agents.ppo import ppo_update
from core.config import Config

Forward = Callable[[Minibatch], PolicyOutput]


@dataclass
class UpdateInput:
    """One rollout as an algorithm's update sees it.

    ``batch``: (M, T, N) samples with GAE advantages and returns (agents/rollout.py).
    ``forward``: the learner's evaluation of a minibatch under the current parameters, flat
    (M, b, A) logits and (M, b) values (the explorer replays its GRU from stored states).
    ``update``: 0-based index of this update (schedules such as IDAAC's ``value_freq``).
    ``next_obs``: (M, N, 64, 64, 3) the frame after the rollout (IDAAC pairs it too).
    ``level_seeds``, ``episode_steps``: (M, T + 2, N) int64 labels of the frames -1 (the frame
    before the rollout), 0..T-1 and T (``next_obs``): the level each frame is in and its step
    count within its episode (0 at an episode's first frame); None where the learner has none.
    """

    batch: Batch
    forward: Forward
    update: int
    next_obs: torch.Tensor | None = None
    level_seeds: torch.Tensor | None = None
    episode_steps: torch.Tensor | None = None


class MemberAlgorithm(ABC):
    """A population's networks, optimisers and update rule.

    ``pop`` is what acts: its ``forward(obs)`` returns a ``PolicyOutput`` (logits from the
    policy, values for GAE). ``state``/``load_state`` are member ``m``'s share of everything that
    resuming needs beyond the network weights (optimiser moments, counters), in plain tensors.
    """

    name: ClassVar[str]
    needs_frame_labels: ClassVar[bool] = False  # level seeds and episode steps in UpdateInput
    pop: Population

    @classmethod
    @abstractmethod
    def member_spec(cls, cfg: Config) -> MemberSpec:
        """The spec of one member's networks under ``cfg`` (stored in checkpoints)."""

    @property
    @abstractmethod
    def params(self) -> list[torch.Tensor]:
        """Every stacked (M, ...) parameter."""

    @abstractmethod
    def set_lr(self, lr: float) -> None:
        """The learning rate of every optimiser for the next update."""

    @abstractmethod
    def update(self, data: UpdateInput) -> dict[str, torch.Tensor]:
        """Train on one rollout; per-member (M,) metrics (bare names are logged as losses/<name>)."""

    @abstractmethod
    def optimizer_state(self, m: int) -> Any:
        """Member m's share of the optimiser states (moments are stacked on the member axis)."""

    @abstractmethod
    def load_optimizer_state(self, m: int, saved: Any) -> None:
        """Restore ``optimizer_state(m)``'s output."""

    def extra_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member m's counters or statistics that are neither weights nor optimiser state."""
        return {}

    def load_extra_state(self, m: int, saved: dict[str, torch.Tensor]) -> None:
        """Restore ``extra_state(m)``'s output."""


def adam_slice(opt: torch.optim.Optimizer, params: list[torch.Tensor], m: int) -> list[dict[str, Any]]:
    """Member m's share of ``opt``'s state over stacked ``params``: one dict per parameter."""
    return [{k: (v[m].clone() if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in opt.state[p].items()}
            for p in params]


def load_adam_slice(opt: torch.optim.Optimizer, params: list[torch.Tensor], m: int,
                    saved: list[dict[str, Any]]) -> None:
    """Write ``adam_slice``'s output back into member m's rows (scalars such as ``step`` are shared)."""
    if len(saved) != len(params):
        raise ValueError(f"optimiser state has {len(saved)} parameters, the network {len(params)}")
    for p, entry in zip(params, saved):
        state = opt.state[p]
        for k, v in entry.items():
            if torch.is_tensor(v) and v.dim() > 0:
                state.setdefault(k, torch.zeros_like(p))[m].copy_(v)
            else:
                state[k] = v.clone() if torch.is_tensor(v) else v


class PPOAlgorithm(MemberAlgorithm):
    """PPO (Schulman et al. 2017) with one Adam over an actor-critic's shared trunk and heads:
    ``agents/ppo.py:ppo_update`` with the learner's minibatch strategy. Checkpoints keep the
    format they had before member algorithms existed (``optimizer``: a list of per-parameter dicts)."""

    name = "ppo"

    def __init__(self, cfg: Config, spec: NetworkSpec, seeds: list[int], forward_mode: str, bf16: bool,
                 device: torch.device, minibatches: MinibatchStrategy) -> None:
        self.cfg, self.spec = cfg.ppo, spec
        self.pop = Population(spec, seeds, forward_mode, bf16, cfg.network.init).to(device)
        self._params = self.pop.member_params()
        self.opt = torch.optim.Adam(self._params, lr=cfg.ppo.lr, eps=cfg.ppo.adam_eps)
        self.minibatches = minibatches

    @classmethod
    def member_spec(cls, cfg: Config) -> NetworkSpec:
        return NetworkSpec.from_config(cfg.network)

    @property
    def params(self) -> list[torch.Tensor]:
        return self._params

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def update(self, data: UpdateInput) -> dict[str, torch.Tensor]:
        return ppo_update(data.forward, self._params, self.opt, data.batch, self.cfg, self.minibatches)

    def optimizer_state(self, m: int) -> list[dict[str, Any]]:
        return adam_slice(self.opt, self._params, m)

    def load_optimizer_state(self, m: int, saved: list[dict[str, Any]]) -> None:
        load_adam_slice(self.opt, self._params, m, saved)
