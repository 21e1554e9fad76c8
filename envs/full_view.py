"""The agent's view and the full-level view of the same games, stepped in lockstep.

The explorer's reward is computed on fixed-camera frames of the whole level (procgen
``center_agent=False``), while its policy sees the usual agent-centred frames (docs/expgen.md, "Explorer").
ProcGen cannot render both from one game, so, like the reference, we run a second batch with the
same seed, levels and options and feed it the same actions. The two are deterministic twins; any
divergence (level seeds, rewards or episode ends) is a bug that would silently corrupt the reward,
so every step checks it and raises ``LockstepError``. A reset gives both views the same seed: an
unseeded one draws it once, from the pair's own ``np_random`` (seeded by a seeded reset).

Games whose camera never follows the agent (``Game.full_view_is_agent_view``: maze, heist and 8
others) draw the whole level in the agent's view already: there the twin would be a bit-identical
copy of the agent batch, so the pair builds and steps no twin and returns the agent's frames as the
full view. That halves the explorer's env stepping for those games and changes no number.

Where there is a twin, a step runs both views at once: the twin's batch in a thread of the pair,
the agent's in the calling thread (procgen releases the GIL while it steps), and the lockstep check
compares them once both have finished. The two batches share nothing, so this changes no number
either (tests/test_full_view.py checks it bit for bit against stepping the views one after the
other).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Callable

import numpy as np

from envs.games import get_game
from envs.procgen_vec import ProcgenVecEnv, ResetSeeding
from envs.split_batch import SplitBatch


class LockstepError(RuntimeError):
    """The agent-view and full-view batches no longer play the same games."""


class FullViewPair(ResetSeeding):
    """Both views of ``num_envs`` games, each held as ``parts`` slices (envs/split_batch.py).

    ``twin``: whether to run the second, full-view batch. ``None`` (the default) runs it only where
    the game's agent view is not already the full view (``Game.full_view_is_agent_view``); ``True``
    forces it for any game (tests compare the two ways). ``False`` for a game whose agent view is
    not the full view raises: its reward would be computed on the wrong frames. Without a twin,
    ``full`` is the agent batch itself.
    """

    def __init__(self, make: Callable[..., ProcgenVecEnv], num_envs: int, parts: int = 1,
                 twin: bool | None = None) -> None:
        """``make(num_envs, center_agent=...)`` builds one batch; both views share every other option."""
        self.agent = SplitBatch(lambda n: make(n, center_agent=True), num_envs, parts)
        same = get_game(self.agent.parts[0].game).full_view_is_agent_view
        if twin is False and not same:
            self.agent.close()
            raise ValueError(f"{self.agent.parts[0].game}'s agent view is not the full view: "
                             "the explorer's full-level frames need the twin batch")
        self.same_view = same
        self.twin = not same if twin is None else twin
        self.full = SplitBatch(lambda n: make(n, center_agent=False), num_envs, parts) if self.twin else self.agent
        self.num_envs = num_envs
        self.slices = self.agent.slices
        # One thread per slice: slices that step at the same time (in the learner's worker threads)
        # each have their twin stepping beside them.
        self._twin_threads = ThreadPoolExecutor(parts, thread_name_prefix="full-view") if self.twin else None

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> agent-view and full-view frames of every env's new episode (seeded as ``SplitBatch.reset``)."""
        seed = self._reset_rand_seed(seed)
        obs = self.agent.reset(seed)
        if not self.twin:
            return obs, obs
        full = self.full.reset(seed)
        self._check(self.agent.level_seeds(), self.full.level_seeds(), "level seeds at reset")
        return obs, full

    def step(self, part: int, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step slice ``part`` of both views -> agent-view obs, full-view obs, reward, terminated,
        the agent view's info (all of that slice). Without a twin the full-view obs is ``obs``; with
        one, both views step at once (module docstring). Raises ``LockstepError`` if they diverge."""
        if not self.twin:
            obs, reward, term, info = self.agent.step(part, actions)
            return obs, obs, reward, term, info
        twin_step = self._twin_threads.submit(self.full.step, part, actions)
        try:
            obs, reward, term, info = self.agent.step(part, actions)
        finally:
            wait([twin_step])  # neither view is read, nor stepped again, before both have finished
        full, full_reward, full_term, full_info = twin_step.result()
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
        """``{"agent": ..., "full": ...}``; without a twin ``{"agent": ...}`` alone (the full view's
        state would be a copy of it)."""
        if not self.twin:
            return {"agent": self.agent.get_state()}
        return {"agent": self.agent.get_state(), "full": self.full.get_state()}

    def set_state(self, state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Restore ``get_state``'s result, with or without a ``"full"`` state, whatever ``twin`` is.

        Checkpoints from before the twin was skipped hold a ``"full"`` state for every game: a pair
        without a twin checks that it is the agent's procgen state (a twin of the same view is an
        exact copy) and drops it. A pair with a twin, given a state without one (saved without a
        twin: only games whose views are the same), starts its twin from the agent's state.
        """
        saved_full = state.get("full")
        if saved_full is None and not self.same_view:
            raise ValueError("the saved env state has no full-view state, and this game's agent "
                             "view is not the full view")
        if saved_full is not None and self.same_view and saved_full["procgen"] != state["agent"]["procgen"]:
            bad = [i for i, (a, f) in enumerate(zip(state["agent"]["procgen"], saved_full["procgen"])) if a != f]
            raise LockstepError(f"the saved agent-view and full-view procgen states differ in envs {bad[:8]}")
        obs = self.agent.set_state(state["agent"])
        if not self.twin:
            return obs, obs
        return obs, self.full.set_state(state["agent"] if saved_full is None else saved_full)

    def close(self) -> None:
        self.agent.close()
        if self.twin:
            self._twin_threads.shutdown()
            self.full.close()
