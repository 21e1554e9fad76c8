"""PPO (Schulman et al. 2017) for a population: the loss, and the epoch/minibatch update.

Everything is per member: minibatch order (each member's own generator), advantage normalisation,
loss means, gradient-norm clipping and metrics. Metrics stay on the device as (M,) tensors through
the minibatch loop and are read once per update (one host sync, DESIGN.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from agents.config import PPOConfig
from agents.population import clip_grad_norms_
from agents.sampling import log_prob_entropy



@dataclass
class Batch:
    """A flattened rollout, (M, B, ...) with B = T * N samples per member."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def select(self, idx: torch.Tensor) -> "Batch":
        """Per-member sample indices (M, b) -> a (M, b, ...) minibatch."""
        rows = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1)
        return Batch(*(t[rows, idx] for t in vars(self).values()))


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std along the sample axis, separately for each member (dim 0)."""
    return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-8)


def ppo_loss(
    logits: torch.Tensor, values: torch.Tensor, mb: Batch, cfg: PPOConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped PPO objective. Returns the scalar to minimise and (M,) per-member terms.

    The scalar is the sum over members of each member's own mean loss, so each member's gradient
    is that of its own loss alone.
    """
    logp, entropy = log_prob_entropy(logits, mb.actions)
    log_ratio = logp - mb.logprobs
    ratio = log_ratio.exp()
    adv = normalise(mb.advantages) if cfg.norm_adv == "minibatch" else mb.advantages

    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef))
    pg_loss = pg_loss.mean(1)
    if cfg.clip_vloss:
        v_clipped = mb.values + (values - mb.values).clamp(-cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * torch.max((values - mb.returns) ** 2, (v_clipped - mb.returns) ** 2).mean(1)
    else:
        v_loss = 0.5 * ((values - mb.returns) ** 2).mean(1)
    ent = entropy.mean(1)
    loss = (pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss).sum()
    with torch.no_grad():
        terms = {
            "policy_loss": pg_loss.detach(),
            "value_loss": v_loss.detach(),
            "entropy": ent.detach(),
            "approx_kl": ((ratio - 1) - log_ratio).mean(1),  # Schulman's k3 estimator
            "clipfrac": ((ratio - 1).abs() > cfg.clip_coef).float().mean(1),
        }
    return loss, terms


Minibatches = Iterator[tuple[torch.Tensor, torch.Tensor, Batch]]


def ppo_epochs(
    minibatches: Minibatches,
    params: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    cfg: PPOConfig,
) -> dict[str, torch.Tensor]:
    """The optimisation core shared by every agent: loss, backward, per-member clip, Adam step.

    ``minibatches`` yields (logits (M, b, A), values (M, b), minibatch) computed with the current
    parameters; it is consumed lazily, so each forward sees the previous step's update. Returns
    the per-member (M,) means of the loss terms and gradient norms.
    """
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for logits, values, mb in minibatches:
        loss, terms = ppo_loss(logits, values, mb, cfg)
        optimizer.zero_grad(set_to_none=False)  # keep the gradient buffers: no re-allocation
        loss.backward()
        terms["grad_norm"] = clip_grad_norms_(params, cfg.max_grad_norm)
        optimizer.step()
        for k, v in terms.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        count += 1
    return {k: v / count for k, v in sums.items()}


def ppo_update(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    params: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: PPOConfig,
    generators: list[torch.Generator],
) -> dict[str, torch.Tensor]:
    """PPO for feed-forward members: ``cfg.epochs`` passes in ``cfg.num_minibatches`` random
    minibatches, each member drawing its own sample order from ``generators[m]`` (CPU).

    ``forward`` maps (M, b, ...) observations to (M, b, A) logits and (M, b) values.
    """
    if cfg.norm_adv == "batch":
        batch.advantages = normalise(batch.advantages)
    samples = batch.actions.shape[1]
    mb_size = samples // cfg.num_minibatches

    def minibatches() -> Minibatches:
        for _ in range(cfg.epochs):
            order = torch.stack([torch.randperm(samples, generator=g) for g in generators])
            order = order.to(batch.actions.device)
            for start in range(0, samples, mb_size):
                mb = batch.select(order[:, start : start + mb_size])
                yield (*forward(mb.obs), mb)

    return ppo_epochs(minibatches(), params, optimizer, cfg)


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns), per member over the sample axis."""
    var = returns.var(1)
    return 1 - (returns - values).var(1) / var.clamp(min=1e-8)
