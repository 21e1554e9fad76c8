"""The native learner of reward agents: a population of M members trained as one batched
computation (a single agent is a population of one).

Collecting: one batched forward for all members per step (and slice of the envs, see
training/native_learner.py), then every member's env batch steps, in parallel threads (procgen
releases the GIL). Members are independent learners that merely share kernels: each has its seed,
envs, sampling and minibatch streams, Adam moments and metrics.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from agents.minibatches import Minibatch, SampleMinibatches, SequenceMinibatches
from agents.networks import NetworkSpec
from agents.sampling import make_generators
from core.config import Config
from core.runtime import Runtime
from envs.make import make_env
from envs.procgen_vec import OBS_SHAPE
from envs.split_batch import SplitBatch
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
        m, n, parts = len(seeds), cfg.env.num_envs, len(self.slices)
        self.envs = [SplitBatch(functools.partial(make_env, cfg.env, split="train", rand_seed=s), n, parts)
                     for s in seeds]
        # One host buffer per slice, (M, slice size, ...): contiguous, so one copy moves it.
        size = n // parts
        self.host_obs = [self.host_buffer((m, size) + OBS_SHAPE, torch.uint8) for _ in self.slices]
        self.host_rewards = [self.host_buffer((m, size), torch.float32) for _ in self.slices]
        self.host_dones = [self.host_buffer((m, size), torch.float32) for _ in self.slices]
        # Stepping 10 members' batches one after another would dominate a GPU rollout.
        self.env_workers = m * parts
        for i, (env, s) in enumerate(zip(self.envs, seeds)):
            self._set_frames(i, env.reset(s))

    def send(self, part: int, actions: torch.Tensor) -> None:
        host = actions.numpy()
        self.run_env_tasks(part, [functools.partial(self._step_member, m, part, host[m])
                                  for m in range(len(self.envs))])

    def _step_member(self, m: int, part: int, actions: np.ndarray) -> dict[str, Any]:
        """Step member m's slice, writing into the slice's host buffers at row m (in a worker)."""
        obs, reward, term, info = self.envs[m].step(part, actions)
        self.host_obs[part][m], self.host_rewards[part][m], self.host_dones[part][m] = obs, reward, term
        return info

    def receive(self, part: int, t: int) -> None:
        envs = self.slices[part]
        for m, info in enumerate(self.env_results(part)):
            if "episode_return" in info:
                mask = info["_episode_return"]
                self.episodes.add("charts/episodic_return", m, info["episode_return"][mask])
                self.episodes.add("charts/episodic_length", m, info["episode_length"][mask])
        self.to_device(self.host_rewards[part], self.ro.rewards[:, t, envs])
        self.to_device(self.host_dones[part], self.next_done[:, envs])
        self.to_device(self.host_obs[part], self.next_obs[:, envs])

    def _set_frames(self, m: int, frames: np.ndarray) -> None:
        """Member m's current frames (all N envs), e.g. after a reset or a restored env state."""
        self.next_obs[m] = torch.from_numpy(frames).to(self.device)

    def forward(self, mb: Minibatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pop(mb.batch.flat().obs)

    def next_value(self) -> torch.Tensor:
        return self.pop(self.next_obs)[1]

    def state(self, i: int) -> dict[str, Any]:
        return {**super().state(i), "env": self.envs[i].get_state()}

    def load_state(self, i: int, ckpt: dict[str, Any]) -> None:
        super().load_state(i, ckpt)
        self._set_frames(i, self.envs[i].set_state(ckpt["env"]))

    def close(self) -> None:
        super().close()
        for env in self.envs:
            env.close()
