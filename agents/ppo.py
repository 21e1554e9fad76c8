"""PPO (Schulman et al. 2017) for a population: the loss terms, the learning rate, and the member
algorithm (``PPOAlgorithm``).

The one PPO data path of every native agent (PPO members and the explorer): rollout -> GAE
(agents/rollout.py) -> ``PPOAlgorithm.update`` (agents/algorithm.py's ``MemberAlgorithm.update``):
batch advantage normalisation, then ``epochs`` x ``num_minibatches`` optimiser steps over the
minibatches a strategy cuts (agents/minibatches.py). Everything is per member: minibatch order,
advantage normalisation, loss means, gradient-norm clipping and metrics. Metrics stay on the device
as (M,) tensors through the minibatch loop and are read once per update (one host sync per
iteration). ``policy_loss`` and ``value_loss`` are PPO's terms on their own; other algorithms reuse
them (agents/idaac.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch

from agents.algorithm import MemberAlgorithm, OptimiserSettings, UpdateInput
from agents.minibatches import Batch, Minibatch
from agents.networks import NetworkSpec
from agents.sampling import log_prob_entropy
from core.sections import NetworkConfig, PPOConfig, PPOUpdateConfig


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
    def from_config(cls, cfg: PPOUpdateConfig, num_updates: int) -> "LRSchedule":
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


class PolicyTerms(NamedTuple):
    """PPO's policy terms, (M,) each: the clipped surrogate loss and the mean entropy (with their
    gradients); Schulman's k3 estimate of KL(old || new) and the fraction of clipped ratios (without)."""

    loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor


def policy_loss(logits: torch.Tensor, mb: Batch, advantages: torch.Tensor, clip_coef: float) -> PolicyTerms:
    """PPO's clipped surrogate on a flat (M, b) minibatch: per member, the mean over samples of
    max(-A r, -A clip(r, 1 - c, 1 + c)), r = pi(a|s) / pi_old(a|s) from (M, b, A) ``logits`` and the
    stored ``mb.logprobs``; ``advantages`` (M, b) as the algorithm normalises them."""
    logp, entropy = log_prob_entropy(logits, mb.actions)
    log_ratio = logp - mb.logprobs
    ratio = log_ratio.exp()
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean(1)
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean(1)  # Schulman's k3 estimator
        clipfrac = ((ratio - 1).abs() > clip_coef).float().mean(1)
    return PolicyTerms(loss, entropy.mean(1), approx_kl, clipfrac)


def value_loss(values: torch.Tensor, mb: Batch, clip_coef: float | None) -> torch.Tensor:
    """(M,) 0.5 x mean squared error of (M, b) ``values`` against ``mb.returns``; with ``clip_coef``,
    PPO's clipped form: the larger of that and the error of the stored values moved by at most
    ``clip_coef`` towards the new ones."""
    if clip_coef is None:
        return 0.5 * ((values - mb.returns) ** 2).mean(1)
    clipped = mb.values + (values - mb.values).clamp(-clip_coef, clip_coef)
    return 0.5 * torch.max((values - mb.returns) ** 2, (clipped - mb.returns) ** 2).mean(1)


def ppo_loss(
    logits: torch.Tensor, values: torch.Tensor, mb: Batch, cfg: PPOUpdateConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped PPO objective on a flat (M, b) minibatch: ``policy_loss`` - ``ent_coef`` x entropy
    + ``vf_coef`` x ``value_loss``. Returns the scalar to minimise and (M,) per-member terms.

    The scalar is the sum over members of each member's own mean loss, so each member's gradient
    is that of its own loss alone.
    """
    adv = normalise(mb.advantages) if cfg.norm_adv == "minibatch" else mb.advantages
    pi = policy_loss(logits, mb, adv, cfg.clip_coef)
    v_loss = value_loss(values, mb, cfg.clip_coef if cfg.clip_vloss else None)
    loss = (pi.loss - cfg.ent_coef * pi.entropy + cfg.vf_coef * v_loss).sum()
    terms = {"policy_loss": pi.loss.detach(), "value_loss": v_loss.detach(), "entropy": pi.entropy.detach(),
             "approx_kl": pi.approx_kl, "clipfrac": pi.clipfrac}
    return loss, terms


class PPOAlgorithm(MemberAlgorithm):
    """PPO with one Adam over an actor-critic's shared trunk and heads. Its settings are a
    ``PPOUpdateConfig``: ``ppo`` for PPO members, ``explorer.ppo`` for the explorer (built by
    training/explorer_learner.py). Checkpoints keep the format they had before member algorithms
    existed (``optimizer``: a list of per-parameter dicts)."""

    name = "ppo"
    section = "ppo"

    @classmethod
    def member_spec(cls, network: NetworkConfig, settings: PPOConfig) -> NetworkSpec:
        return NetworkSpec.from_config(network)

    @classmethod
    def minibatch_kind(cls, settings: PPOConfig) -> str:
        return settings.minibatch

    def optimisers(self) -> dict[str, tuple[str, OptimiserSettings]]:
        return {"actor_critic": ("", self.settings)}

    def update(self, data: UpdateInput) -> dict[str, torch.Tensor]:
        """``epochs`` passes in ``num_minibatches`` minibatches of ``ppo_loss`` (advantages
        normalised over the whole rollout first with ``norm_adv=batch``)."""
        s, batch = self.settings, data.batch
        if s.norm_adv == "batch":
            batch = replace(batch, advantages=normalise(batch.advantages.flatten(1)).view_as(batch.advantages))
        return self.minimise(data, batch, s.epochs, s.num_minibatches)

    def loss(self, data: UpdateInput, mb: Minibatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, values = data.forward(mb)
        return ppo_loss(logits, values, mb.batch.flat(), self.settings)


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns), per member over all its samples."""
    values, returns = values.flatten(1), returns.flatten(1)
    var = returns.var(1)
    return 1 - (returns - values).var(1) / var.clamp(min=1e-8)
