"""The native PPO training loop for a population of reward agents (a single agent: M = 1).

One iteration, CleanRL-style, read top to bottom in ``train``: collect T steps from every member's
env batch (one batched forward for all members per step) -> GAE -> PPO epochs -> metrics (one host
sync) -> TensorBoard -> checkpoint. Members are independent learners that merely share kernels.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from agents.checkpoint import CheckpointError, checkpoint_steps, load_latest, network_payload, save_checkpoint
from agents.config import Config
from agents.memory import tune_allocator
from agents.episodes import run_episodes
from agents.networks import NetworkSpec, resolve_precision
from agents.population import Population
from agents.ppo import Batch, explained_variance, ppo_update
from agents.progress import Progress
from agents.rollout import Rollout, compute_gae
from agents.sampling import log_prob_entropy, make_generators, sample_actions
from envs.levels import get_split
from envs.procgen_vec import ProcgenVecEnv


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available here; use device=cpu or auto")
    return torch.device(name)


def network_spec(cfg: Config) -> NetworkSpec:
    return NetworkSpec(kind=cfg.network.kind, channels=tuple(cfg.network.channels), hidden=cfg.network.hidden)


def member_dir(cfg: Config, member: int) -> Path:
    return cfg.run_dir / f"member_{member}"


def make_env(cfg: Config, num_envs: int, split: str, rand_seed: int, **kw: Any) -> ProcgenVecEnv:
    return ProcgenVecEnv(
        cfg.env.game, num_envs, get_split(split, cfg.train_levels), cfg.env.distribution_mode,
        use_backgrounds=cfg.env.use_backgrounds, rand_seed=rand_seed,
        num_threads=cfg.env.num_threads, **kw,
    )


class EpisodeLog:
    """Finished-episode numbers of one iteration, gathered as arrays (never per-env Python lists)."""

    def __init__(self) -> None:
        self.values: dict[str, list[np.ndarray]] = {}
        self.agents: dict[str, list[np.ndarray]] = {}

    def add(self, name: str, agent: int, values: np.ndarray) -> None:
        self.values.setdefault(name, []).append(np.asarray(values, np.float64))
        self.agents.setdefault(name, []).append(np.full(len(values), agent))

    def means(self, name: str, agent: int | None = None) -> float | None:
        if name not in self.values:
            return None
        v, who = np.concatenate(self.values[name]), np.concatenate(self.agents[name])
        v = v if agent is None else v[who == agent]
        return float(v.mean()) if len(v) else None


class InjectedFault(RuntimeError):
    """The crash that ``debug.fail_at_update`` asks for."""


class Trainer:
    """The loop shared by every agent kind: collect -> learn -> log -> evaluate -> checkpoint.

    Subclasses set ``agent_dirs``, ``params``, ``opt``, ``steps_per_update``, ``num_updates`` and
    implement ``collect``, ``learn``, ``evaluate_heldout``, ``_payload``, ``_load`` and ``close``.
    """

    cfg: Config
    device: torch.device
    agent_dirs: list[Path]
    params: list[torch.Tensor]
    opt: torch.optim.Optimizer
    steps_per_update: int
    num_updates: int
    update: int = 0
    writers: list[SummaryWriter] = []
    summary: SummaryWriter | None = None
    last_heldout: dict[str, list[float]] = {}

    @property
    def global_step(self) -> int:
        """Env steps taken by each agent."""
        return self.update * self.steps_per_update

    def train(self, progress: Progress | None = None,
              on_iteration: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train until the step budget; Ctrl-C saves a checkpoint before re-raising.

        ``on_iteration`` receives, after every update, the agents' steps, SPS, mean episodic return,
        held-out returns and whether a checkpoint was written (Ray Tune reports these).
        """
        # purge_step: a run resumed from a checkpoint at step S hides the events that an
        # interrupted run logged after S, so curves have neither gaps nor repeated steps.
        purge = self.global_step + 1 if self.update else None
        self.writers = [SummaryWriter(d / "tb", purge_step=purge) for d in self.agent_dirs]
        # A population of several members also gets summary curves across its members.
        self.summary = self._summary_writer() if len(self.agent_dirs) > 1 else None
        log = self.cfg.logging
        try:
            while self.update < self.num_updates:
                start = time.perf_counter()
                episodes = self.collect()
                metrics = {k: v.cpu().numpy() for k, v in self.learn().items()}  # the one sync
                self.update += 1
                sps = self.steps_per_update * len(self.agent_dirs) / (time.perf_counter() - start)
                self._log_iteration(metrics, episodes, sps)
                if self.summary is not None:
                    self._log_population(metrics, episodes, sps)
                last = self.update == self.num_updates
                if log.eval_interval and (self.update % log.eval_interval == 0 or last):
                    self.last_heldout = self.evaluate_heldout()
                saved = self.update % log.checkpoint_interval == 0 or last
                if saved:
                    self.save()
                mean_return = episodes.means("charts/episodic_return")
                if progress is not None:
                    progress.advance(self.steps_per_update, sps, mean_return)
                if on_iteration is not None:
                    on_iteration({"steps": self.global_step, "sps": sps, "episodic_return": mean_return,
                                  "heldout": self.last_heldout, "checkpoint": saved, "done": last})
                self._maybe_inject_fault()
        except KeyboardInterrupt:
            self.save()
            raise
        finally:
            for w in self.writers + ([self.summary] if self.summary else []):
                w.close()
        return {"agents": [d.name for d in self.agent_dirs], "steps": self.global_step,
                "heldout": self.last_heldout}

    def _maybe_inject_fault(self) -> None:
        """Test-only (``debug.fail_at_update``): crash once, to exercise Ray Tune's restarts.

        A marker file makes the crash happen once per agent, not again after the restart.
        """
        at = self.cfg.debug.fail_at_update
        marker = self.agent_dirs[0] / ".fault_injected"
        if at and self.update == at and not marker.exists():
            marker.touch()
            raise InjectedFault(f"{self.agent_dirs[0].name}: injected fault after update {at}")

    def _log_iteration(self, metrics: dict[str, np.ndarray], episodes: EpisodeLog, sps: float) -> None:
        step = self.global_step
        for i, w in enumerate(self.writers):
            for k, v in metrics.items():  # a bare name is a loss term; others carry their section
                w.add_scalar(k if "/" in k else f"losses/{k}", float(v[i]), step)
            w.add_scalar("charts/SPS", sps / len(self.writers), step)
            w.add_scalar("charts/learning_rate", self.opt.param_groups[0]["lr"], step)
            for name in episodes.values:
                value = episodes.means(name, i)
                if value is not None:
                    w.add_scalar(name, value, step)

    def _summary_writer(self) -> SummaryWriter:
        names = [d.name.removeprefix("member_") for d in self.agent_dirs]
        return SummaryWriter(self.cfg.run_dir / f"population_{names[0]}-{names[-1]}" / "tb")

    def _log_population(self, metrics: dict[str, np.ndarray], episodes: EpisodeLog, sps: float) -> None:
        """Aggregate SPS and the spread of the members' curves (mean, min, max over members)."""
        w, step = self.summary, self.global_step
        w.add_scalar("charts/SPS", sps, step)
        per_member = [episodes.means("charts/episodic_return", i) for i in range(len(self.writers))]
        returns = np.array([r for r in per_member if r is not None])
        if len(returns):
            for name, fn in (("mean", np.mean), ("min", np.min), ("max", np.max)):
                w.add_scalar(f"population/episodic_return_{name}", float(fn(returns)), step)
        for k in ("value_loss", "approx_kl", "grad_norm"):
            if k in metrics:
                w.add_scalar(f"population/{k}_max", float(metrics[k].max()), step)

    @torch.no_grad()
    def _evaluate_feedforward(self, pop: Population, seeds: list[int]) -> dict[str, list[float]]:
        """Sampled-action returns of every member of ``pop`` on each configured split (same levels
        for all), logged as ``eval/<split>_return`` and ``eval/<split>_success``."""
        log, results = self.cfg.logging, {}
        n = min(self.cfg.env.num_envs, log.eval_episodes)
        gens = make_generators(seeds, self.device, salt=3 + self.update)
        act = lambda obs: sample_actions(pop(obs)[0], gens)
        for split in log.eval_splits:
            envs = [make_env(self.cfg, n, split, rand_seed=10_000 + self.update) for _ in seeds]
            stats = run_episodes(act, envs, log.eval_episodes, self.device, seed=10_000 + self.update)
            for env in envs:
                env.close()
            self._log_heldout(split, stats.returns, stats.successes)
            results[split] = stats.returns.mean(1).tolist()
        return results

    def _log_heldout(self, split: str, returns: np.ndarray, successes: np.ndarray) -> None:
        for i, w in enumerate(self.writers):
            w.add_scalar(f"eval/{split}_return", float(returns[i].mean()), self.global_step)
            w.add_scalar(f"eval/{split}_success", float(successes[i].mean()), self.global_step)

    def save(self) -> None:
        for i, d in enumerate(self.agent_dirs):
            heldout = {split: returns[i] for split, returns in self.last_heldout.items()}
            payload = {"agent": d.name, "update": self.update, "heldout": heldout, **self._payload(i)}
            save_checkpoint(d, self.global_step, payload)

    def restore(self) -> bool:
        """Resume every agent from the newest step at which all of them have a readable checkpoint."""
        common = set.intersection(*(set(checkpoint_steps(d)) for d in self.agent_dirs))
        for step in sorted(common, reverse=True):
            ckpts = [load_latest(d, "cpu", max_step=step) for d in self.agent_dirs]
            if all(c is not None and c["step"] == step for c in ckpts):
                for i, ckpt in enumerate(ckpts):
                    self._check_network(ckpt)
                    self._load(i, ckpt)
                self.update = ckpts[0]["update"]
                return True
        return False

    def _check_network(self, ckpt: dict[str, Any]) -> None:
        expected = network_payload(self.spec, {})["network"]
        if ckpt["network"] != expected:
            raise CheckpointError(
                f"checkpoint network {ckpt['network']} differs from the config's {expected}; "
                "use a new run name or restore the original network settings"
            )

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


class PopulationTrainer(Trainer):
    """Trains ensemble members ``members`` (indices into the config's seeds) together."""

    def __init__(self, cfg: Config, members: list[int], device: torch.device | None = None) -> None:
        self.cfg, self.members = cfg, list(members)
        self.device = device or resolve_device(cfg.device)
        tune_allocator()
        self.agent_dirs = [member_dir(cfg, m) for m in self.members]
        self.seeds = [cfg.member_seeds[m] for m in self.members]
        p, n, m = cfg.ppo, cfg.env.num_envs, len(self.members)
        self.spec = network_spec(cfg)
        self.pop = Population(self.spec, self.seeds, cfg.population.forward_mode).to(self.device)
        self.pop.set_bf16(resolve_precision(cfg.network.precision, self.device))
        self.params = self.pop.member_params()
        self.opt = torch.optim.Adam(self.params, lr=p.lr, eps=p.adam_eps)
        self.envs = [make_env(cfg, n, "train", s) for s in self.seeds]
        self.sample_gens = make_generators(self.seeds, self.device, salt=1)
        self.minibatch_gens = make_generators(self.seeds, "cpu", salt=2)
        # Member-major storage (M, T, N): flattening to (M, T*N) samples for PPO is then a free view.
        self.ro = Rollout.allocate(m, p.num_steps, n, self.device)
        self.host_obs = np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, self.seeds)])
        self.next_obs = torch.from_numpy(self.host_obs).to(self.device)
        self.next_done = torch.zeros(m, n, device=self.device)
        self.host_rewards = np.zeros((m, n), np.float32)
        self.host_dones = np.zeros((m, n), np.float32)
        # procgen releases the GIL inside its C++ step, so members' env batches step in parallel:
        # on a GPU machine stepping 10 batches one after another would dominate the rollout.
        self.env_threads = ThreadPoolExecutor(m) if m > 1 else _Serial()
        self.steps_per_update = p.num_steps * n
        self.num_updates = -(-p.total_steps // self.steps_per_update)

    @torch.no_grad()
    def collect(self) -> EpisodeLog:
        ro, episodes = self.ro, EpisodeLog()
        for t in range(self.cfg.ppo.num_steps):
            ro.obs[:, t] = self.next_obs
            ro.dones[:, t] = self.next_done
            logits, values = self.pop(self.next_obs)
            actions = sample_actions(logits, self.sample_gens)
            ro.actions[:, t], ro.values[:, t] = actions, values
            ro.logprobs[:, t] = log_prob_entropy(logits, actions)[0]
            self.host_actions = actions.cpu().numpy()
            infos = self.env_threads.map(self._step_member, range(len(self.envs)))
            for m, info in enumerate(infos):
                if "episode" in info:
                    mask = info["_episode"]
                    episodes.add("charts/episodic_return", m, info["episode"]["r"][mask])
                    episodes.add("charts/episodic_length", m, info["episode"]["l"][mask])
            ro.rewards[:, t] = torch.from_numpy(self.host_rewards).to(self.device)
            self.next_done = torch.from_numpy(self.host_dones).to(self.device)
            self.next_obs = torch.from_numpy(self.host_obs).to(self.device)
        return episodes

    def _step_member(self, m: int) -> dict[str, Any]:
        """Step member m's env batch, writing into the shared host buffers at row m."""
        self.host_obs[m], self.host_rewards[m], self.host_dones[m], _, info = self.envs[m].step(self.host_actions[m])
        return info

    def learn(self) -> dict[str, torch.Tensor]:
        p, ro = self.cfg.ppo, self.ro
        if p.anneal_lr:
            for group in self.opt.param_groups:
                group["lr"] = p.lr * (1.0 - self.update / self.num_updates)
        with torch.no_grad():
            next_value = self.pop(self.next_obs)[1]
        adv, ret = compute_gae(
            ro.rewards.transpose(0, 1), ro.values.transpose(0, 1), ro.dones.transpose(0, 1),
            next_value, self.next_done, p.gamma, p.gae_lambda,
        )
        flat = lambda x: x.flatten(1, 2)  # (M, T, N, ...) -> (M, T*N, ...)
        batch = Batch(flat(ro.obs), flat(ro.actions), flat(ro.logprobs), flat(ro.values),
                      flat(adv.transpose(0, 1)), flat(ret.transpose(0, 1)))
        metrics = ppo_update(self.pop, self.params, self.opt, batch, p, self.minibatch_gens)
        metrics["explained_variance"] = explained_variance(batch.values, batch.returns)
        return metrics

    def evaluate_heldout(self) -> dict[str, list[float]]:
        return self._evaluate_feedforward(self.pop, self.seeds)

    def _payload(self, i: int) -> dict[str, Any]:
        return {
            **network_payload(self.spec, self.pop.member_state_dict(i)),
            "seed": self.seeds[i],
            "optimizer": self._optimizer_slice(i),
            "rng": {"sample": self.sample_gens[i].get_state(), "minibatch": self.minibatch_gens[i].get_state()},
            "env": self.envs[i].get_state(),
            "next_done": self.next_done[i].cpu(),
        }

    def _load(self, i: int, ckpt: dict[str, Any]) -> None:
        self.pop.load_member_state_dict(i, ckpt["model"])
        self._load_optimizer_slice(i, ckpt["optimizer"])
        self.sample_gens[i].set_state(ckpt["rng"]["sample"])
        self.minibatch_gens[i].set_state(ckpt["rng"]["minibatch"])
        self.host_obs[i] = self.envs[i].set_state(ckpt["env"])
        self.next_obs = torch.from_numpy(self.host_obs).to(self.device)
        self.next_done[i] = ckpt["next_done"].to(self.device)

    def close(self) -> None:
        self.env_threads.shutdown()
        for env in self.envs:
            env.close()


class EngineTrainer(Trainer):
    """Base of the trainers that hand one member's PPO to another library (agents/sb3_engine.py,
    agents/rllib_engine.py). The library owns the network's copy it trains; ``exported_state``
    returns it as a plain ``ActorCritic`` state dict, which is what checkpoints store and what
    held-out evaluation plays, exactly as for a native member."""

    def __init__(self, cfg: Config, member: int, device: torch.device | None = None) -> None:
        self.cfg, self.member = cfg, member
        self.device = device or resolve_device(cfg.device)
        self.seed = cfg.member_seeds[member]
        self.spec = network_spec(cfg)
        self.bf16 = resolve_precision(cfg.network.precision, self.device)
        self.agent_dirs = [member_dir(cfg, member)]
        self.steps_per_update = cfg.ppo.num_steps * cfg.env.num_envs
        self.num_updates = -(-cfg.ppo.total_steps // self.steps_per_update)

    def exported_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluate_heldout(self) -> dict[str, list[float]]:
        pop = Population.from_state_dicts(self.spec, [self.exported_state()]).to(self.device)
        return self._evaluate_feedforward(pop.set_bf16(self.bf16), [self.seed])


class _Serial:
    """The ``map``/``shutdown`` of an executor, run in the calling thread (a population of one)."""

    def map(self, fn, items):
        return map(fn, items)

    def shutdown(self) -> None:
        pass
