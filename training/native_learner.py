"""What the native learners share: a population of stacked networks trained by the one PPO data
path (agents/ppo.py). ``PopulationLearner`` (reward agents) and ``ExplorerLearner`` differ only in
how they collect a rollout, the discount, the minibatch strategy and the forward over a minibatch."""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from agents.acting import ActionPicker, PopulationActor
from agents.minibatches import Batch, Minibatch, MinibatchStrategy
from agents.networks import NetworkSpec
from agents.population import Population
from agents.ppo import explained_variance, learning_rate, ppo_update
from agents.rollout import Rollout, compute_gae
from agents.sampling import log_prob_entropy
from core.config import Config
from core.memory import tune_allocator
from core.runtime import Runtime
from training.learner import EpisodeLog, IterationResult, Learner, network_payload


class NativeLearner(Learner):
    """Subclasses build ``envs`` and set ``next_obs``/``next_done``, and implement ``collect``,
    ``forward`` and ``next_value``."""

    gamma: float
    minibatches: MinibatchStrategy

    def __init__(self, cfg: Config, spec: NetworkSpec, seeds: list[int], runtime: Runtime,
                 forward_mode: str, num_updates: int) -> None:
        tune_allocator()
        self.cfg, self.spec, self.seeds, self.runtime = cfg, spec, list(seeds), runtime
        self.device = runtime.device
        p, n = cfg.ppo, cfg.env.num_envs
        self.pop = Population(spec, self.seeds, forward_mode, runtime.bf16, cfg.network.init).to(self.device)
        self.params = self.pop.member_params()
        self.opt = torch.optim.Adam(self.params, lr=p.lr, eps=p.adam_eps)
        self.actor = PopulationActor(self.pop, n, ActionPicker(self.seeds, self.device, salt=1), self.device)
        self.ro = Rollout.allocate(len(self.seeds), p.num_steps, n, self.device)
        self.steps_per_update = cfg.steps_per_update
        self.num_updates = num_updates

    def iterate(self) -> IterationResult:
        lr = learning_rate(self.cfg.ppo, self.update, self.num_updates)
        for group in self.opt.param_groups:
            group["lr"] = lr
        episodes = self.collect()
        metrics = {k: v.cpu().numpy() for k, v in self.learn().items()}  # the one host sync
        self.update += 1
        return IterationResult(episodes, metrics, lr)

    def act(self, t: int) -> torch.Tensor:
        """Step t of the rollout: store the current frames, act, store what PPO needs; the actions."""
        ro = self.ro
        ro.obs[:, t] = self.next_obs
        ro.dones[:, t] = self.next_done
        actions, logits, values = self.actor(self.next_obs)
        ro.actions[:, t], ro.values[:, t] = actions, values
        ro.logprobs[:, t] = log_prob_entropy(logits, actions)[0]
        return actions

    @abstractmethod
    def collect(self) -> EpisodeLog:
        """Fill ``self.ro`` with one rollout and leave ``next_obs``/``next_done`` after it."""

    @abstractmethod
    def forward(self, mb: Minibatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat (M, b, A) logits and (M, b) values of a minibatch under the current parameters."""

    @abstractmethod
    def next_value(self) -> torch.Tensor:
        """(M, N) value of the observation after the rollout."""

    def learn(self) -> dict[str, torch.Tensor]:
        ro = self.ro
        with torch.no_grad():
            next_value = self.next_value()
        adv, ret = compute_gae(ro.rewards, ro.values, ro.dones, next_value, self.next_done,
                               self.gamma, self.cfg.ppo.gae_lambda)
        batch = Batch(ro.obs, ro.actions, ro.logprobs, ro.values, adv, ret, ro.dones)
        metrics = ppo_update(self.forward, self.params, self.opt, batch, self.cfg.ppo, self.minibatches)
        metrics["explained_variance"] = explained_variance(ro.values, ret)
        return metrics

    def acting_population(self) -> tuple[Population, list[int]]:
        return self.pop, self.seeds

    def state(self, i: int) -> dict[str, Any]:
        return {
            **network_payload(self.spec, self.pop.member_state_dict(i)),
            "seed": self.seeds[i],
            "optimizer": self._optimizer_slice(i),
            "rng": {"sample": self.actor.pick.generators[i].get_state(),
                    "minibatch": self.minibatches.generators[i].get_state()},
            "next_done": self.next_done[i].cpu(),
        }

    def load_state(self, i: int, ckpt: dict[str, Any]) -> None:
        self.pop.load_member_state_dict(i, ckpt["model"])
        self._load_optimizer_slice(i, ckpt["optimizer"])
        self.actor.pick.generators[i].set_state(ckpt["rng"]["sample"])
        self.minibatches.generators[i].set_state(ckpt["rng"]["minibatch"])
        self.next_done[i] = ckpt["next_done"].to(self.device)

    def _optimizer_slice(self, i: int) -> list[dict[str, Any]]:
        """Agent i's share of the Adam state (moments are stacked on the member axis)."""
        return [
            {k: (v[i].clone() if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in self.opt.state[p].items()}
            for p in self.params
        ]

    def _load_optimizer_slice(self, i: int, saved: list[dict[str, Any]]) -> None:
        for p, entry in zip(self.params, saved):
            state = self.opt.state[p]
            for k, v in entry.items():
                if torch.is_tensor(v) and v.dim() > 0:
                    state.setdefault(k, torch.zeros_like(p))[i].copy_(v)
                else:
                    state[k] = v.clone() if torch.is_tensor(v) else v
