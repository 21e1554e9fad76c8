"""Acting with a population step by step: training rollouts, held-out curves and eval.py all use it.

A feed-forward population maps frames to actions directly. A recurrent one (the explorer) carries
its GRU state from step to step and zeroes it where an episode begins; ProcGen resets an env in the
same step that ends its episode, so the frame returned with ``terminated`` is already a first frame.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from agents.population import Population
from agents.sampling import gumbel_noise, make_generators


class ActionPicker:
    """Sampled actions, one generator per member (streams independent of each other), or argmax."""

    def __init__(self, seeds: list[int], device: torch.device, salt: int, sample: bool = True) -> None:
        self.sample, self.device = sample, device
        self.generators = make_generators(seeds, device, salt) if sample else []
        self.noise: torch.Tensor | None = None

    def draw(self, members: int, num_envs: int, num_actions: int) -> None:
        """Draw one step's sampling noise for every env at once. A rollout that then acts on slices
        of the envs (``env.pipeline=overlap``) samples exactly what acting on all envs would."""
        if self.sample:
            noise = gumbel_noise(self.generators[:members], num_envs, num_actions, self.device)
            if self.noise is not None and self.noise.shape == noise.shape:
                self.noise.copy_(noise)  # in place: a captured acting step (CapturedStep) reads this buffer
            else:
                self.noise = noise

    def pick(self, logits: torch.Tensor, envs: slice = slice(None)) -> torch.Tensor:
        """(M, n, A) logits of the envs ``envs`` -> (M, n) actions, with the noise of ``draw``."""
        return (logits + self.noise[:, envs]).argmax(-1) if self.sample else logits.argmax(-1)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(M, N, A) logits -> (M, N) actions: ``draw`` and ``pick`` for all envs."""
        self.draw(*logits.shape)
        return self.pick(logits)


class PopulationActor:
    """Steps ``pop`` over (M, N) env batches, member m acting in batch m."""

    def __init__(self, pop: Population, num_envs: int, pick: ActionPicker, device: torch.device) -> None:
        self.pop, self.pick = pop, pick
        self.recurrent = pop.spec.recurrent
        self.state = torch.zeros(pop.size, num_envs, pop.spec.hidden, device=device) if self.recurrent else None
        self.episode_starts = torch.ones(pop.size, num_envs, device=device)  # reset frames start episodes

    def __call__(self, obs: torch.Tensor, envs: slice | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """obs (M, N, 64, 64, 3) -> actions (M, N), logits (M, N, A), values (M, N).

        ``envs``: ``obs`` are the frames of that slice of the envs only, sampled with the noise the
        picker drew for the step (``ActionPicker.draw``); None: all envs, noise drawn here.
        """
        at = slice(None) if envs is None else envs
        if self.recurrent:
            logits, values, state = self.pop(obs.unsqueeze(1), self.state[:, at], self.episode_starts[:, at].unsqueeze(1))
            logits, values = logits[:, 0], values[:, 0]
            self.state[:, at] = state
            self.episode_starts[:, at] = 0.0
        else:
            logits, values = self.pop(obs)
        actions = self.pick(logits) if envs is None else self.pick.pick(logits, envs)
        return actions, logits, values

    def episode_ended(self, member: int, episode_starts: np.ndarray | torch.Tensor, envs: slice = slice(None)) -> None:
        """Member m's envs (of the slice ``envs``) whose next frame starts an episode (``episode_starts``
        1: the step just ended one) start it from a zero state.

        A tensor (on the device, or in pinned host memory) is copied without blocking the host: the
        learners pass their device copy of the step's episode ends, so acting needs no host sync
        here. A numpy array (evaluation's envs) is one blocking copy from pageable memory.
        """
        if torch.is_tensor(episode_starts):
            self.episode_starts[member, envs].copy_(episode_starts, non_blocking=True)
        else:
            self.episode_starts[member, envs] = torch.as_tensor(episode_starts, dtype=torch.float32,
                                                                device=self.episode_starts.device)


class CapturedStep:
    """``fn()`` replayed as one CUDA graph: the ~100 kernel launches of a population's acting call
    (~80 for the explorer) become one, and so do the ~25 of the explorer's kNN reward step
    (training/explorer_learner.py). Why: at 16-320 envs per member the host, launching kernels,
    not the GPU bounds acting (LeanRL measured 1.83x for compile plus CUDA graphs on a small PPO).

    ``fn`` takes no argument, reads and writes only tensors that outlive it (parameters updated in
    place by the optimiser, persistent buffers such as the next frames, the GRU state and the
    sampling noise of ``ActionPicker.draw``) and returns a tuple of tensors. The graph replays on
    those same addresses: the outputs are the graph's own buffers, overwritten by the next call, so
    the caller copies what it keeps (the rollout does, into its storage).

    Capture runs ``fn`` a few times first on a side stream (CUDA's rule for warming up lazy
    initialisation and cuDNN's autotuner); ``mutated`` are the persistent tensors ``fn`` writes
    (the GRU state, the episode-start flags): they are restored after those runs, so capturing
    leaves no trace and the first replay computes what the eager call would have.

    Raises ValueError on a device other than CUDA (graphs are CUDA's).
    """

    WARMUP = 3

    def __init__(self, fn: Callable[[], tuple[torch.Tensor, ...]], device: torch.device,
                 mutated: tuple[torch.Tensor, ...] = ()) -> None:
        if device.type != "cuda":
            raise ValueError(f"a captured acting step (network.acting=cudagraph) needs a CUDA device, not {device}; "
                             "use network.acting=eager")
        self.fn, self.device, self.mutated = fn, device, mutated
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, ...] = ()

    def capture(self) -> None:
        saved = [t.clone() for t in self.mutated]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                self.fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        for t, s in zip(self.mutated, saved):
            t.copy_(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = tuple(self.fn())

    def __call__(self) -> tuple[torch.Tensor, ...]:
        if self.graph is None:
            self.capture()
        self.graph.replay()
        return self.outputs
