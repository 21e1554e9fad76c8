"""What the native learners share: a population of stacked networks trained by a member algorithm
(agents/algorithm.py: PPO for the explorer, ``member.algo`` for the reward agents), and the rollout
loop that fills it. ``PopulationLearner`` (reward agents) and ``ExplorerLearner`` differ only in how
their envs step and what a step stores (what the algorithm asks for), the discount and GAE, and the
forward over a minibatch.

The rollout pipeline (``env.pipeline``). Each env batch is held as one or two slices of its envs
(envs/split_batch.py). At every step, each slice in turn is taken back from the CPU (its frames
copied to the device), inferred, and handed back to the CPU to step with its actions. With two
slices, the CPU steps one slice while the device infers the other, and the only host sync per step
and slice is reading the actions the envs need. The slices play exactly the games of the whole
batch and a step's sampling noise is drawn for all envs at once, so both schedules take the same
actions and see the same frames and rewards (tests/test_pipeline.py).
"""
from __future__ import annotations

import logging
from abc import abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import torch

from agents.acting import ActionPicker, CapturedStep, PopulationActor
from agents.algorithm import MemberAlgorithm, UpdateInput
from agents.minibatches import Batch, Minibatch, MinibatchStrategy
from agents.networks import PolicyOutput
from agents.population import Population
from agents.ppo import LRSchedule, explained_variance
from agents.rollout import Rollout, compute_gae
from agents.sampling import log_prob_entropy, restore_generator
from core.checkpoint import CheckpointError
from core.config import Config
from core.memory import tune_allocator
from core.runtime import Runtime
from core.sections import EnvConfig
from envs.procgen_vec import OBS_SHAPE
from training.learner import EpisodeLog, IterationResult, Learner, network_payload
from training.phases import PhaseClock

log = logging.getLogger("expgen")
SAMPLE_SALT = 1  # the action-sampling streams (minibatch order uses 2)


def rollout_slices(env: EnvConfig) -> int:
    """How many slices each env batch is stepped in: 2 overlaps env stepping with inference.

    ``auto`` is serial (measured: EnvConfig.pipeline's comment).
    """
    overlap = env.pipeline == "overlap"
    return 2 if overlap and env.num_envs % 2 == 0 else 1


class NativeLearner(Learner):
    """Subclasses build their envs (each batch split into ``self.slices``), and implement
    ``send``/``receive`` (one slice's env step), ``forward`` and ``next_value``."""

    gamma: float
    gae_lambda: float
    env_workers: int  # slices in flight at once x env batches per slice; 1 = step inline

    def __init__(self, cfg: Config, algorithm: MemberAlgorithm, seeds: list[int], runtime: Runtime,
                 num_updates: int) -> None:
        """``algorithm`` (built on ``runtime.device`` from ``seeds``) owns the networks, the
        optimisers and the update; this learner collects its rollouts (``ppo.num_steps`` steps of
        ``env.num_envs`` envs) and computes GAE."""
        tune_allocator()
        self.cfg, self.seeds, self.runtime = cfg, list(seeds), runtime
        self.algorithm, self.spec = algorithm, algorithm.pop.spec
        self.settings_section = algorithm.section
        self.minibatches: MinibatchStrategy = algorithm.minibatches  # its generators are checkpointed
        self.device = runtime.device
        n = cfg.env.num_envs
        self.pop = algorithm.pop
        self.actor = PopulationActor(self.pop, n, ActionPicker(self.seeds, self.device, salt=SAMPLE_SALT), self.device)
        self.ro = Rollout.allocate(len(self.seeds), cfg.ppo.num_steps, n, self.device, algorithm.needs_frame_labels)
        self.steps_per_update = cfg.steps_per_update
        self.num_updates = num_updates
        self.lr_schedule = LRSchedule(algorithm.lr, algorithm.anneal_lr, num_updates)
        parts = rollout_slices(cfg.env)
        self.slices = [slice(i * n // parts, (i + 1) * n // parts) for i in range(parts)]
        self.next_obs = torch.zeros((len(self.seeds), n) + OBS_SHAPE, dtype=torch.uint8, device=self.device)
        self.next_episode_starts = torch.zeros(len(self.seeds), n, device=self.device)
        self.clock = PhaseClock(self.device)
        # Host buffers the envs write into: pinned on CUDA, so frames go to the device without
        # blocking the host (the slice's next action read orders that copy before the next write).
        self.pinned = self.device.type == "cuda"
        self._threads: ThreadPoolExecutor | None = None
        self._in_flight: list[list[Future] | None] = [None] * parts
        self._acting: dict[tuple[int, int], Callable[[], tuple[torch.Tensor, ...]]] = {}

    @property
    def params(self) -> list[torch.Tensor]:
        """Every stacked (M, ...) parameter of the algorithm's networks."""
        return self.algorithm.params

    def host_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
        return torch.zeros(shape, dtype=dtype, pin_memory=self.pinned).numpy()

    def to_device(self, host: np.ndarray, out: torch.Tensor) -> None:
        """Copy host rows into ``out`` (a view of a device tensor) without a host sync."""
        with self.clock("transfer"):
            out.copy_(torch.from_numpy(host), non_blocking=self.pinned)

    def run_env_tasks(self, part: int, tasks: list[Callable[[], Any]]) -> None:
        """Start stepping slice ``part``: in worker threads (procgen releases the GIL inside its
        C++ step), or inline when only one batch steps at a time."""
        if self.env_workers == 1:
            done: list[Future] = []
            for task in tasks:
                f: Future = Future()
                with self.clock("env"):
                    f.set_result(task())
                done.append(f)
            self._in_flight[part] = done
            return
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.env_workers)
        self._in_flight[part] = [self._threads.submit(task) for task in tasks]

    def env_results(self, part: int) -> list[Any]:
        """Wait for slice ``part``'s env step; its tasks' results in order."""
        with self.clock("env"):
            results = [f.result() for f in self._in_flight[part]]
        self._in_flight[part] = None
        return results

    def iterate(self) -> IterationResult:
        lr = self.lr_schedule(self.update)
        self.algorithm.set_lr(lr)
        episodes = self.collect()
        metrics = {k: v.cpu().numpy() for k, v in self.learn().items()}  # the one host sync
        self.update += 1
        return IterationResult(episodes, metrics, lr)

    @torch.no_grad()
    def collect(self) -> EpisodeLog:
        """Fill ``self.ro`` with one rollout and leave ``next_obs``/``next_episode_starts`` after it (the
        rollout pipeline: module docstring)."""
        self.episodes = EpisodeLog()
        self.begin_rollout()
        members, n = self.next_episode_starts.shape
        for t in range(self.ro.steps):
            with self.clock("inference"):
                self.actor.pick.draw(members, n, self.spec.num_actions)
            for part, envs in enumerate(self.slices):
                if t:
                    self.receive(part, t - 1)
                self.send(part, self.act(t, envs))
        for part in range(len(self.slices)):
            self.receive(part, self.ro.steps - 1)
        return self.episodes

    def begin_rollout(self) -> None:
        """Before the rollout's first step (the explorer keeps its GRU state here)."""

    def act(self, t: int, envs: slice) -> torch.Tensor:
        """Step t of the rollout for the envs ``envs``: store their current frames, act, store
        what PPO needs; the actions, on the host (the envs need them: the one sync)."""
        with self.clock("inference"):
            ro = self.ro
            ro.obs[:, t, envs] = self.next_obs[:, envs]
            ro.episode_starts[:, t, envs] = self.next_episode_starts[:, envs]
            actions, values, logprobs = self.acting_step(envs)()
            ro.actions[:, t, envs], ro.values[:, t, envs], ro.logprobs[:, t, envs] = actions, values, logprobs
            self.store_step(t, envs)
            return actions.cpu()

    def store_step(self, t: int, envs: slice) -> None:
        """What else step t of the envs ``envs`` stores (reward members: their frames' labels)."""

    def acting_step(self, envs: slice) -> Callable[[], tuple[torch.Tensor, ...]]:
        """The acting call of the slice ``envs`` on its persistent inputs (the slice's frames, the
        actor's state and the step's noise): actions, values and logprobs, (M, slice size) each.
        With ``network.acting`` captured (``Runtime.cudagraphs``) it is a CUDA graph (one per slice),
        else eager."""
        key = (envs.start, envs.stop)
        if key not in self._acting:
            def step() -> tuple[torch.Tensor, ...]:
                actions, logits, values = self.actor(self.next_obs[:, envs], envs)
                return actions, values, log_prob_entropy(logits, actions)[0]

            if self.runtime.cudagraphs:
                mutated = () if self.actor.state is None else (self.actor.state, self.actor.episode_starts)
                self._acting[key] = CapturedStep(step, self.device, mutated)
            else:
                self._acting[key] = step
        return self._acting[key]

    @abstractmethod
    def send(self, part: int, actions: torch.Tensor) -> None:
        """Start stepping slice ``part``'s envs with ``actions`` (M, slice size) (``run_env_tasks``)."""

    @abstractmethod
    def receive(self, part: int, t: int) -> None:
        """Take slice ``part``'s step t back (``env_results``): rewards into the rollout, episode
        numbers into ``self.episodes``, frames and episode starts into ``next_obs``/``next_episode_starts``."""

    @abstractmethod
    def forward(self, mb: Minibatch) -> PolicyOutput:
        """Flat (M, b, A) logits and (M, b) values of a minibatch under the current parameters."""

    @abstractmethod
    def next_value(self) -> torch.Tensor:
        """(M, N) value of the observation after the rollout."""

    def learn(self) -> dict[str, torch.Tensor]:
        with self.clock("update"):
            return self._learn()

    def _learn(self) -> dict[str, torch.Tensor]:
        ro = self.ro
        with torch.no_grad():
            next_value = self.next_value()
        adv, ret = compute_gae(rewards=ro.rewards, values=ro.values, episode_starts=ro.episode_starts,
                               next_value=next_value, next_episode_starts=self.next_episode_starts,
                               gamma=self.gamma, gae_lambda=self.gae_lambda)
        batch = Batch(obs=ro.obs, actions=ro.actions, logprobs=ro.logprobs, values=ro.values, advantages=adv,
                      returns=ret, episode_starts=ro.episode_starts)
        metrics = self.algorithm.update(self.update_input(batch))
        metrics["explained_variance"] = explained_variance(ro.values, ret)
        return metrics

    def update_input(self, batch: Batch) -> UpdateInput:
        """The rollout as the algorithm's update takes it (reward members add frame labels)."""
        return UpdateInput(batch, self.forward, self.update, self.next_obs)

    def acting_population(self) -> tuple[Population, list[int]]:
        return self.pop, self.seeds

    def finite_parameters(self) -> np.ndarray:
        with torch.no_grad():  # parameters are stacked on the member axis: one host read for all
            return torch.stack([p.isfinite().flatten(1).all(1) for p in self.params]).all(0).cpu().numpy()

    def state(self, i: int) -> dict[str, Any]:
        return {
            **network_payload(self.spec, self.pop.member_state_dict(i)),
            "seed": self.seeds[i],
            "algo": self.algorithm.name,
            "optimizer": self.algorithm.optimizer_state(i),
            **({"algo_state": extra} if (extra := self.algorithm.extra_state(i)) else {}),
            # Sampling draws on the job's device, minibatch order always on the CPU.
            "rng": {"sample": self.actor.pick.generators[i].get_state(), "sample_device": self.device.type,
                    "minibatch": self.minibatches.generators[i].get_state()},
            "next_episode_starts": self.next_episode_starts[i].cpu(),
        }

    def load_state(self, i: int, ckpt: dict[str, Any]) -> None:
        self.pop.load_member_state_dict(i, ckpt["model"])
        saved_algo = ckpt.get("algo", "ppo")  # checkpoints before member algorithms were PPO's
        if saved_algo != self.algorithm.name:
            raise CheckpointError(f"{self.agents[i].name}: its checkpoint was trained by member.algo={saved_algo}, "
                                  f"the config says member.algo={self.algorithm.name}; use a new run name "
                                  "or restore the original algorithm")
        self.algorithm.load_optimizer_state(i, ckpt["optimizer"])
        self.algorithm.load_extra_state(i, ckpt.get("algo_state", {}))
        rng = ckpt["rng"]
        if not restore_generator(self.actor.pick.generators[i], rng["sample"], self.seeds[i], SAMPLE_SALT, ckpt["update"]):
            log.warning("%s: the checkpoint's action-sampling stream was saved on %s and cannot continue on "
                        "%s; resuming with a new stream derived from the seed and update %d (the run no "
                        "longer replays an uninterrupted one exactly)", self.agents[i].name,
                        rng.get("sample_device", "another device type"), self.device.type, ckpt["update"])
        self.minibatches.generators[i].set_state(ckpt["rng"]["minibatch"])
        # "next_done": the key's name in checkpoints written before the flag had one name everywhere.
        starts = ckpt["next_episode_starts"] if "next_episode_starts" in ckpt else ckpt["next_done"]
        self.next_episode_starts[i] = starts.to(self.device)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown()
