"""How a member algorithm cuts a rollout into minibatches (agents/algorithm.py ``minimise``).

Both draw every member's order from that member's own generator, so a member's minibatches do not
depend on which other members share its population.

- ``SampleMinibatches``: CleanRL's random minibatches of single transitions, (M, b) samples.
- ``SequenceMinibatches``: minibatches of whole env sequences, (M, T, b): every step of b envs. A
  recurrent network replays them from the state the rollout began with (the explorer); the authors'
  PPO also feeds its feed-forward members this way.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator, Protocol

import torch


@dataclass
class Batch:
    """PPO's data per member: (M, ...) tensors whose next axes index samples, (T, N) or (b,).
    Subclasses (agents/idaac.py:PairedBatch) add per-sample fields that every selection carries."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    episode_starts: torch.Tensor  # 1 where the sample's frame starts an episode

    def flat(self) -> "Batch":
        """Every sample axis merged into one: (M, T, b, ...) -> (M, T*b, ...); a no-op on (M, b)."""
        axes = self.actions.dim() - 1
        if axes == 1:
            return self
        return type(self)(*(getattr(self, f.name).flatten(1, axes) for f in fields(self)))

    def select(self, idx: torch.Tensor) -> "Batch":
        """Per-member sample indices (M, b) into a flat batch -> a (M, b, ...) minibatch."""
        rows = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1)
        return type(self)(*(getattr(self, f.name)[rows, idx] for f in fields(self)))

    def select_envs(self, idx: torch.Tensor) -> "Batch":
        """Per-member env indices (M, b) into a (M, T, N) batch -> their whole sequences (M, T, b)."""
        return type(self)(*(torch.stack([getattr(self, f.name)[m][:, i] for m, i in enumerate(idx)])
                       for f in fields(self)))


@dataclass
class Minibatch:
    """What one optimiser step sees: ``batch`` in the strategy's shape, and for sequences the env
    indices (M, b) whose stored start states the recurrent forward begins from."""

    batch: Batch
    envs: torch.Tensor | None = None


class MinibatchStrategy(Protocol):
    def __call__(self, batch: Batch, epochs: int, num_minibatches: int) -> Iterator[Minibatch]: ...


class SampleMinibatches:
    """Each epoch, a fresh random permutation of each member's T*N samples, cut into equal parts."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    def __call__(self, batch: Batch, epochs: int, num_minibatches: int) -> Iterator[Minibatch]:
        flat = batch.flat()
        for idx in _permuted_parts(self.generators, flat.actions.shape[1], num_minibatches, epochs,
                                   flat.actions.device):
            yield Minibatch(flat.select(idx))


class SequenceMinibatches:
    """Each epoch, a fresh random permutation of each member's N envs, cut into equal sets of whole
    sequences (the config requires ``num_minibatches`` to divide N)."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    def __call__(self, batch: Batch, epochs: int, num_minibatches: int) -> Iterator[Minibatch]:
        for idx in _permuted_parts(self.generators, batch.actions.shape[2], num_minibatches, epochs,
                                   batch.actions.device):
            yield Minibatch(batch.select_envs(idx), idx)


# By ``MemberAlgorithm.minibatch_kind``: samples | sequences.
STRATEGIES: dict[str, type[SampleMinibatches] | type[SequenceMinibatches]] = {
    "samples": SampleMinibatches, "sequences": SequenceMinibatches}
MINIBATCH_SALT = 2  # the minibatch-order streams (agents/sampling.py make_generators; action sampling uses 1)


def _permuted_parts(generators: list[torch.Generator], units: int, parts: int, epochs: int,
                    device: torch.device) -> Iterator[torch.Tensor]:
    """Per epoch, one random permutation of ``units`` per member (its own generator), cut into
    ``parts`` equal index sets of shape (members, units // parts).

    The permutations are drawn on the CPU (the generators are checkpointed there) and reach a CUDA
    device from pinned memory without blocking: a copy from pageable memory would wait for the
    device to finish the previous epoch's work, once per epoch."""
    size = units // parts
    for _ in range(epochs):
        order = torch.stack([torch.randperm(units, generator=g) for g in generators])
        if device.type == "cuda":
            order = order.pin_memory().to(device, non_blocking=True)
        for start in range(0, units, size):
            yield order[:, start : start + size]
