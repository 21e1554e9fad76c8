"""The agent's view and the full-level view of the same games, stepped in lockstep.

The explorer's reward is computed on fixed-camera frames of the whole level (procgen
``center_agent=False``), while its policy sees the usual agent-centred frames (docs/expgen.md, "Explorer").
ProcGen cannot render both from one game, so, like the reference, we run a second batch with the
same seed, levels and options and feed it the same actions. The two are deterministic twins; any
divergence (level seeds, rewards or episode ends) is a bug that would silently corrupt the reward,
so every step checks it and raises ``LockstepError``. A reset gives both views the same seed: an
unseeded one draws it once, from the pair's own ``np_random`` (seeded by a seeded reset).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from envs.procgen_vec import ProcgenVecEnv, ResetSeeding
from envs.split_batch import SplitBatch


class LockstepError(RuntimeError):
    """The agent-view and full-view batches no longer play the same games."""


class FullViewPair(ResetSeeding):
    """Both views of ``num_envs`` games, each held as ``parts`` slices (envs/split_batch.py)."""

    def __init__(self, make: Callable[..., ProcgenVecEnv], num_envs: int, parts: int = 1) -> None:
        """``make(num_envs, center_agent=...)`` builds one batch; both views share every other option."""
        self.agent = SplitBatch(lambda n: make(n, center_agent=True), num_envs, parts)
        self.full = SplitBatch(lambda n: make(n, center_agent=False), num_envs, parts)
        self.num_envs = num_envs
        self.slices = self.agent.slices

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> agent-view and full-view frames of every env's new episode (seeded as ``SplitBatch.reset``)."""
        seed = self._reset_rand_seed(seed)
        obs, full = self.agent.reset(seed), self.full.reset(seed)
        self._check(self.agent.level_seeds(), self.full.level_seeds(), "level seeds at reset")
        return obs, full

    def step(self, part: int, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step slice ``part`` of both views -> agent-view obs, full-view obs, reward, terminated,
        the agent view's info (all of that slice)."""
        obs, reward, term, info = self.agent.step(part, actions)
        full, full_reward, full_term, full_info = self.full.step(part, actions)
        self._check(term, full_term, "episode ends")
        self._check(info["level_seed"], full_info["level_seed"], "level seeds")
        self._check(reward, full_reward, "rewards")
        return obs, full, reward, term, info

    @staticmethod
    def _check(a: np.ndarray, b: np.ndarray, what: str) -> None:
        if not np.array_equal(a, b):
            bad = np.flatnonzero(a != b)[:8]
            raise LockstepError(
                f"agent-view and full-view envs disagree on {what} in envs {bad.tolist()}: "
                f"{a[bad].tolist()} vs {b[bad].tolist()}"
            )

    def get_state(self) -> dict[str, Any]:
        return {"agent": self.agent.get_state(), "full": self.full.get_state()}

    def set_state(self, state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        return self.agent.set_state(state["agent"]), self.full.set_state(state["full"])

    def close(self) -> None:
        self.agent.close()
        self.full.close()
