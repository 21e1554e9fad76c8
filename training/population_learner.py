"""The native learner of reward agents: a population of M members trained as one batched
computation (a single agent is a population of one).

Collecting: one batched forward for all members per step, then every member's env batch steps
(in parallel threads: procgen releases the GIL). Members are independent learners that merely
share kernels: each has its seed, envs, sampling and minibatch streams, Adam moments and metrics.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from agents.minibatches import Minibatch, SampleMinibatches, SequenceMinibatches
from agents.networks import NetworkSpec
from agents.sampling import make_generators
from core.config import Config
from core.runtime import Runtime
from envs.make import make_env
from training.learner import EpisodeLog
from training.native_learner import NativeLearner


class PopulationLearner(NativeLearner):
    """Trains ensemble members ``members`` (indices into the config's seeds) together."""

    def __init__(self, cfg: Config, members: list[int], runtime: Runtime) -> None:
        self.members = list(members)
        seeds = [cfg.member_seeds[m] for m in self.members]
        super().__init__(cfg, NetworkSpec.from_config(cfg.network), seeds, runtime,
                         cfg.population.forward_mode, cfg.num_updates())
        self.agents = [cfg.layout.member(m) for m in self.members]
        self.gamma = cfg.ppo.gamma
        strategy = SequenceMinibatches if cfg.ppo.minibatch == "sequences" else SampleMinibatches
        self.minibatches = strategy(make_generators(seeds, "cpu", salt=2))
        m, n = len(seeds), cfg.env.num_envs
        self.envs = [make_env(cfg.env, n, "train", s) for s in seeds]
        self.host_obs = np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, seeds)])
        self.next_obs = torch.from_numpy(self.host_obs).to(self.device)
        self.next_done = torch.zeros(m, n, device=self.device)
        self.host_rewards = np.zeros((m, n), np.float32)
        self.host_dones = np.zeros((m, n), np.float32)
        # procgen releases the GIL inside its C++ step, so members' env batches step in parallel:
        # on a GPU machine stepping 10 batches one after another would dominate the rollout.
        self.env_threads = ThreadPoolExecutor(m) if m > 1 else None

    @torch.no_grad()
    def collect(self) -> EpisodeLog:
        ro, episodes = self.ro, EpisodeLog()
        for t in range(ro.steps):
            self.host_actions = self.act(t).cpu().numpy()
            members = range(len(self.envs))
            infos = self.env_threads.map(self._step_member, members) if self.env_threads else map(self._step_member, members)
            for m, info in enumerate(infos):
                if "episode_return" in info:
                    mask = info["_episode_return"]
                    episodes.add("charts/episodic_return", m, info["episode_return"][mask])
                    episodes.add("charts/episodic_length", m, info["episode_length"][mask])
            ro.rewards[:, t] = torch.from_numpy(self.host_rewards).to(self.device)
            self.next_done = torch.from_numpy(self.host_dones).to(self.device)
            self.next_obs = torch.from_numpy(self.host_obs).to(self.device)
        return episodes

    def _step_member(self, m: int) -> dict[str, Any]:
        """Step member m's env batch, writing into the shared host buffers at row m."""
        self.host_obs[m], self.host_rewards[m], self.host_dones[m], _, info = self.envs[m].step(self.host_actions[m])
        return info

    def forward(self, mb: Minibatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pop(mb.batch.flat().obs)

    def next_value(self) -> torch.Tensor:
        return self.pop(self.next_obs)[1]

    def state(self, i: int) -> dict[str, Any]:
        return {**super().state(i), "env": self.envs[i].get_state()}

    def load_state(self, i: int, ckpt: dict[str, Any]) -> None:
        super().load_state(i, ckpt)
        self.host_obs[i] = self.envs[i].set_state(ckpt["env"])
        self.next_obs = torch.from_numpy(self.host_obs).to(self.device)

    def close(self) -> None:
        if self.env_threads is not None:
            self.env_threads.shutdown()
        for env in self.envs:
            env.close()
