"""Rollout storage on the training device, member-major (M, T, N, ...), and GAE over its time axis.

Member-major is what every consumer wants: acting writes ``[:, t]`` for all members at once, PPO's
per-member (M, T*N) sample view is a free ``flatten(1, 2)``, and whole-env sequences (M, T, b) are
a selection along the last axis. GAE runs along axis 1 directly: nothing is transposed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from envs.procgen_vec import OBS_SHAPE


@dataclass
class Rollout:
    """One rollout of T steps for M members x N envs. Allocated once, refilled every iteration."""

    obs: torch.Tensor  # (M, T, N, 64, 64, 3) uint8
    actions: torch.Tensor  # (M, T, N) int64
    logprobs: torch.Tensor  # (M, T, N)
    rewards: torch.Tensor  # (M, T, N)
    dones: torch.Tensor  # (M, T, N): obs[:, t] starts a new episode (the previous step ended one)
    values: torch.Tensor  # (M, T, N)

    @classmethod
    def allocate(cls, members: int, steps: int, envs: int, device: torch.device) -> "Rollout":
        shape = (members, steps, envs)
        f = dict(dtype=torch.float32, device=device)
        return cls(
            obs=torch.empty(shape + OBS_SHAPE, dtype=torch.uint8, device=device),
            actions=torch.empty(shape, dtype=torch.long, device=device),
            logprobs=torch.empty(shape, **f),
            rewards=torch.empty(shape, **f),
            dones=torch.empty(shape, **f),
            values=torch.empty(shape, **f),
        )

    @property
    def steps(self) -> int:
        return self.actions.shape[1]


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    next_done: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) along axis 1 of (M, T, N) tensors.

    ``dones[:, t]`` marks that ``obs[:, t]`` began a new episode; ``next_done`` (M, N) does the same
    for the observation after the rollout, whose value is ``next_value`` (M, N). The loop over time
    is inherent to the recursion; each step is one vectorised operation over members and envs.
    Returns (advantages, returns), both (M, T, N).
    """
    advantages = torch.empty_like(rewards)
    last = torch.zeros_like(next_value)
    steps = rewards.shape[1]
    for t in reversed(range(steps)):
        if t == steps - 1:
            not_done, v_next = 1.0 - next_done, next_value
        else:
            not_done, v_next = 1.0 - dones[:, t + 1], values[:, t + 1]
        delta = rewards[:, t] + gamma * v_next * not_done - values[:, t]
        last = delta + gamma * gae_lambda * not_done * last
        advantages[:, t] = last
    return advantages, advantages + values
