"""Episodic k-nearest-neighbour state-entropy reward of the ExpGen exploration agent.

docs/expgen.md ("Explorer"): the explorer is trained on an intrinsic reward only, a k-NN estimate of the
entropy of the states visited within the current episode. A state is the fixed-camera frame, scaled
to [0, 1] and average-pooled 3x3 with stride 3 (64x64x3 -> 3x21x21 = 1323 numbers). Arriving at
o_{t+1} earns the k-th smallest L2 distance from phi(o_{t+1}) to the frames already stored for this
episode (at most the last ``buffer_size``, first frame included); with fewer than k stored frames,
the largest available distance. The step on which an episode ends earns 0 and the buffer restarts
from the new episode's first frame (ProcGen auto-resets, so that frame is what the step returned).

Everything is batched over environments: one ``cdist`` over a (num_envs, buffer_size, dim) ring
buffer, a masked ``topk`` and a ``gather`` per step, with no Python loop over envs or frames, so the
same code runs on CPU or GPU without host synchronisation.

Distance method: ``torch.cdist(..., compute_mode="donot_use_mm_for_euclid_dist")``. It sums squared
differences directly, so a repeated identical frame is at distance exactly 0 (the matrix-multiply
expansion ||a||^2 + ||b||^2 - 2ab leaves errors around 1e-2 at D=1323, which would pay the agent
for standing still). On a 2-core CPU at N=64, B=500, D=1323 it was also the fastest option measured
(about 17 ms, versus about 60 ms for ``(buffer - x).pow(2).sum(-1)`` and 130 ms for the mm mode).
"""
from __future__ import annotations

from typing import Dict, Union

import torch
import torch.nn.functional as F

Device = Union[str, torch.device]

_EXACT_CDIST = "donot_use_mm_for_euclid_dist"


def embedding_dim(pool: int = 3, size: int = 64, channels: int = 3) -> int:
    """Length of an ``embed_frames`` vector, so callers can size the buffer without a dummy frame."""
    _check_positive("pool", pool)
    return channels * (size // pool) ** 2


def embedding_scale(pool: int = 3) -> float:
    """Every ``embed_frames`` value is an integer (a sum of ``pool**2`` bytes) divided by this."""
    _check_positive("pool", pool)
    return 255.0 * pool * pool


def embed_frames(frames: torch.Tensor, pool: int = 3) -> torch.Tensor:
    """Map uint8 frames (N, H, W, 3) to the explorer's state vectors (N, 3 * (H//pool) * (W//pool)).

    Average-pools ``pool`` x ``pool`` with stride ``pool`` (the last rows/columns that do not fill a
    window are dropped: 64x64 -> 21x21 for pool=3), scaled to [0, 1], flattened channels-first.
    Pooling makes the distance insensitive to small sprite motions and cuts the buffer 9-fold.
    Computed as exact integer window sums divided by ``embedding_scale(pool)``, so a stored
    embedding is recovered bit for bit from its integer sums (``EpisodicKNNReward.state_dict``).
    """
    _check_positive("pool", pool)
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (N, H, W, 3), got {tuple(frames.shape)}")
    images = frames.permute(0, 3, 1, 2).to(torch.float32)
    sums = F.avg_pool2d(images, kernel_size=pool, stride=pool, divisor_override=1)  # exact in fp32
    return sums.flatten(1).div_(embedding_scale(pool))


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class EpisodicKNNReward:
    """Per-env ring buffers of this episode's embeddings and the k-NN distance reward they define.

    ``buffer`` (num_envs, buffer_size, dim) float32 holds the most recent ``buffer_size`` frames of
    each env's current episode; ``counts`` (num_envs,) how many slots are valid (capped at
    ``buffer_size``); ``positions`` (num_envs,) the slot the next frame is written to. Slots are
    filled from 0 after a restart, so the valid slots are always ``0 .. counts - 1``.

    ``scale``: when every embedding is an integer up to 65535 divided by ``scale`` (as
    ``embed_frames``' are, with ``embedding_scale(pool)``), ``state_dict`` stores the buffer as those
    integers in uint16: half the bytes of float32, and exact (``load_state_dict`` divides again).
    """

    def __init__(self, num_envs: int, dim: int, k: int = 3, buffer_size: int = 500,
                 device: Device = "cpu", scale: float | None = None) -> None:
        for name, value in (("num_envs", num_envs), ("dim", dim), ("k", k),
                            ("buffer_size", buffer_size)):
            _check_positive(name, value)
        self.num_envs, self.dim, self.k, self.buffer_size = num_envs, dim, k, buffer_size
        self.scale = scale
        self.device = torch.device(device)
        self.buffer = torch.zeros(num_envs, buffer_size, dim, dtype=torch.float32, device=self.device)
        self.counts = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        # Working tensors of ``step``, allocated once. ``step`` writes them and the state above in
        # place and allocates only cdist's (N, buffer_size) distances and the returned reward, so
        # a CUDA graph can replay it (training/explorer_learner.py) and no buffer is reallocated.
        kk = min(k, buffer_size)
        self._env_index = torch.arange(num_envs, device=self.device)
        self._slot_index = torch.arange(buffer_size, device=self.device)
        self._empty = torch.empty(num_envs, buffer_size, dtype=torch.bool, device=self.device)
        self._smallest = torch.empty(num_envs, kk, dtype=torch.float32, device=self.device)
        self._smallest_at = torch.empty(num_envs, kk, dtype=torch.long, device=self.device)
        self._pick = torch.empty(num_envs, 1, dtype=torch.long, device=self.device)
        self._slot = torch.empty(num_envs, dtype=torch.long, device=self.device)
        self._initialised = False

    def reset(self, first_embeddings: torch.Tensor) -> None:
        """Start every env's episode with ``first_embeddings`` (N, D) as its only stored frame."""
        first = self._as_embeddings(first_embeddings)
        self.buffer[:, 0] = first
        self.counts.fill_(1)
        self.positions.fill_(1 % self.buffer_size)
        self._initialised = True

    @torch.no_grad()
    def step(self, next_embeddings: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Reward (N,) float32 for arriving at ``next_embeddings`` (N, D); then store them.

        Envs with ``done`` get 0 and restart their buffer from ``next_embeddings`` (already the new
        episode's first frame under auto-reset); the others get the k-NN distance to their stored
        frames and append the new frame, overwriting the oldest one when the buffer is full.
        """
        if not self._initialised:
            raise RuntimeError("call reset() (or load_state_dict()) before step()")
        x = self._as_embeddings(next_embeddings)
        done = self._as_done(done)
        reward = self._knn_distance(x).masked_fill_(done, 0.0)
        self._store(x, done)
        return reward

    def _knn_distance(self, x: torch.Tensor) -> torch.Tensor:
        """k-th smallest distance to the valid stored frames, or the largest if fewer than k."""
        dist = torch.cdist(x.unsqueeze(1), self.buffer, compute_mode=_EXACT_CDIST).squeeze(1)
        torch.ge(self._slot_index, self.counts.unsqueeze(1), out=self._empty)  # slots not yet filled
        dist.masked_fill_(self._empty, float("inf"))
        kk = self._smallest.shape[1]
        torch.topk(dist, kk, dim=1, largest=False, sorted=True, out=(self._smallest, self._smallest_at))
        # With c < k valid slots, the c-th smallest (index c - 1) is the largest valid distance.
        torch.clamp(self.counts.unsqueeze(1), 1, kk, out=self._pick).sub_(1)
        return self._smallest.gather(1, self._pick).squeeze(1)

    def _store(self, x: torch.Tensor, done: torch.Tensor) -> None:
        """Write ``x`` at each env's slot; finished envs restart at slot 0 with a count of 1."""
        self._slot.copy_(self.positions).masked_fill_(done, 0)
        self.buffer[self._env_index, self._slot] = x
        self.counts.add_(1).clamp_(max=self.buffer_size).masked_fill_(done, 1)
        torch.add(self._slot, 1, out=self.positions).remainder_(self.buffer_size)

    def _as_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        if tuple(embeddings.shape) != (self.num_envs, self.dim):
            raise ValueError(f"embeddings must have shape ({self.num_envs}, {self.dim}), "
                             f"got {tuple(embeddings.shape)}")
        return embeddings.to(device=self.device, dtype=torch.float32)

    def _as_done(self, done: torch.Tensor) -> torch.Tensor:
        done = torch.as_tensor(done, device=self.device).to(torch.bool)
        if tuple(done.shape) != (self.num_envs,):
            raise ValueError(f"done must have shape ({self.num_envs},), got {tuple(done.shape)}")
        return done

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Copies of the buffers, so an explorer checkpoint resumes mid-episode with the same rewards.

        With a ``scale``, ``buffer`` is the uint16 integers behind the embeddings; a buffer whose
        integers do not restore it bit for bit is a misuse of ``scale`` and raises.
        """
        buffer = self.buffer.clone()
        if self.scale is not None:
            sums = torch.round(buffer * self.scale)
            if sums.max() > torch.iinfo(torch.uint16).max or not torch.equal(sums / self.scale, buffer):
                raise ValueError(f"the buffer does not hold integers divided by scale={self.scale}; "
                                 "build EpisodicKNNReward without scale to store it in float32")
            buffer = sums.to(torch.uint16)
        return {"buffer": buffer, "counts": self.counts.clone(), "positions": self.positions.clone()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore ``state_dict()`` output; shapes must match this instance's num_envs/buffer/dim.

        A float32 ``buffer`` is taken as is; a uint16 one is divided by ``scale``. Copied into this
        instance's tensors, which keep their addresses."""
        expected = {"buffer": self.buffer, "counts": self.counts, "positions": self.positions}
        missing = set(expected) - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}")
        for name, current in expected.items():
            if tuple(state[name].shape) != tuple(current.shape):
                raise ValueError(f"{name} has shape {tuple(state[name].shape)}, "
                                 f"expected {tuple(current.shape)}")
        buffer = state["buffer"].to(self.device)
        if buffer.dtype == torch.uint16:
            if self.scale is None:
                raise ValueError("state holds an integer buffer but this EpisodicKNNReward has no scale")
            buffer = buffer.to(torch.float32) / self.scale
        # In place: a captured step keeps reading these tensors.
        self.buffer.copy_(buffer)
        self.counts.copy_(state["counts"])
        self.positions.copy_(state["positions"])
        self._initialised = True
