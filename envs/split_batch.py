"""One batch of N games held as K procgen batches over consecutive env slices.

Why: a rollout can then step one slice on the CPU while the device infers the next slice's actions
(``env.pipeline=overlap``, training/native_learner.py). Splitting must not change what a run
computes, so the slices play exactly the games of the single batch: the batch of N is made with the
run's seed as always, and each env's full procgen state (level, positions, random generators,
episode counters) is moved into its slice's batch. Stepping the slices with the same actions then
gives the same frames, rewards and episode ends as stepping the batch of N, and ``get_state`` has
the format of one batch of N, so checkpoints do not depend on K.

Resets follow gymnasium's seeding contract as ``ProcgenVecEnv.reset`` does: ``reset(seed)`` seeds
``np_random`` and ``reset()`` builds the batch of N with a seed drawn from it, so for any K the
sequence of batches after ``reset(s)`` is the one a single ``ProcgenVecEnv`` of N plays.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from envs.procgen_vec import ProcgenVecEnv, ResetSeeding


class SplitBatch(ResetSeeding):
    """``make(num_envs)`` builds a procgen batch; ``parts`` batches of ``num_envs // parts`` envs."""

    def __init__(self, make: Callable[[int], ProcgenVecEnv], num_envs: int, parts: int = 1) -> None:
        if parts < 1 or num_envs % parts:
            raise ValueError(f"cannot split {num_envs} envs into {parts} equal parts")
        self.num_envs = num_envs
        size = num_envs // parts
        self.slices = [slice(p * size, (p + 1) * size) for p in range(parts)]
        self._make = make
        whole = make(num_envs)
        if parts == 1:
            self.parts = [whole]
            return
        self.parts = [make(size) for _ in range(parts)]
        self._distribute(whole.get_state())
        whole.close()

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Every env on a new episode of the batch of N seeded with ``seed`` (``None``: the next seed
        of ``np_random``, which a seeded reset seeds); the (N, ...) frames."""
        seed = self._reset_rand_seed(seed)
        if len(self.parts) == 1:
            return self.parts[0].reset(seed=seed)[0]
        whole = self._make(self.num_envs)
        whole.reset(seed=seed)
        frames = self._distribute(whole.get_state())
        whole.close()
        return frames

    def step(self, part: int, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step slice ``part`` with its actions -> frames, rewards, terminated, info of that slice."""
        obs, reward, term, _, info = self.parts[part].step(actions)
        return obs, reward, term, info

    def level_seeds(self) -> np.ndarray:
        """The level each of the N envs is playing now."""
        return np.concatenate([p.level_seeds() for p in self.parts])

    def get_state(self) -> dict[str, Any]:
        """The state of all N envs, in the format of one ``ProcgenVecEnv`` of N envs."""
        states = [p.get_state() for p in self.parts]
        return {"procgen": [s for st in states for s in st["procgen"]],
                "ep_return": np.concatenate([st["ep_return"] for st in states]),
                "ep_length": np.concatenate([st["ep_length"] for st in states])}

    def set_state(self, state: dict[str, Any]) -> np.ndarray:
        """Restore a state of N envs (``get_state``'s or a single batch's); the (N, ...) frames."""
        if len(state["procgen"]) != self.num_envs:
            raise ValueError(f"saved env state has {len(state['procgen'])} envs, this batch has {self.num_envs}")
        return self._distribute(state)

    def _distribute(self, state: dict[str, Any]) -> np.ndarray:
        frames = [part.set_state({k: v[s] for k, v in state.items()})
                  for part, s in zip(self.parts, self.slices)]
        return np.concatenate(frames)

    def close(self) -> None:
        for p in self.parts:
            p.close()
