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
reward is left out (not always 0: in jumper, maze, chaser and miner a level can pay on its first
step). ``episode_return``/``episode_length`` are exact.
"""
from __future__ import annotations

import operator
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding

from envs.games import NUM_ACTIONS, check_distribution_mode, get_game
from envs.levels import LevelRange

OBS_SHAPE = (64, 64, 3)
MAX_RAND_SEED = 2**31 - 1  # procgen's rand_seed is a C int


def reset_rand_seed(seed: int | None, rng: np.random.Generator) -> int:
    """The procgen ``rand_seed`` of the batch a reset builds, once ``seed`` (if any) has seeded ``rng``.

    gymnasium's contract (``VectorEnv.reset``): ``reset(seed=s)`` seeds the env's generator with
    ``s``, and every later ``reset()`` draws from that generator, so the whole sequence of batches
    follows from ``s``. A seed procgen takes as it is (< 2**31) is the batch's ``rand_seed`` itself,
    as ``ProcgenVecEnv(rand_seed=s)`` would build it; a larger one (gymnasium and SB3 allow any
    non-negative int) and an unseeded reset use the generator's next draw.
    """
    if seed is not None and seed <= MAX_RAND_SEED:
        return seed
    return int(rng.integers(MAX_RAND_SEED))


def as_seed(seed: Any) -> int | None:
    """A reset seed as a Python int (numpy integers too; gymnasium's seeding refuses those)."""
    if seed is None:
        return None
    seed = operator.index(seed)
    if seed < 0:
        raise ValueError(f"reset seeds must be >= 0 (gymnasium's seeding), got {seed}")
    return seed


class ResetSeeding:
    """gymnasium's reset seeding for our batch holders that are not a ``VectorEnv`` (SplitBatch,
    FullViewPair): ``np_random``/``np_random_seed`` as in gymnasium, and ``_reset_rand_seed``, which
    a ``reset(seed)`` calls first for the ``rand_seed`` of the batch it builds."""

    _np_random: np.random.Generator | None = None
    _np_random_seed: int | None = None

    @property
    def np_random(self) -> np.random.Generator:
        if self._np_random is None:
            self._np_random, self._np_random_seed = seeding.np_random()
        return self._np_random

    @property
    def np_random_seed(self) -> int:
        if self._np_random_seed is None:
            self._np_random, self._np_random_seed = seeding.np_random()
        return self._np_random_seed

    def _reset_rand_seed(self, seed: int | None) -> int:
        seed = as_seed(seed)
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        return reset_rand_seed(seed, self.np_random)


GYM_BANNER = "Gym has been unmaintained since 2022"


def silence_gym_banner() -> None:
    """Keep the unmaintained ``gym`` package from printing its deprecation banner when imported.

    procgen imports ``gym`` (for its ``gym.make`` registration), and so does SB3 when ``gym`` is
    installed; ``gym/__init__.py`` then prints ``gym_notices.notices.notices[gym.__version__]``
    to stderr: a banner telling users to move to gymnasium, which we already use. Only that
    banner's entries are dropped from the table (before ``gym`` reads it), so no stream is
    redirected and every other message and warning of those imports still shows. Called when this
    module is imported, which every path of ours to procgen and SB3 goes through first.
    """
    try:
        from gym_notices import notices
    except ImportError:  # no gym_notices: gym prints nothing
        return
    for version in [v for v, text in notices.notices.items() if text.startswith(GYM_BANNER)]:
        del notices.notices[version]


silence_gym_banner()


def _import_procgen():
    from procgen import ProcgenGym3Env  # imports gym: silenced above

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
        # gym3 looks up libenv_close through cffi's lazy library on first use, under cffi's
        # non-reentrant lock. If that first use is gymnasium's __del__, run by the garbage collector
        # while this thread holds the lock in another lookup (making a new env), the process hangs:
        # resolve it now, so closing never takes the lock.
        getattr(self._env._c_lib, "libenv_close")
        self._fresh_seed: int | None = int(rand_seed)  # the seed of a batch not stepped yet
        self._ep_return = np.zeros(self.num_envs, np.float32)
        self._ep_length = np.zeros(self.num_envs, np.int64)

    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start every env on a new episode. procgen has no reset call: a reset builds a new batch.

        ``seed`` seeds ``np_random`` (gymnasium's ``VectorEnv.reset``) and builds the batch with
        ``rand_seed=seed`` (seeds procgen cannot take, >= 2**31: the generator's first draw, see
        ``reset_rand_seed``); an unseeded reset builds one with a ``rand_seed`` drawn from
        ``np_random``, so every reset after ``reset(seed=s)`` is reproducible from ``s``.
        """
        seed = as_seed(seed)
        super().reset(seed=seed)
        rand_seed = reset_rand_seed(seed, self.np_random)
        if rand_seed != self._fresh_seed:  # creating a batch costs ~0.2 s: skip when already fresh
            self._make(rand_seed)
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

