"""A2C as a member algorithm that exists only in the tests: what adding an algorithm takes is this
file and one registration (``agents.registry.ALGORITHMS["a2c"] = A2CAlgorithm``), and the
population learner then trains it (tests/test_algorithm_seam.py).

Advantage actor-critic (Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement Learning",
arXiv 1602.01783), synchronous as in OpenAI baselines' ``a2c``: one gradient step per rollout on
all its samples, minimising -A log pi(a|s) - ent_coef x H(pi(.|s)) + vf_coef x 0.5 (V(s) - R)^2
with the learner's GAE advantages A and returns R, no ratio clipping and no advantage
normalisation. The optimiser is the population's Adam (baselines uses RMSprop).
"""
from __future__ import annotations

import torch

from agents.algorithm import MemberAlgorithm, OptimiserSettings, UpdateInput
from agents.minibatches import Minibatch
from agents.networks import NetworkSpec
from agents.ppo import value_loss
from agents.sampling import log_prob_entropy
from core.sections import NetworkConfig, PPOConfig


class A2CAlgorithm(MemberAlgorithm):
    """Reads the ``ppo`` section's lr, adam_eps, max_grad_norm, anneal_lr, ent_coef and vf_coef;
    the actor-critic of PPO members (``network``)."""

    name = "a2c"
    section = "ppo"
    settings: PPOConfig

    @classmethod
    def member_spec(cls, network: NetworkConfig, settings: PPOConfig) -> NetworkSpec:
        return NetworkSpec.from_config(network)

    def optimisers(self) -> dict[str, tuple[str, OptimiserSettings]]:
        return {"actor_critic": ("", self.settings)}

    def loss(self, data: UpdateInput, mb: Minibatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, values = data.forward(mb)
        b = mb.batch.flat()
        logp, entropy = log_prob_entropy(logits, b.actions)
        policy = -(b.advantages * logp).mean(1)
        value = value_loss(values, b, clip_coef=None)
        ent = entropy.mean(1)
        s = self.settings
        loss = (policy - s.ent_coef * ent + s.vf_coef * value).sum()
        return loss, {"policy_loss": policy.detach(), "value_loss": value.detach(), "entropy": ent.detach()}

    def update(self, data: UpdateInput) -> dict[str, torch.Tensor]:
        return self.minimise(data, data.batch, epochs=1, num_minibatches=1)
