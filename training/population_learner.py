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
from agents.minibatches import Batch, Minibatch
from agents.networks import PolicyOutput
from agents.population import time_forward_modes
from agents.registry import build_algorithm
from agents.rollout import Rollout
from core.config import Config
from core.runtime import Runtime
from envs.make import make_env
from envs.procgen_vec import OBS_SHAPE
from envs.split_batch import SplitBatch
from training.native_learner import NativeLearner


class FrameLabels:
    """The level seed and episode step of every member's current frames, for an algorithm that
    ``needs_frame_labels`` (IDAAC pairs frames by them): long tensors (M, N) of the frames the envs
    show now (``next_*``) and of the frame before the rollout (``prev_*``, frame -1)."""

    KEYS = ("next_levels", "next_steps", "prev_levels", "prev_steps")  # checkpointed

    def __init__(self, levels: list[np.ndarray], host_buffers: list[np.ndarray], device: torch.device) -> None:
        """``levels``: each member's reset frames' level seeds (N,); ``host_buffers``: one
        (M, slice size) int64 buffer per slice, which the env workers fill."""
        self.host = host_buffers
        self.next_levels = torch.from_numpy(np.stack(levels).astype("int64")).to(device)
        self.next_steps = torch.zeros_like(self.next_levels)
        # The reference labels the first rollout's frame -1 with its first step's labels; the
        # reset frame's are the nearest we have before stepping (only that one row differs).
        self.prev_levels, self.prev_steps = self.next_levels.clone(), self.next_steps.clone()

    def write(self, part: int, m: int, info: dict[str, Any]) -> None:
        """Member m's step of slice ``part`` (in an env worker): its frames' level seeds."""
        self.host[part][m] = info["level_seed"]

    def receive(self, part: int, envs: slice, episode_starts: torch.Tensor, to_device: Any) -> None:
        """The slice's new frames' labels: levels copied in, steps counted on (0 where
        ``episode_starts``, (M, slice size), says an episode starts)."""
        to_device(self.host[part], self.next_levels[:, envs])
        steps = self.next_steps[:, envs]
        steps.add_(1).mul_((episode_starts == 0).long())

    def store(self, ro: Rollout, t: int, envs: slice) -> None:
        """Step t's frames' labels into the rollout."""
        ro.level_seeds[:, t, envs] = self.next_levels[:, envs]
        ro.episode_steps[:, t, envs] = self.next_steps[:, envs]

    def complete(self, data: UpdateInput, ro: Rollout) -> None:
        """Give ``data`` the labels of frames -1..T, (M, T + 2, N); the rollout's last frame becomes
        the next rollout's frame -1."""
        data.level_seeds = torch.cat((self.prev_levels[:, None], ro.level_seeds, self.next_levels[:, None]), 1)
        data.episode_steps = torch.cat((self.prev_steps[:, None], ro.episode_steps, self.next_steps[:, None]), 1)
        self.prev_levels, self.prev_steps = ro.level_seeds[:, -1].clone(), ro.episode_steps[:, -1].clone()

    def state(self, m: int) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k)[m].cpu() for k in self.KEYS}

    def load_state(self, m: int, saved: dict[str, torch.Tensor]) -> None:
        for k in self.KEYS:
            getattr(self, k)[m] = saved[k].to(self.next_levels.device)


class PopulationLearner(NativeLearner):
    """Trains ensemble members ``members`` (indices into the config's seeds) together, with
    ``member.algo``'s algorithm, collecting what it asks for: frame labels, rewards through its
    reward transform."""

    def __init__(self, cfg: Config, members: list[int], runtime: Runtime) -> None:
        self.members = list(members)
        seeds = [cfg.member_seeds[m] for m in self.members]
        algorithm = build_algorithm(cfg, seeds, runtime.bf16, runtime.device)
        super().__init__(cfg, algorithm, seeds, runtime, cfg.num_updates())
        self.agents = [cfg.layout.member(m) for m in self.members]
        self.gamma, self.gae_lambda = cfg.ppo.gamma, cfg.ppo.gae_lambda
        m, n, parts = len(seeds), cfg.env.num_envs, len(self.slices)
        transform = algorithm.reward_transform  # one per member: each keeps its own statistics
        self.reward_transforms = [transform(n) for _ in seeds] if transform is not None else None
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
        self.labels = FrameLabels([env.level_seeds() for env in self.envs],
                                  [self.host_buffer((m, size), torch.int64) for _ in self.slices],
                                  self.device) if algorithm.needs_frame_labels else None
        self.forward_mode_times: dict[str, float] = {}
        if cfg.population.forward_mode == "auto" and self.device.type == "cuda" and m > 1:
            self.measure_forward_mode(cfg.ppo.num_steps * n // algorithm.settings.num_minibatches)

    def measure_forward_mode(self, samples: int) -> None:
        """``population.forward_mode=auto`` on CUDA: time both forward modes on a minibatch of
        ``samples`` frames per member (the envs' first frames, tiled), keep the faster and say so."""
        frames = self.next_obs.repeat(1, -(-samples // self.next_obs.shape[1]), 1, 1, 1)[:, :samples]
        self.forward_mode_times = time_forward_modes(self.pop, frames)
        self.pop.forward_mode = min(self.forward_mode_times, key=self.forward_mode_times.get)
        times = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.forward_mode_times.items())
        print(f"{self.agents[0].name}..{self.agents[-1].name}: population.forward_mode=auto on {self.device}: "
              f"{times} per forward and backward of a minibatch ({samples} frames x {len(self.seeds)} "
              f"members); using {self.pop.forward_mode}", flush=True)

    def send(self, part: int, actions: torch.Tensor) -> None:
        host = actions.numpy()
        self.run_env_tasks(part, [functools.partial(self._step_member, m, part, host[m])
                                  for m in range(len(self.envs))])

    def _step_member(self, m: int, part: int, actions: np.ndarray) -> dict[str, Any]:
        """Step member m's slice, writing into the slice's host buffers at row m (in a worker)."""
        obs, reward, term, info = self.envs[m].step(part, actions)
        if self.reward_transforms is not None:
            reward = self.reward_transforms[m](reward, term)
        self.host_obs[part][m], self.host_rewards[part][m], self.host_episode_starts[part][m] = obs, reward, term
        if self.labels is not None:
            self.labels.write(part, m, info)
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
        if self.labels is not None:
            self.labels.receive(part, envs, self.next_episode_starts[:, envs], self.to_device)

    def store_step(self, t: int, envs: slice) -> None:
        if self.labels is not None:
            self.labels.store(self.ro, t, envs)

    def update_input(self, batch: Batch) -> UpdateInput:
        data = super().update_input(batch)
        if self.labels is not None:
            self.labels.complete(data, self.ro)
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
        if self.reward_transforms is not None:  # its key from when IDAAC's reward scaling was the only one
            extra["reward_scaling"] = self.reward_transforms[i].state_dict()
        if self.labels is not None:
            extra["frame_labels"] = self.labels.state(i)
        return {**super().state(i), "env": self.envs[i].get_state(), **extra}

    def load_state(self, i: int, ckpt: dict[str, Any]) -> None:
        super().load_state(i, ckpt)
        self._set_frames(i, self.envs[i].set_state(ckpt["env"]))
        if self.reward_transforms is not None:
            self.reward_transforms[i].load_state_dict(ckpt["reward_scaling"])
        if self.labels is not None:
            self.labels.load_state(i, ckpt["frame_labels"])

    def close(self) -> None:
        super().close()
        for env in self.envs:
            env.close()
