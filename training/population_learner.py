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

from agents.algorithm import UpdateInput
from agents.minibatches import Batch, Minibatch, SampleMinibatches, SequenceMinibatches
from agents.networks import PolicyOutput
from agents.registry import build_algorithm
from agents.rollout import ReturnScaler
from agents.sampling import make_generators
from core.config import Config
from core.runtime import Runtime
from envs.make import make_env
from envs.procgen_vec import OBS_SHAPE
from envs.split_batch import SplitBatch
from training.native_learner import NativeLearner

LABELS = ("next_levels", "next_steps", "prev_levels", "prev_steps")  # checkpointed frame labels


class PopulationLearner(NativeLearner):
    """Trains ensemble members ``members`` (indices into the config's seeds) together."""

    def __init__(self, cfg: Config, members: list[int], runtime: Runtime) -> None:
        self.members = list(members)
        seeds = [cfg.member_seeds[m] for m in self.members]
        strategy = SequenceMinibatches if cfg.ppo.minibatch == "sequences" else SampleMinibatches
        self.minibatches = strategy(make_generators(seeds, "cpu", salt=2))
        algorithm = build_algorithm(cfg, seeds, runtime.bf16, runtime.device, self.minibatches)
        super().__init__(cfg, algorithm, seeds, runtime, cfg.num_updates())
        self.agents = [cfg.layout.member(m) for m in self.members]
        self.gamma = cfg.ppo.gamma
        m, n, parts = len(seeds), cfg.env.num_envs, len(self.slices)
        # The reference's reward scaling (IDAAC, DAAC): one running return statistic per member.
        scaled = cfg.member.algo != "ppo" and cfg.idaac.reward_scaling
        self.scalers = [ReturnScaler(n) for _ in seeds] if scaled else None
        # Frame labels for pairing (IDAAC): the current frames' level seeds and episode steps, and
        # those of the frame before the rollout (frame -1); long tensors (M, N).
        self.labels = algorithm.needs_frame_labels
        if self.labels:
            self.host_levels = [self.host_buffer((m, n // parts), torch.int64) for _ in self.slices]
            self.next_levels = torch.zeros(m, n, dtype=torch.long, device=self.device)
            self.next_steps = torch.zeros_like(self.next_levels)
        self.envs = [SplitBatch(functools.partial(make_env, cfg.env, split="train", rand_seed=s), n, parts)
                     for s in seeds]
        # One host buffer per slice, (M, slice size, ...): contiguous, so one copy moves it.
        size = n // parts
        self.host_obs = [self.host_buffer((m, size) + OBS_SHAPE, torch.uint8) for _ in self.slices]
        self.host_rewards = [self.host_buffer((m, size), torch.float32) for _ in self.slices]
        self.host_episode_starts = [self.host_buffer((m, size), torch.float32) for _ in self.slices]
        # Stepping 10 members' batches one after another would dominate a GPU rollout.
        self.env_workers = m * parts
        for i, (env, s) in enumerate(zip(self.envs, seeds)):
            self._set_frames(i, env.reset(s))
            if self.labels:
                self.next_levels[i] = torch.from_numpy(env.level_seeds().astype("int64")).to(self.device)
        if self.labels:
            # The reference labels the first rollout's frame -1 with its first step's labels; the
            # reset frame's are the nearest we have before stepping (only that one row differs).
            self.prev_levels, self.prev_steps = self.next_levels.clone(), self.next_steps.clone()

    def send(self, part: int, actions: torch.Tensor) -> None:
        host = actions.numpy()
        self.run_env_tasks(part, [functools.partial(self._step_member, m, part, host[m])
                                  for m in range(len(self.envs))])

    def _step_member(self, m: int, part: int, actions: np.ndarray) -> dict[str, Any]:
        """Step member m's slice, writing into the slice's host buffers at row m (in a worker)."""
        obs, reward, term, info = self.envs[m].step(part, actions)
        if self.scalers is not None:
            reward = self.scalers[m](reward, term)
        self.host_obs[part][m], self.host_rewards[part][m], self.host_episode_starts[part][m] = obs, reward, term
        if self.labels:
            self.host_levels[part][m] = info["level_seed"]
        return info

    def receive(self, part: int, t: int) -> None:
        envs = self.slices[part]
        for m, info in enumerate(self.env_results(part)):
            if "episode_return" in info:
                mask = info["_episode_return"]
                self.episodes.add("charts/episodic_return", m, info["episode_return"][mask])
                self.episodes.add("charts/episodic_length", m, info["episode_length"][mask])
        self.to_device(self.host_rewards[part], self.ro.rewards[:, t, envs])
        self.to_device(self.host_episode_starts[part], self.next_episode_starts[:, envs])
        self.to_device(self.host_obs[part], self.next_obs[:, envs])
        if self.labels:
            self.to_device(self.host_levels[part], self.next_levels[:, envs])
            steps = self.next_steps[:, envs]
            steps.add_(1).mul_((self.next_episode_starts[:, envs] == 0).long())  # 0 where a new episode starts

    def store_step(self, t: int, envs: slice) -> None:
        if self.labels:
            self.ro.level_seeds[:, t, envs] = self.next_levels[:, envs]
            self.ro.episode_steps[:, t, envs] = self.next_steps[:, envs]

    def update_input(self, batch: Batch) -> UpdateInput:
        data = super().update_input(batch)
        if self.labels:
            ro = self.ro
            data.level_seeds = torch.cat((self.prev_levels[:, None], ro.level_seeds, self.next_levels[:, None]), 1)
            data.episode_steps = torch.cat((self.prev_steps[:, None], ro.episode_steps, self.next_steps[:, None]), 1)
            # The next rollout's frame -1 is this rollout's last frame.
            self.prev_levels, self.prev_steps = ro.level_seeds[:, -1].clone(), ro.episode_steps[:, -1].clone()
        return data

    def _set_frames(self, m: int, frames: np.ndarray) -> None:
        """Member m's current frames (all N envs), e.g. after a reset or a restored env state."""
        self.next_obs[m] = torch.from_numpy(frames).to(self.device)

    def forward(self, mb: Minibatch) -> PolicyOutput:
        return self.pop(mb.batch.flat().obs)

    def next_value(self) -> torch.Tensor:
        return self.pop(self.next_obs).values

    def state(self, i: int) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.scalers is not None:
            extra["reward_scaling"] = self.scalers[i].state_dict()
        if self.labels:
            extra["frame_labels"] = {k: getattr(self, k)[i].cpu() for k in LABELS}
        return {**super().state(i), "env": self.envs[i].get_state(), **extra}

    def load_state(self, i: int, ckpt: dict[str, Any]) -> None:
        super().load_state(i, ckpt)
        self._set_frames(i, self.envs[i].set_state(ckpt["env"]))
        if self.scalers is not None:
            self.scalers[i].load_state_dict(ckpt["reward_scaling"])
        if self.labels:
            for k in LABELS:
                getattr(self, k)[i] = ckpt["frame_labels"][k].to(self.device)

    def close(self) -> None:
        super().close()
        for env in self.envs:
            env.close()
