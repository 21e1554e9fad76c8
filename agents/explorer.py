"""The maximum-entropy exploration agent (EXPGEN.md section 2): recurrent PPO on an intrinsic reward.

The explorer is a population of one recurrent actor-critic, trained by the same PPO core as the
reward agents (``ppo_epochs``); what differs is written here:
- the reward: the kNN estimate of within-episode state entropy on full-level frames
  (``agents/knn_reward.py``), from a second, lock-stepped procgen batch (``envs/full_view.py``);
  the game's own reward is only logged;
- the GRU state, carried across rollouts and reset at episode starts;
- minibatches made of whole env sequences, so back-propagation runs through the rollout from the
  state the rollout began with.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from agents.checkpoint import network_payload
from agents.config import Config
from agents.episodes import run_episodes
from agents.knn_reward import EpisodicKNNReward, embed_frames, embedding_dim
from agents.memory import tune_allocator
from agents.networks import NetworkSpec, resolve_precision
from agents.population import Population
from agents.ppo import Batch, Minibatches, explained_variance, normalise, ppo_epochs
from agents.rollout import Rollout, compute_gae
from agents.sampling import log_prob_entropy, make_generators, sample_actions
from agents.trainer import EpisodeLog, Trainer, make_env, resolve_device
from envs.full_view import FullViewPair


def explorer_spec(cfg: Config) -> NetworkSpec:
    return NetworkSpec(kind=cfg.network.kind, channels=tuple(cfg.network.channels),
                       hidden=cfg.network.hidden, recurrent=True)


def explorer_dir(cfg: Config):
    return cfg.run_dir / "explorer"


class RecurrentActor:
    """Acts with a recurrent population step by step, resetting its state where episodes begin."""

    def __init__(self, pop: Population, num_envs: int, generators: list[torch.Generator],
                 device: torch.device, sample: bool = True) -> None:
        self.pop, self.gens, self.sample = pop, generators, sample
        hidden = pop.spec.hidden
        self.state = torch.zeros(pop.size, num_envs, hidden, device=device)
        self.first = torch.ones(pop.size, num_envs, device=device)

    def __call__(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """obs (M, N, 64, 64, 3) -> actions (M, N), logits (M, N, A), values (M, N)."""
        logits, values, self.state = self.pop(obs.unsqueeze(1), self.state, self.first.unsqueeze(1))
        logits, values = logits[:, 0], values[:, 0]
        self.first.zero_()
        actions = sample_actions(logits, self.gens) if self.sample else logits.argmax(-1)
        return actions, logits, values

    def episode_ended(self, member: int, terminated: np.ndarray | torch.Tensor) -> None:
        self.first[member] = torch.as_tensor(terminated, dtype=torch.float32, device=self.first.device)


class ExplorerTrainer(Trainer):
    def __init__(self, cfg: Config, device: torch.device | None = None) -> None:
        self.cfg, self.device = cfg, device or resolve_device(cfg.device)
        tune_allocator()
        ex, p, n = cfg.explorer, cfg.ppo, cfg.env.num_envs
        if n % p.num_minibatches:
            raise ValueError(
                f"the explorer's minibatches are sets of whole env sequences: env.num_envs={n} "
                f"must be divisible by ppo.num_minibatches={p.num_minibatches}"
            )
        self.agent_dirs = [explorer_dir(cfg)]
        self.spec = explorer_spec(cfg)
        self.pop = Population(self.spec, [ex.seed], "loop").to(self.device)
        self.pop.set_bf16(resolve_precision(cfg.network.precision, self.device))
        self.params = self.pop.member_params()
        self.opt = torch.optim.Adam(self.params, lr=p.lr, eps=p.adam_eps)
        self.envs = FullViewPair(functools.partial(make_env, cfg, n, "train", ex.seed))
        self.actor = RecurrentActor(self.pop, n, make_generators([ex.seed], self.device, salt=1), self.device)
        self.minibatch_gen = make_generators([ex.seed], "cpu", salt=2)[0]
        self.knn = EpisodicKNNReward(n, embedding_dim(ex.pool), ex.k, ex.buffer_size, self.device)
        self.ro = Rollout.allocate(1, p.num_steps, n, self.device)
        obs, full, _ = self.envs.reset(seed=ex.seed)
        self.next_obs = torch.from_numpy(obs).to(self.device).unsqueeze(0)
        self.knn.reset(embed_frames(torch.from_numpy(full).to(self.device), ex.pool))
        self.next_done = torch.zeros(1, n, device=self.device)
        self.ep_intrinsic = torch.zeros(n, device=self.device)
        self.steps_per_update = p.num_steps * n
        self.num_updates = -(-ex.total_steps // self.steps_per_update)

    @torch.no_grad()
    def collect(self) -> EpisodeLog:
        ro, episodes, pool = self.ro, EpisodeLog(), self.cfg.explorer.pool
        self.start_state = self.actor.state.clone()  # sequences are replayed from here in `learn`
        for t in range(self.cfg.ppo.num_steps):
            ro.obs[:, t] = self.next_obs
            ro.dones[:, t] = self.next_done
            actions, logits, values = self.actor(self.next_obs)
            ro.actions[:, t], ro.values[:, t] = actions, values
            ro.logprobs[:, t] = log_prob_entropy(logits, actions)[0]
            obs, full, _, term, info = self.envs.step(actions[0].cpu().numpy())
            done = torch.from_numpy(term).to(self.device)
            reward = self.knn.step(embed_frames(torch.from_numpy(full).to(self.device), pool), done)
            ro.rewards[0, t] = reward
            self.ep_intrinsic += reward
            if "episode" in info:
                mask = info["_episode"]
                episodes.add("explore/intrinsic_return", 0, self.ep_intrinsic[done].cpu().numpy())
                episodes.add("charts/episodic_return", 0, info["episode"]["r"][mask])
                episodes.add("charts/episodic_length", 0, info["episode"]["l"][mask])
                episodes.add("explore/level_complete_rate", 0, info["level_complete"][mask])
                self.ep_intrinsic[done] = 0.0
            self.actor.episode_ended(0, term)
            self.next_done = done.float().unsqueeze(0)
            self.next_obs = torch.from_numpy(obs).to(self.device).unsqueeze(0)
        return episodes

    def learn(self) -> dict[str, torch.Tensor]:
        p, ro = self.cfg.ppo, self.ro
        with torch.no_grad():
            next_value = self.pop(self.next_obs.unsqueeze(1), self.actor.state, self.next_done.unsqueeze(1))[1][:, 0]
        adv, ret = compute_gae(
            ro.rewards.transpose(0, 1), ro.values.transpose(0, 1), ro.dones.transpose(0, 1),
            next_value, self.next_done, self.cfg.explorer_gamma, p.gae_lambda,
        )
        adv, ret = adv.transpose(0, 1), ret.transpose(0, 1)  # (1, T, N)
        if p.norm_adv == "batch":
            adv = normalise(adv.flatten(1)).view_as(adv)
        metrics = ppo_epochs(self._sequence_minibatches(adv, ret), self.params, self.opt, p)
        metrics["explained_variance"] = explained_variance(ro.values.flatten(1), ret.flatten(1))
        # Per-step reward: unlike the episode sum, it does not grow just because episodes get longer.
        metrics["explore/intrinsic_reward_per_step"] = ro.rewards.flatten(1).mean(1)
        return metrics

    def _sequence_minibatches(self, adv: torch.Tensor, ret: torch.Tensor) -> Minibatches:
        """Minibatches of whole env sequences: each replays its envs' rollout through the GRU."""
        p, ro, n = self.cfg.ppo, self.ro, self.cfg.env.num_envs
        for _ in range(p.epochs):
            for idx in torch.randperm(n, generator=self.minibatch_gen).to(self.device).chunk(p.num_minibatches):
                seq = lambda x: x[:, :, idx]  # (1, T, b, ...)
                logits, values, _ = self.pop(seq(ro.obs), self.start_state[:, idx], seq(ro.dones))
                flat = lambda x: seq(x).flatten(1, 2)
                mb = Batch(flat(ro.obs), flat(ro.actions), flat(ro.logprobs), flat(ro.values),
                           flat(adv), flat(ret))
                yield logits.flatten(1, 2), values.flatten(1, 2), mb

    @torch.no_grad()
    def evaluate_heldout(self) -> dict[str, list[float]]:
        """The explorer alone on each configured split: how often exploring completes a level."""
        log, results = self.cfg.logging, {}
        n = min(self.cfg.env.num_envs, log.eval_episodes)
        for split in log.eval_splits:
            actor = RecurrentActor(self.pop, n, make_generators([self.cfg.explorer.seed], self.device, 3 + self.update), self.device)
            envs = [make_env(self.cfg, n, split, rand_seed=10_000 + self.update)]
            stats = run_episodes(lambda obs: actor(obs)[0], envs, log.eval_episodes, self.device,
                                 seed=10_000 + self.update,
                                 on_step=lambda info: actor.episode_ended(info["group"], info["terminated"]))
            envs[0].close()
            self._log_heldout(split, stats.returns, stats.successes)
            results[split] = stats.returns.mean(1).tolist()
        return results

    def _payload(self, i: int) -> dict[str, Any]:
        return {
            **network_payload(self.spec, self.pop.member_state_dict(0)),
            "seed": self.cfg.explorer.seed,
            "optimizer": self._optimizer_slice(0),
            "rng": {"sample": self.actor.gens[0].get_state(), "minibatch": self.minibatch_gen.get_state()},
            "env": self.envs.get_state(),
            "next_done": self.next_done[0].cpu(),
            "recurrent_state": self.actor.state[0].cpu(),
            "knn": {k: v.cpu() for k, v in self.knn.state_dict().items()},
            "episode_intrinsic": self.ep_intrinsic.cpu(),
        }

    def _load(self, i: int, ckpt: dict[str, Any]) -> None:
        self.pop.load_member_state_dict(0, ckpt["model"])
        self._load_optimizer_slice(0, ckpt["optimizer"])
        self.actor.gens[0].set_state(ckpt["rng"]["sample"])
        self.minibatch_gen.set_state(ckpt["rng"]["minibatch"])
        obs, _ = self.envs.set_state(ckpt["env"])
        self.next_obs = torch.from_numpy(obs).to(self.device).unsqueeze(0)
        self.next_done[0] = ckpt["next_done"].to(self.device)
        self.actor.state[0] = ckpt["recurrent_state"].to(self.device)
        self.actor.first[0] = self.next_done[0]
        self.knn.load_state_dict({k: v.to(self.device) for k, v in ckpt["knn"].items()})
        self.ep_intrinsic = ckpt["episode_intrinsic"].to(self.device)

    def close(self) -> None:
        self.envs.close()
