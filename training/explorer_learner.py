"""The maximum-entropy exploration agent's learner (docs/expgen.md, "Explorer"): recurrent PPO on
an intrinsic reward, through the same PPO data path as the reward agents. What differs:
- the reward: the kNN estimate of within-episode state entropy on full-level frames
  (agents/knn_reward.py), from a second, lock-stepped procgen batch (envs/full_view.py); the
  game's own reward is only logged;
- the GRU state, carried across rollouts and reset at episode starts;
- minibatches of whole env sequences, replayed through the GRU from the state the rollout began with.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from agents.knn_reward import EpisodicKNNReward, embed_frames, embedding_dim, embedding_scale
from agents.minibatches import Minibatch, SequenceMinibatches
from agents.networks import NetworkSpec
from agents.sampling import make_generators
from core.config import Config
from core.runtime import Runtime
from envs.full_view import FullViewPair
from envs.make import make_env
from training.learner import EpisodeLog
from training.native_learner import NativeLearner


class ExplorerLearner(NativeLearner):
    def __init__(self, cfg: Config, runtime: Runtime) -> None:
        ex, n = cfg.explorer, cfg.env.num_envs
        super().__init__(cfg, NetworkSpec.from_config(cfg.network, recurrent=True), [ex.seed], runtime,
                         "loop", cfg.num_updates(explorer=True))
        self.agents = [cfg.layout.explorer]
        self.gamma = cfg.explorer_gamma
        self.minibatches = SequenceMinibatches(make_generators([ex.seed], "cpu", salt=2))
        self.envs = FullViewPair(functools.partial(make_env, cfg.env, n, "train", ex.seed))
        self.knn = EpisodicKNNReward(n, embedding_dim(ex.pool), ex.k, ex.buffer_size, self.device,
                                     scale=embedding_scale(ex.pool))
        obs, full, _ = self.envs.reset(seed=ex.seed)
        self.next_obs = torch.from_numpy(obs).to(self.device).unsqueeze(0)
        self.knn.reset(embed_frames(torch.from_numpy(full).to(self.device), ex.pool))
        self.next_done = torch.zeros(1, n, device=self.device)
        self.ep_intrinsic = torch.zeros(n, device=self.device)

    @torch.no_grad()
    def collect(self) -> EpisodeLog:
        ro, episodes, pool = self.ro, EpisodeLog(), self.cfg.explorer.pool
        self.start_state = self.actor.state.clone()  # sequences are replayed from here in `forward`
        for t in range(ro.steps):
            actions = self.act(t)
            obs, full, _, term, info = self.envs.step(actions[0].cpu().numpy())
            done = torch.from_numpy(term).to(self.device)
            reward = self.knn.step(embed_frames(torch.from_numpy(full).to(self.device), pool), done)
            ro.rewards[0, t] = reward
            self.ep_intrinsic += reward
            if "episode_return" in info:
                mask = info["_episode_return"]
                episodes.add("explore/intrinsic_return", 0, self.ep_intrinsic[done].cpu().numpy())
                episodes.add("charts/episodic_return", 0, info["episode_return"][mask])
                episodes.add("charts/episodic_length", 0, info["episode_length"][mask])
                episodes.add("explore/level_complete_rate", 0, info["level_complete"][mask])
                self.ep_intrinsic[done] = 0.0
            self.actor.episode_ended(0, term)
            self.next_done = done.float().unsqueeze(0)
            self.next_obs = torch.from_numpy(obs).to(self.device).unsqueeze(0)
        return episodes

    def forward(self, mb: Minibatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Replay each minibatch sequence through the GRU from its env's state at rollout start."""
        seq = mb.batch
        rows = torch.arange(len(mb.envs), device=mb.envs.device).unsqueeze(1)
        logits, values, _ = self.pop(seq.obs, self.start_state[rows, mb.envs], seq.first)
        return logits.flatten(1, 2), values.flatten(1, 2)

    def next_value(self) -> torch.Tensor:
        return self.pop(self.next_obs.unsqueeze(1), self.actor.state, self.next_done.unsqueeze(1))[1][:, 0]

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
        self.next_obs = torch.from_numpy(obs).to(self.device).unsqueeze(0)
        self.actor.state[0] = ckpt["recurrent_state"].to(self.device)
        self.actor.first[0] = self.next_done[0]
        self.knn.load_state_dict({k: v.to(self.device) for k, v in ckpt["knn"].items()})
        self.ep_intrinsic = ckpt["episode_intrinsic"].to(self.device)

    def close(self) -> None:
        self.envs.close()
