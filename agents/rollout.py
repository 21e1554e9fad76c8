"""Rollout storage on the training device, member-major (M, T, N, ...), and GAE over its time axis.

Member-major is what every consumer wants: acting writes ``[:, t]`` for all members at once, PPO's
per-member (M, T*N) sample view is a free ``flatten(1, 2)``, and whole-env sequences (M, T, b) are
a selection along the last axis. GAE runs along axis 1 directly: nothing is transposed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from envs.procgen_vec import OBS_SHAPE


@dataclass
class Rollout:
    """One rollout of T steps for M members x N envs. Allocated once, refilled every iteration."""

    obs: torch.Tensor  # (M, T, N, 64, 64, 3) uint8
    actions: torch.Tensor  # (M, T, N) int64
    logprobs: torch.Tensor  # (M, T, N)
    rewards: torch.Tensor  # (M, T, N)
    episode_starts: torch.Tensor  # (M, T, N): obs[:, t] starts a new episode (the previous step ended one)
    values: torch.Tensor  # (M, T, N)
    # Frame labels for algorithms that pair frames (IDAAC): the level seed of obs[:, t] and its
    # step count within its episode (0 at the first frame). Allocated only when asked for.
    level_seeds: torch.Tensor | None = None  # (M, T, N) int64
    episode_steps: torch.Tensor | None = None  # (M, T, N) int64

    @classmethod
    def allocate(cls, members: int, steps: int, envs: int, device: torch.device, labels: bool = False) -> "Rollout":
        shape = (members, steps, envs)
        f = dict(dtype=torch.float32, device=device)
        return cls(
            obs=torch.empty(shape + OBS_SHAPE, dtype=torch.uint8, device=device),
            actions=torch.empty(shape, dtype=torch.long, device=device),
            logprobs=torch.empty(shape, **f),
            rewards=torch.empty(shape, **f),
            episode_starts=torch.empty(shape, **f),
            values=torch.empty(shape, **f),
            level_seeds=torch.zeros(shape, dtype=torch.long, device=device) if labels else None,
            episode_steps=torch.zeros(shape, dtype=torch.long, device=device) if labels else None,
        )

    @property
    def steps(self) -> int:
        return self.actions.shape[1]


def compute_gae(
    *,
    rewards: torch.Tensor,
    values: torch.Tensor,
    episode_starts: torch.Tensor,
    next_value: torch.Tensor,
    next_episode_starts: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) along axis 1 of (M, T, N) tensors.

    ``episode_starts[:, t]`` marks that ``obs[:, t]`` began a new episode; ``next_episode_starts``
    (M, N) does the same for the observation after the rollout, whose value is ``next_value``
    (M, N). The loop over time is inherent to the recursion; each step is one vectorised operation
    over members and envs. Keyword-only: four of the inputs are same-shaped float tensors.
    Returns (advantages, returns), both (M, T, N).
    """
    advantages = torch.empty_like(rewards)
    last = torch.zeros_like(next_value)
    steps = rewards.shape[1]
    for t in reversed(range(steps)):
        if t == steps - 1:
            nonterminal, v_next = 1.0 - next_episode_starts, next_value
        else:
            nonterminal, v_next = 1.0 - episode_starts[:, t + 1], values[:, t + 1]
        delta = rewards[:, t] + gamma * v_next * nonterminal - values[:, t]
        last = delta + gamma * gae_lambda * nonterminal * last
        advantages[:, t] = last
    return advantages, advantages + values


class ReturnScaler:
    """Rewards divided by the running std of a discounted return, clipped: the reward half of
    baselines' ``VecNormalize(ob=False)`` that the IDAAC reference wraps its training envs in
    (train.py; baselines/common/vec_env/vec_normalize.py and running_mean_std.py).

    Per step over one env batch of N envs: ret = ret * gamma + r; the running mean/var of ret are
    updated with the batch's mean and population variance (Chan et al.'s parallel update, starting
    from mean 0, var 1, count 1e-4); r / sqrt(var + eps) clipped to [-clip, clip]; ret zeroed where
    the episode ended. float64 on the host, as there.
    """

    def __init__(self, num_envs: int, gamma: float = 0.99, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.ret = np.zeros(num_envs)
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def __call__(self, rewards: np.ndarray, ended: np.ndarray) -> np.ndarray:
        """(N,) raw rewards and episode ends of one step -> (N,) scaled rewards (float64)."""
        self.ret = self.ret * self.gamma + rewards
        batch_mean, batch_var, n = self.ret.mean(), self.ret.var(), len(self.ret)
        delta, total = batch_mean - self.mean, self.count + n
        m2 = self.var * self.count + batch_var * n + delta ** 2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total
        scaled = np.clip(rewards / np.sqrt(self.var + self.eps), -self.clip, self.clip)
        self.ret[np.asarray(ended, bool)] = 0.0
        return scaled

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"ret": torch.from_numpy(self.ret.copy()),
                "moments": torch.tensor([self.mean, self.var, self.count], dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.ret = state["ret"].numpy().copy()
        self.mean, self.var, self.count = (float(v) for v in state["moments"])
