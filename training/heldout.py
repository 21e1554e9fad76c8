"""Held-out curves during training: every agent of a job plays whole episodes on each configured
split (``logging.eval_splits``), with its own sampling stream, on the same levels as its peers.

``evaluate_heldout`` plays the agents as they are. During training, ``HeldoutEvaluator`` plays a
snapshot of their weights taken at update u, in a background thread while training goes on
(``logging.eval_overlap``), or inline; the numbers are the same either way, bit for bit: the
levels and sampling streams depend only on u, and the snapshot holds update u's weights whatever
training does to its own afterwards.
"""
from __future__ import annotations

import copy
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.acting import ActionPicker, CapturedStep, PopulationActor
from agents.population import Population
from agents.sampling import make_generators
from core.config import Config
from core.runtime import Runtime
from envs.fingerprints import unseen_levels
from envs.make import make_env
from envs.procgen_vec import OBS_SHAPE
from evaluation.episodes import run_episodes

HELDOUT_SALT = 3  # update u samples from the streams salted 3 + u (training's sampling uses 1, minibatches 2)


@dataclass
class Heldout:
    returns: np.ndarray  # (agents, episodes)
    successes: np.ndarray  # (agents, episodes)


class HeldoutActing:
    """Held-out acting: member m of ``pop`` acts in env batch m of ``num_envs`` envs.

    Eager, or ``captured``: the acting call (forward, GRU state update and sampling) is one CUDA
    graph (agents/acting.py:CapturedStep) on persistent inputs (a frame buffer, the GRU state, the
    episode-start flags and the sampling noise), replayed every step; the same numbers as eager.
    The sampling noise is drawn eagerly before each replay from the members' generators, exactly
    as the eager call draws it. Raises ValueError for ``captured`` on a device other than CUDA.
    """

    def __init__(self, pop: Population, seeds: list[int], num_envs: int, device: torch.device,
                 captured: bool = False) -> None:
        self.seeds, self.num_envs, self.device = list(seeds), num_envs, device
        self.picker = ActionPicker(self.seeds, device, salt=HELDOUT_SALT)
        self.actor = PopulationActor(pop, num_envs, self.picker, device)
        self.step: CapturedStep | None = None
        if captured:
            self.obs = torch.zeros((pop.size, num_envs, *OBS_SHAPE), dtype=torch.uint8, device=device)
            self.picker.draw(pop.size, num_envs, pop.spec.num_actions)  # the noise buffer the graph reads
            mutated = () if self.actor.state is None else (self.actor.state, self.actor.episode_starts)
            self.step = CapturedStep(lambda: (self.actor(self.obs, slice(None))[0],), device, mutated)

    def capture(self) -> None:
        """Capture the graph now (a no-op when eager or already captured). Capture needs no other
        thread to use the device meanwhile (CUDA's global capture mode), so the evaluator captures
        on the training thread, before its evaluation thread starts."""
        if self.step is not None and self.step.graph is None:
            with torch.no_grad():
                self.step.capture()

    def begin(self, update: int) -> None:
        """Before a split: the sampling streams of update ``update`` from their start, zero
        recurrent states, every env starting an episode."""
        self.picker.generators = make_generators(self.seeds, self.device, HELDOUT_SALT + update)
        if self.actor.state is not None:
            self.actor.state.zero_()
        self.actor.episode_starts.fill_(1.0)

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 frames (M, N, 64, 64, 3) on the device -> actions (M, N); captured: the graph's
        own buffer, overwritten by the next call."""
        if self.step is None:
            return self.actor(obs)[0]
        self.picker.draw(*self.picker.noise.shape)
        self.obs.copy_(obs)
        return self.step()[0]

    def episode_ended(self, ends: np.ndarray) -> None:
        """(M, N) episode ends of a step: those envs start their next episode from a zero state."""
        self.actor.episode_ended(slice(None), ends)


def logged_at(tb: Path, tag: str, step: int) -> bool:
    """Whether TensorBoard shows a point of ``tag`` at ``step`` in the event folder ``tb`` (events
    that a restart purged do not count)."""
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    return tag in acc.Tags()["scalars"] and any(e.step == step for e in acc.Scalars(tag))


def heldout_envs(cfg: Config) -> int:
    """Envs per agent for held-out episodes: no more than the episodes they play."""
    return min(cfg.env.num_envs, cfg.logging.eval_episodes)


@torch.no_grad()
def evaluate_heldout(cfg: Config, pop: Population, seeds: list[int], update: int,
                     device: torch.device) -> dict[str, Heldout]:
    """``logging.eval_episodes`` episodes per agent per split, collected with per-env quotas.

    Levels and sampling streams depend on the update number only, so curves are comparable across
    agents and reproducible across resumes; each split starts from fresh streams and states.
    """
    return play_heldout(cfg, HeldoutActing(pop, seeds, heldout_envs(cfg), device), update)


@torch.no_grad()
def play_heldout(cfg: Config, acting: HeldoutActing, update: int) -> dict[str, Heldout]:
    """``evaluate_heldout`` with ``acting`` (eager or captured) playing the agents."""
    log, results = cfg.logging, {}
    n = acting.num_envs
    seed = 10_000 + update
    for split in log.eval_splits:
        # eval.unseen: episodes on a level equal to a training level are not counted (envs/levels.py).
        skip = unseen_levels(cfg.env, split, cfg.eval.unseen, num_envs=n, seed=seed, episodes=log.eval_episodes)
        acting.begin(update)
        envs = [make_env(cfg.env, n, split, rand_seed=seed) for _ in acting.seeds]
        try:
            # Every agent's batch steps in a worker thread; the episode ends of all agents reset
            # their recurrent state with one copy per step.
            stats = run_episodes(acting, envs, log.eval_episodes, acting.device, seed=seed,
                                 on_steps=acting.episode_ended, skip_levels=skip.excluded)
        finally:
            for env in envs:
                env.close()
        results[split] = Heldout(stats.returns, stats.successes)
    return results


class HeldoutEvaluator:
    """Held-out evaluation during training, on a snapshot of the agents' weights.

    ``submit`` copies the weights of update u into a population the evaluator owns (allocated at
    the first call, reused after), then evaluates it in a background thread (``overlap``) or
    inline; ``finished`` hands back the results, oldest first. At most one evaluation is in flight:
    the caller waits for it (``finished(wait=True)``) before submitting the next.

    On CUDA the evaluation thread runs on its own stream, so its kernels overlap training's. The
    snapshot is copied on the training thread's stream, after the previous evaluation's kernels
    (which read the snapshot) and before an event that the evaluation stream waits for: training
    may then update its own weights at once. With ``runtime.cudagraphs`` the acting call is a
    CUDA graph captured on the snapshot at the first ``submit``, on the training thread.
    """

    def __init__(self, cfg: Config, runtime: Runtime, overlap: bool) -> None:
        self.cfg, self.runtime, self.overlap = cfg, runtime, overlap
        self.snapshot: Population | None = None
        self.acting: HeldoutActing | None = None
        cuda = runtime.device.type == "cuda"
        self.stream = torch.cuda.Stream(runtime.device) if overlap and cuda else None
        self.running: tuple[int, Future] | None = None  # (update, its results to come)
        self.done: list[tuple[int, dict[str, Heldout]]] = []

    @property
    def in_flight(self) -> int | None:
        """The update whose background evaluation was submitted and not yet handed back by
        ``finished``, None when there is none."""
        return None if self.running is None else self.running[0]

    @property
    def busy(self) -> bool:
        """Whether the evaluation in flight is still playing."""
        return self.running is not None and not self.running[1].done()

    def submit(self, pop: Population, seeds: list[int], update: int, background: bool = True) -> None:
        """Evaluate ``pop`` as it is now, as update ``update`` (``background`` False, or
        ``overlap`` off: inline, finished on return).

        Raises RuntimeError while another evaluation is in flight (``finished(wait=True)`` first).
        """
        if self.running is not None:
            raise RuntimeError(f"the held-out evaluation of update {self.running[0]} is still in flight")
        self.take_snapshot(pop, seeds)
        if not (self.overlap and background):
            self.done.append((update, play_heldout(self.cfg, self.acting, update)))
            return
        ready = None
        if self.stream is not None:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.runtime.device))
        future: Future = Future()
        # torch's intra-op thread count is per thread: a new thread would use every core.
        threads = torch.get_num_threads()
        threading.Thread(target=self._run, args=(update, ready, future, threads), name="heldout-eval",
                         daemon=True).start()
        self.running = (update, future)

    def take_snapshot(self, pop: Population, seeds: list[int]) -> None:
        device = self.runtime.device
        with torch.no_grad():
            if self.stream is not None:  # the previous evaluation's reads of the snapshot come first
                torch.cuda.current_stream(device).wait_stream(self.stream)
            if self.snapshot is None:
                self.snapshot = copy.deepcopy(pop)
                for p in self.snapshot.parameters():
                    p.grad = None
                    p.requires_grad_(False)
                self.acting = HeldoutActing(self.snapshot, seeds, heldout_envs(self.cfg), device,
                                            captured=self.runtime.cudagraphs)
            else:
                for dst, src in zip(self.snapshot.state_dict().values(), pop.state_dict().values(), strict=True):
                    dst.copy_(src)
            self.acting.capture()

    def _run(self, update: int, ready: torch.cuda.Event | None, future: Future, threads: int) -> None:
        """The evaluation thread, with the training thread's ``threads``: its results, or the
        exception it raised, go to ``future``."""
        try:
            torch.set_num_threads(threads)
            if self.stream is None:
                result = play_heldout(self.cfg, self.acting, update)
            else:
                with torch.cuda.device(self.runtime.device), torch.cuda.stream(self.stream):
                    self.stream.wait_event(ready)
                    result = play_heldout(self.cfg, self.acting, update)
            future.set_result(result)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread, which raises it
            future.set_exception(e)

    def finished(self, wait: bool = False) -> list[tuple[int, dict[str, Heldout]]]:
        """The evaluations finished since the last call, oldest first, as (update, results per
        split); ``wait``: the one in flight too, once it has finished.

        Raises the exception that an evaluation raised in its thread.
        """
        if self.running is not None and (wait or self.running[1].done()):
            update, future = self.running
            self.running = None
            self.done.append((update, future.result()))
        done, self.done = self.done, []
        return done
