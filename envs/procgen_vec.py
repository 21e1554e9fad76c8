"""ProcGen as a ``gymnasium.vector.VectorEnv`` over procgen's own batched C++ environment.

One ``step`` is one call into procgen for all envs: no subprocess and no Python loop per env.
ProcGen resets finished envs itself, in the same step (gymnasium's ``AutoresetMode.SAME_STEP``):
the observation returned with ``terminated[i] = True`` is already the first frame of env ``i``'s
next episode. ProcGen does not expose the last frame of the finished episode, so ``final_obs``
is not reported; ProcGen's time limits are part of the game, so ``truncated`` is always False.

Per-step ``info`` (arrays of length ``num_envs``):
- ``level_seed``: the level each env is playing now;
- ``prev_level_seed``, ``level_complete``: for envs whose episode just ended, the finished level and
  whether the agent completed it (``_level_complete`` masks which entries are meaningful);
- ``episode_return``, ``episode_length``: the return and length of episodes that just ended,
  each masked by its ``_``-key (gymnasium's vector-info convention).

``info["episode"]`` is deliberately left to gymnasium's ``RecordEpisodeStatistics``, which refuses
envs that fill it. That wrapper assumes NEXT_STEP autoreset, though: under SAME_STEP it skips the
first step of every episode after an env's first one, so its lengths are one short and that step's
reward (0 in every ProcGen game but a few) is left out. ``episode_return``/``episode_length`` are
exact.
"""
from __future__ import annotations

import os
from contextlib import redirect_stderr
from typing import Any

import gymnasium as gym
import numpy as np

from envs.games import NUM_ACTIONS, check_distribution_mode, get_game
from envs.levels import LevelRange

OBS_SHAPE = (64, 64, 3)


def _import_procgen():
    # procgen imports the unmaintained `gym` package, which prints a deprecation banner on import.
    with open(os.devnull, "w") as devnull, redirect_stderr(devnull):
        from procgen import ProcgenGym3Env
    return ProcgenGym3Env


class ProcgenVecEnv(gym.vector.VectorEnv):
    """A batch of ``num_envs`` ProcGen games stepped by one C++ call."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        game: str,
        num_envs: int,
        levels: LevelRange,
        distribution_mode: str = "easy",
        use_backgrounds: bool = True,
        center_agent: bool = True,
        rand_seed: int = 0,
        num_threads: int = 1,
    ) -> None:
        self._env = None  # set first: gymnasium's __del__ calls close() even if we raise below
        get_game(game)
        check_distribution_mode(distribution_mode)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.game = game
        self.num_envs = num_envs
        self.levels = levels
        self._options = dict(
            env_name=game,
            num_levels=levels.num_levels,
            start_level=levels.start_level,
            distribution_mode=distribution_mode,
            use_backgrounds=use_backgrounds,
            center_agent=center_agent,
            num_threads=num_threads,
        )
        self.single_observation_space = gym.spaces.Box(0, 255, OBS_SHAPE, np.uint8)
        self.single_action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._make(rand_seed)

    def _make(self, rand_seed: int) -> None:
        if self._env is not None:
            self._env.close()
        self._env = _import_procgen()(num=self.num_envs, rand_seed=int(rand_seed), **self._options)
        self._fresh_seed: int | None = int(rand_seed)  # the seed of a batch not stepped yet
        self._ep_return = np.zeros(self.num_envs, np.float32)
        self._ep_length = np.zeros(self.num_envs, np.int64)

    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start every env on a new episode; ``seed`` re-creates the batch with that ``rand_seed``."""
        if seed is not None:
            if seed != self._fresh_seed:  # creating a batch costs ~0.2 s: skip when already fresh
                self._make(seed)
        else:  # procgen has no reset call: a fresh batch with a seed drawn from the current one
            self._make(int(self.np_random.integers(2**31 - 1)))
        _, obs, _ = self._env.observe()
        return obs["rgb"], {"level_seed": self._env._info["level_seed"].copy()}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self._fresh_seed = None
        self._env.act(np.asarray(actions, dtype=np.int32))
        reward, obs, first = self._env.observe()
        # gym3's get_info() builds a dict per env in Python; its arrays hold the same numbers.
        raw = self._env._info
        reward = reward.astype(np.float32, copy=False)
        self._ep_return += reward
        self._ep_length += 1
        info: dict[str, Any] = {"level_seed": raw["level_seed"].copy()}
        if first.any():
            info["prev_level_seed"] = raw["prev_level_seed"].copy()
            info["level_complete"] = raw["prev_level_complete"].astype(bool) & first
            info["_level_complete"] = first.copy()
            info["episode_return"] = np.where(first, self._ep_return, 0.0).astype(np.float32)
            info["_episode_return"] = first.copy()
            info["episode_length"] = np.where(first, self._ep_length, 0)
            info["_episode_length"] = first.copy()
            self._ep_return[first] = 0.0
            self._ep_length[first] = 0
        truncated = np.zeros(self.num_envs, bool)
        return obs["rgb"], reward, first.copy(), truncated, info

    def level_seeds(self) -> np.ndarray:
        """The level each env is playing now."""
        return self._env._info["level_seed"].copy()

    def get_state(self) -> dict[str, Any]:
        """The full state of every env (level, positions, random generators): for checkpoints."""
        return {
            "procgen": self._env.get_state(),
            "ep_return": self._ep_return.copy(),
            "ep_length": self._ep_length.copy(),
        }

    def set_state(self, state: dict[str, Any]) -> np.ndarray:
        """Restore ``get_state``'s result; returns the current observations."""
        if len(state["procgen"]) != self.num_envs:
            raise ValueError(
                f"saved env state has {len(state['procgen'])} envs, this batch has {self.num_envs}"
            )
        self._fresh_seed = None
        self._env.set_state(state["procgen"])
        self._ep_return[:] = state["ep_return"]
        self._ep_length[:] = state["ep_length"]
        _, obs, _ = self._env.observe()
        return obs["rgb"]

    def close(self, **kwargs: Any) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def __repr__(self) -> str:
        return f"ProcgenVecEnv({self.game}, num_envs={self.num_envs}, {self.levels.describe()})"

