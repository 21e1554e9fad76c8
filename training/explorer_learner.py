"""The maximum-entropy exploration agent's learner (docs/expgen.md, "Explorer"): recurrent PPO on
an intrinsic reward, through the same PPO data path as the reward agents. What differs:
- the reward: the kNN estimate of within-episode state entropy on full-level frames
  (agents/knn_reward.py), from a second, lock-stepped procgen batch (envs/full_view.py), or the
  agent's own frames in games that draw the whole level anyway; the game's own reward is only logged;
- the GRU state, carried across rollouts and reset at episode starts;
- minibatches of whole env sequences, replayed through the GRU from the state the rollout began with.

Acting syncs with the host once per step and slice, reading the actions (``NativeLearner.act``):
the GRU's acting step resets its state on the device (``networks.gru_sequence``), and a step's
episode ends reach the device as its frames do, from a pinned host buffer without blocking. The
kNN reward never reads the host either; with ``network.acting`` captured it replays as one CUDA
graph of its own, as the acting step does (it cannot ride in that step's graph: the rollout's last
reward comes after its last acting step).

The rollout is a chain of ``explorer.total_steps / env.num_envs`` steps, each waiting for its env
step, so the explorer steps each of its env batches on several of procgen's C++ threads
(``explorer.env_threads``, ``env_threads``) and the agent view and its full-view twin at once
(envs/full_view.py). Neither changes a number: procgen steps each game on its own state,
whichever thread runs it.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np
import torch

from agents.acting import CapturedStep
from agents.knn_reward import EpisodicKNNReward, embed_frames, embedding_dim, embedding_scale
from agents.minibatches import MINIBATCH_SALT, Minibatch, SequenceMinibatches
from agents.networks import NetworkSpec, PolicyOutput
from agents.ppo import PPOAlgorithm
from agents.sampling import make_generators
from core.config import Config
from core.runtime import Runtime
from core.sections import EnvConfig
from envs.full_view import FullViewPair
from envs.games import get_game
from envs.make import make_env
from envs.procgen_vec import OBS_SHAPE
from training.learner import EpisodeLog
from training.native_learner import NativeLearner, rollout_slices


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one: taskset,
    cgroup cpusets), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def views(env: EnvConfig) -> int:
    """The explorer's env batches stepped at once per slice: 2 where its game needs the full-view
    twin (envs/full_view.py: stepped beside the agent view), else 1."""
    return 1 if get_game(env.game).full_view_is_agent_view else 2


def env_threads(cfg: Config) -> int:
    """procgen's stepping threads (its ``num_threads``) for each of the explorer's env batches:
    ``explorer.env_threads`` if >= 0, else (-1) ``auto_env_threads`` of its CPUs (``resources.explorer_cpus``,
    no more than this process may run on), shared by the views it steps at once."""
    if cfg.explorer.env_threads >= 0:
        return cfg.explorer.env_threads
    cpus = min(available_cores(), max(1, int(cfg.resources.explorer_cpus)))
    return auto_env_threads(cfg.env.num_envs // rollout_slices(cfg.env), cpus // views(cfg.env))


def auto_env_threads(batch_envs: int, cpus: int) -> int:
    """``explorer.env_threads=-1`` for batches of ``batch_envs`` with ``cpus`` cores each: one
    thread per core, at most one per env (procgen hands out whole games); 0 on a single core, where
    procgen steps the batch in the calling thread (its one worker would only add a hand-off per
    step). Measured: benchmarks/explorer_latency.py, docs/performance.md."""
    threads = min(max(1, cpus), batch_envs)
    return 0 if threads == 1 else threads


def explorer_env(cfg: Config) -> EnvConfig:
    """``env`` as the explorer's batches are built: ``num_threads`` from ``env_threads``."""
    return dataclasses.replace(cfg.env, num_threads=env_threads(cfg))


class ExplorerLearner(NativeLearner):
    def __init__(self, cfg: Config, runtime: Runtime) -> None:
        ex, n = cfg.explorer, cfg.env.num_envs
        # The explorer is always PPO (docs/expgen.md, "Explorer"), whatever member.algo says, with
        # its own settings (explorer.ppo) and minibatches of whole sequences for its GRU.
        minibatches = SequenceMinibatches(make_generators([ex.seed], "cpu", salt=MINIBATCH_SALT))
        algorithm = PPOAlgorithm(ex.ppo, NetworkSpec.from_config(cfg.network, recurrent=True), [ex.seed], "loop",
                                 runtime.bf16, runtime.device, minibatches, cfg.network.init)
        super().__init__(cfg, algorithm, [ex.seed], runtime, cfg.num_updates(explorer=True))
        self.agents = [cfg.layout.explorer]
        self.gamma, self.gae_lambda = cfg.explorer_gamma, ex.gae_lambda
        self.settings_section = "explorer.ppo"
        parts = len(self.slices)
        self.envs = FullViewPair(functools.partial(make_env, explorer_env(cfg), split="train", rand_seed=ex.seed),
                                 n, parts)
        self.env_workers = parts
        size = n // parts
        self.host_obs = [self.host_buffer((size,) + OBS_SHAPE, torch.uint8) for _ in self.slices]
        self.host_term = [self.host_buffer((size,), torch.bool) for _ in self.slices]
        self.term = torch.zeros(n, dtype=torch.bool, device=self.device)  # the step's episode ends
        if self.envs.twin:
            self.host_full = [self.host_buffer((size,) + OBS_SHAPE, torch.uint8) for _ in self.slices]
            self.full = torch.zeros((n,) + OBS_SHAPE, dtype=torch.uint8, device=self.device)
        else:  # the agent's frames are the full view: the reward reads them in place
            self.full = self.next_obs[0]
        self.knn = EpisodicKNNReward(n, embedding_dim(ex.pool), ex.k, ex.buffer_size, self.device,
                                     scale=embedding_scale(ex.pool))
        obs, full = self.envs.reset(seed=ex.seed)
        self.next_obs[0] = torch.from_numpy(obs).to(self.device)
        self.knn.reset(embed_frames(torch.from_numpy(full).to(self.device), ex.pool))
        self.ep_intrinsic = torch.zeros(n, device=self.device)
        # Intrinsic returns of the episodes that end, by step (NaN elsewhere): every row rewritten
        # each rollout and read once at its end instead of a host sync at every episode end.
        self.ended_intrinsic = torch.empty((self.ro.steps, n), device=self.device)
        mutated = (self.knn.buffer, self.knn.counts, self.knn.positions, self.ep_intrinsic)
        self.reward_step = CapturedStep(self._reward, self.device, mutated) if runtime.cudagraphs else self._reward

    def begin_rollout(self) -> None:
        self.start_state = self.actor.state.clone()  # sequences are replayed from here in `forward`

    def collect(self) -> EpisodeLog:
        episodes = super().collect()
        ended = self.ended_intrinsic.cpu().numpy()
        episodes.add("explore/intrinsic_return", 0, ended[~np.isnan(ended)])
        return episodes

    def send(self, part: int, actions: torch.Tensor) -> None:
        self.run_env_tasks(part, [functools.partial(self._step_slice, part, actions[0].numpy())])

    def _step_slice(self, part: int, actions: np.ndarray) -> dict[str, Any]:
        """Step both views of one slice, writing its frames and episode ends into the slice's host
        buffers (the device copies made from them in ``receive`` have finished: the slice's action
        read that came before this step waited for them)."""
        obs, full, _, term, info = self.envs.step(part, actions)
        self.host_obs[part][:], self.host_term[part][:] = obs, term
        if self.envs.twin:
            self.host_full[part][:] = full
        return info

    def receive(self, part: int, t: int) -> None:
        envs = self.slices[part]
        [info] = self.env_results(part)
        if "episode_return" in info:
            mask = info["_episode_return"]
            self.episodes.add("charts/episodic_return", 0, info["episode_return"][mask])
            self.episodes.add("charts/episodic_length", 0, info["episode_length"][mask])
            self.episodes.add("explore/level_complete_rate", 0, info["level_complete"][mask])
        self.to_device(self.host_term[part], self.term[envs])
        self.next_episode_starts[0, envs] = self.term[envs]  # bool -> float on the device
        self.actor.episode_ended(0, self.next_episode_starts[0, envs], envs)
        self.to_device(self.host_obs[part], self.next_obs[0, envs])
        if self.envs.twin:
            self.to_device(self.host_full[part], self.full[envs])
        if part == len(self.slices) - 1:  # step t is complete: its reward needs every env's frame
            self.reward(t)

    def reward(self, t: int) -> None:
        """The intrinsic reward of step t, for all envs at once (one batched kNN)."""
        with self.clock("reward"):
            self.ro.rewards[0, t], self.ended_intrinsic[t] = self.reward_step()

    def _reward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kNN reward (N,) of the step whose frames and episode ends the learner holds, and the
        intrinsic returns (N,) of the episodes it ends (NaN elsewhere). Reads and writes only
        tensors that live as long as the learner, in place: ``reward_step`` may replay it as a graph."""
        done = self.next_episode_starts[0].bool()
        reward = self.knn.step(embed_frames(self.full, self.cfg.explorer.pool), done)
        self.ep_intrinsic += reward
        ended = torch.where(done, self.ep_intrinsic, float("nan"))
        self.ep_intrinsic.masked_fill_(done, 0.0)
        return reward, ended

    def forward(self, mb: Minibatch) -> PolicyOutput:
        """Replay each minibatch sequence through the GRU from its env's state at rollout start."""
        seq = mb.batch
        rows = torch.arange(len(mb.envs), device=mb.envs.device).unsqueeze(1)
        out = self.pop(seq.obs, self.start_state[rows, mb.envs], seq.episode_starts)
        return PolicyOutput(out.logits.flatten(1, 2), out.values.flatten(1, 2))

    def next_value(self) -> torch.Tensor:
        return self.pop(self.next_obs.unsqueeze(1), self.actor.state, self.next_episode_starts.unsqueeze(1)).values[:, 0]

    def learn(self) -> dict[str, torch.Tensor]:
        metrics = super().learn()
        # Per-step reward: unlike the episode sum, it does not grow just because episodes get longer.
        metrics["explore/intrinsic_reward_per_step"] = self.ro.rewards.flatten(1).mean(1)
        return metrics

    def state(self, i: int) -> dict[str, Any]:
        return {
            **super().state(i),
            "env": self.envs.get_state(),
            "recurrent_state": self.actor.state[0].cpu(),
            "knn": {k: v.cpu() for k, v in self.knn.state_dict().items()},
            "episode_intrinsic": self.ep_intrinsic.cpu(),
        }

    def load_state(self, i: int, ckpt: dict[str, Any]) -> None:
        super().load_state(i, ckpt)
        obs, _ = self.envs.set_state(ckpt["env"])
        self.next_obs[0] = torch.from_numpy(obs).to(self.device)
        self.actor.state[0] = ckpt["recurrent_state"].to(self.device)
        self.actor.episode_starts[0] = self.next_episode_starts[0]
        self.knn.load_state_dict({k: v.to(self.device) for k, v in ckpt["knn"].items()})
        self.ep_intrinsic.copy_(ckpt["episode_intrinsic"])  # in place: ``reward_step`` reads this tensor

    def close(self) -> None:
        super().close()
        self.envs.close()
