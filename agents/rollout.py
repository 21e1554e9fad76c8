"""Rollout storage on the training device, shaped (time, member, env, ...), and GAE over it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from envs.procgen_vec import OBS_SHAPE


@dataclass
class Rollout:
    """One rollout of T steps for M members x N envs. Allocated once, refilled every iteration."""

    obs: torch.Tensor  # (T, M, N, 64, 64, 3) uint8
    actions: torch.Tensor  # (T, M, N) int64
    logprobs: torch.Tensor  # (T, M, N)
    rewards: torch.Tensor  # (T, M, N)
    dones: torch.Tensor  # (T, M, N): obs[t] starts a new episode (the previous step ended one)
    values: torch.Tensor  # (T, M, N)

    @classmethod
    def allocate(cls, steps: int, members: int, envs: int, device: torch.device) -> "Rollout":
        shape = (steps, members, envs)
        f = dict(dtype=torch.float32, device=device)
        return cls(
            obs=torch.empty(shape + OBS_SHAPE, dtype=torch.uint8, device=device),
            actions=torch.empty(shape, dtype=torch.long, device=device),
            logprobs=torch.empty(shape, **f),
            rewards=torch.empty(shape, **f),
            dones=torch.empty(shape, **f),
            values=torch.empty(shape, **f),
        )


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    next_done: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over the leading time axis.

    ``dones[t]`` marks that ``obs[t]`` began a new episode; ``next_done`` does the same for the
    observation after the rollout. Works for any trailing shape, e.g. (T, M, N). The loop over time
    is inherent to the recursion; each step is one vectorised operation over members and envs.
    Returns (advantages, returns).
    """
    advantages = torch.empty_like(rewards)
    last = torch.zeros_like(next_value)
    steps = rewards.shape[0]
    for t in reversed(range(steps)):
        if t == steps - 1:
            not_done, v_next = 1.0 - next_done, next_value
        else:
            not_done, v_next = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * v_next * not_done - values[t]
        last = delta + gamma * gae_lambda * not_done * last
        advantages[t] = last
    return advantages, advantages + values
