"""The agent's view and the full-level view of the same games, stepped in lockstep.

The explorer's reward is computed on fixed-camera frames of the whole level (procgen
``center_agent=False``), while its policy sees the usual agent-centred frames (docs/expgen.md, "Explorer").
ProcGen cannot render both from one game, so, like the reference, we run a second batch with the
same seed, levels and options and feed it the same actions. The two are deterministic twins; any
divergence (level seeds, rewards or episode ends) is a bug that would silently corrupt the reward,
so every step checks it and raises ``LockstepError``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from envs.procgen_vec import ProcgenVecEnv


class LockstepError(RuntimeError):
    """The agent-view and full-view batches no longer play the same games."""


class FullViewPair:
    def __init__(self, make: Callable[..., ProcgenVecEnv]) -> None:
        """``make(center_agent=...)`` builds one batch; both are built with the same other options."""
        self.agent = make(center_agent=True)
        self.full = make(center_agent=False)
        self.num_envs = self.agent.num_envs

    def reset(self, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        obs, info = self.agent.reset(seed=seed)
        full, full_info = self.full.reset(seed=seed)
        self._check(info["level_seed"], full_info["level_seed"], "level seeds at reset")
        return obs, full, info

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """-> agent-view obs, full-view obs, reward, terminated, the agent batch's info."""
        obs, reward, term, _, info = self.agent.step(actions)
        full, full_reward, full_term, _, full_info = self.full.step(actions)
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
