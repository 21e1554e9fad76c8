"""PPO (Schulman et al. 2017) for a population: the loss, the learning rate, and the update.

The one PPO data path of every native agent (reward members and the explorer):
rollout -> GAE (agents/rollout.py) -> ``ppo_update``: batch advantage normalisation, then
``epochs`` x ``num_minibatches`` optimiser steps over the minibatches a strategy cuts
(agents/minibatches.py). Everything is per member: minibatch order, advantage normalisation, loss
means, gradient-norm clipping and metrics. Metrics stay on the device as (M,) tensors through the
minibatch loop and are read once per update (one host sync per iteration).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from agents.minibatches import Batch, Minibatch, MinibatchStrategy
from agents.population import clip_grad_norms_
from agents.sampling import log_prob_entropy
from core.sections import PPOConfig


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate by update (0-based): ``lr``, or with ``anneal`` linear from ``start_lr`` at
    update ``start_update`` to 0 at ``num_updates`` (a fresh run: from ``lr`` at 0, CleanRL's
    ``lr * (1 - update / num_updates)``).

    A budget that changes on a re-run (``resumed``) would make ``lr * (1 - u / N)`` jump (up when
    the budget grows); the schedule instead continues from the last learning rate used, linearly to
    0 at the new budget. Checkpoints carry ``state()`` so that this holds over any number of
    re-runs, and an unchanged budget replays the original schedule exactly.
    """

    lr: float
    anneal: bool
    num_updates: int
    start_update: int = 0
    start_lr: float | None = None  # None: lr

    @classmethod
    def from_config(cls, cfg: PPOConfig, num_updates: int) -> "LRSchedule":
        return cls(cfg.lr, cfg.anneal_lr, num_updates)

    def __call__(self, update: int) -> float:
        if not self.anneal:
            return self.lr
        start_lr = self.lr if self.start_lr is None else self.start_lr
        return start_lr * (1.0 - (update - self.start_update) / (self.num_updates - self.start_update))

    def resumed(self, saved: dict[str, Any] | None, update: int) -> "LRSchedule":
        """This schedule for a run resumed after ``update`` updates under the ``saved`` one (a
        checkpoint's ``state()``; None: a checkpoint from before schedules were saved, taken to
        have had this budget)."""
        if saved is None or not self.anneal:
            return self
        old = replace(self, **saved)
        if old.num_updates == self.num_updates or update == 0:
            return old
        return replace(self, start_update=update - 1, start_lr=old(update - 1))

    def state(self) -> dict[str, Any]:
        return {"num_updates": self.num_updates, "start_update": self.start_update, "start_lr": self.start_lr}


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std along the sample axis, separately for each member (dim 0)."""
    return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-8)


def ppo_loss(
    logits: torch.Tensor, values: torch.Tensor, mb: Batch, cfg: PPOConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped PPO objective on a flat (M, b) minibatch. Returns the scalar to minimise and
    (M,) per-member terms.

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


Forward = Callable[[Minibatch], tuple[torch.Tensor, torch.Tensor]]


def ppo_update(
    forward: Forward,
    params: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: PPOConfig,
    minibatches: MinibatchStrategy,
) -> dict[str, torch.Tensor]:
    """``cfg.epochs`` passes over ``batch`` (M, T, N) in ``cfg.num_minibatches`` minibatches cut
    by ``minibatches``: loss, backward, per-member gradient clipping, Adam step.

    ``forward`` maps a minibatch to flat (M, b, A) logits and (M, b) values under the current
    parameters; it runs lazily, so each forward sees the previous step's update. Returns the
    per-member (M,) means of the loss terms and gradient norms.
    """
    if cfg.norm_adv == "batch":
        batch = replace(batch, advantages=normalise(batch.advantages.flatten(1)).view_as(batch.advantages))
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for mb in minibatches(batch, cfg.epochs, cfg.num_minibatches):
        logits, values = forward(mb)
        loss, terms = ppo_loss(logits, values, mb.batch.flat(), cfg)
        optimizer.zero_grad(set_to_none=False)  # keep the gradient buffers: no re-allocation
        loss.backward()
        terms["grad_norm"] = clip_grad_norms_(params, cfg.max_grad_norm)
        optimizer.step()
        for k, v in terms.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        count += 1
    return {k: v / count for k, v in sums.items()}


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns), per member over all its samples."""
    values, returns = values.flatten(1), returns.flatten(1)
    var = returns.var(1)
    return 1 - (returns - values).var(1) / var.clamp(min=1e-8)
