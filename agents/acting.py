"""Acting with a population step by step: training rollouts, held-out curves and eval.py all use it.

A feed-forward population maps frames to actions directly. A recurrent one (the explorer) carries
its GRU state from step to step and zeroes it where an episode begins; ProcGen resets an env in the
same step that ends its episode, so the frame returned with ``terminated`` is already a first frame.
"""
from __future__ import annotations

import numpy as np
import torch

from agents.population import Population
from agents.sampling import make_generators, sample_actions


class ActionPicker:
    """Sampled actions, one generator per member (streams independent of each other), or argmax."""

    def __init__(self, seeds: list[int], device: torch.device, salt: int, sample: bool = True) -> None:
        self.sample = sample
        self.generators = make_generators(seeds, device, salt) if sample else []

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(M, N, A) logits -> (M, N) actions."""
        return sample_actions(logits, self.generators) if self.sample else logits.argmax(-1)


class PopulationActor:
    """Steps ``pop`` over (M, N) env batches, member m acting in batch m."""

    def __init__(self, pop: Population, num_envs: int, pick: ActionPicker, device: torch.device) -> None:
        self.pop, self.pick = pop, pick
        self.recurrent = pop.spec.recurrent
        self.state = torch.zeros(pop.size, num_envs, pop.spec.hidden, device=device) if self.recurrent else None
        self.first = torch.ones(pop.size, num_envs, device=device)  # reset frames start episodes

    def __call__(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """obs (M, N, 64, 64, 3) -> actions (M, N), logits (M, N, A), values (M, N)."""
        if self.recurrent:
            logits, values, self.state = self.pop(obs.unsqueeze(1), self.state, self.first.unsqueeze(1))
            logits, values = logits[:, 0], values[:, 0]
            self.first.zero_()
        else:
            logits, values = self.pop(obs)
        return self.pick(logits), logits, values

    def episode_ended(self, member: int, terminated: np.ndarray | torch.Tensor) -> None:
        """Member m's envs that just finished an episode start the next one from a zero state."""
        self.first[member] = torch.as_tensor(terminated, dtype=torch.float32, device=self.first.device)
