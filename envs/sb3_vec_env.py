"""ProcGen as a Stable-Baselines3 ``VecEnv``: our one-C++-call ``ProcgenVecEnv`` behind SB3's contract.

Use it alone with any SB3 algorithm::

    venv = VecMonitor(ProcgenSB3VecEnv(ProcgenVecEnv("maze", 64, get_split("train", levels))))
    PPO("CnnPolicy", venv).learn(1_000_000)

What SB3 gets, and where ProcGen forces a choice:

- ``reset()`` returns the observations only (uint8, (N, 64, 64, 3)); the level each env plays is in
  ``reset_infos``. ``seed(s)`` takes effect at the next ``reset``: ProcGen seeds a whole batch with
  one ``rand_seed``, so that reset is ``ProcgenVecEnv.reset(seed=s)`` with the first of SB3's
  per-env seeds (``s``), and procgen derives every env's stream from it. As in gymnasium, that seed
  also seeds the batch's generator, from which every later plain ``reset()`` draws its batch: after
  ``seed(s)`` the whole sequence of resets is reproducible. Reset options are ignored (ProcGen has
  none).
- ``step_wait()`` returns ``(obs, rewards float32 (N,), dones bool (N,), infos)`` with one dict per
  env, as ``DummyVecEnv`` does: ``"level_seed"`` and ``"TimeLimit.truncated"`` every step (always
  False: ProcGen's time limits are part of the game and end an episode like any terminal state, so
  SB3 must not bootstrap from them, exactly like our native PPO). Finished envs are already reset by
  ProcGen in the same step, so ``obs[i]`` is the first frame of the next episode.
- On ``dones[i]``: ``"terminal_observation"`` is the frame from which the episode's last action was
  taken, *not* the true terminal frame, which ProcGen never exposes. SB3 reads this key only to
  bootstrap truncated episodes (never the case here) and as the masked ``next_obs`` of a terminal
  transition in replay buffers, where a done transition's target ignores it; the last frame seen is
  the closest real frame we have. ``"is_success"`` is ProcGen's level-completion flag and
  ``"prev_level_seed"`` the finished level. No ``"episode"`` key: wrap with SB3's ``VecMonitor``,
  which computes the same returns and lengths (ProcGen has no per-env ``Monitor`` to report them).
- ``render()`` tiles the current 64x64 observations of all envs (``render_mode="rgb_array"``), so
  ``VecVideoRecorder`` records what the agent sees (it writes MP4s with moviepy: install the
  ``video`` extra, ``pip install -e '.[video]'``).
- The N "envs" are slots of one batch object: ``get_attr`` reads an attribute of the batch (this
  adapter first, then the wrapped ``ProcgenVecEnv``), and ``set_attr``/``env_method`` act on the
  batch, so they accept only all envs at once. No env is wrapped by a gymnasium wrapper.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

# isort: off
# First: SB3 imports the unmaintained `gym` package when present (procgen installs it), whose
# import banner envs/procgen_vec.py silences when imported.
from envs.procgen_vec import ProcgenVecEnv

from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn
# isort: on

RENDER_FPS = 15  # ProcGen's own video frame rate


class ProcgenSB3VecEnv(VecEnv):
    """An SB3 ``VecEnv`` over a ``ProcgenVecEnv`` batch (which it owns and closes)."""

    def __init__(self, venv: ProcgenVecEnv) -> None:
        self.venv = venv
        # Set before VecEnv.__init__, which reads it back through get_attr: frames are the obs.
        self.render_mode = "rgb_array"
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self.metadata["render_fps"] = RENDER_FPS
        self._actions: np.ndarray | None = None
        self._obs: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        obs, info = self.venv.reset(seed=self._seeds[0])
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{"level_seed": int(s)} for s in info["level_seed"]]
        self._obs = obs
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [
            {"level_seed": int(seed), "TimeLimit.truncated": bool(cut and not term)}
            for seed, term, cut in zip(info["level_seed"], terminated, truncated)
        ]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = self._obs[i].copy()
            infos[i]["is_success"] = bool(info["level_complete"][i])
            infos[i]["prev_level_seed"] = int(info["prev_level_seed"][i])
        self._obs = obs
        return obs, rewards, dones, infos

    def get_state(self) -> dict[str, Any]:
        """ProcGen's full state of every env (see ``ProcgenVecEnv.get_state``): for checkpoints."""
        return self.venv.get_state()

    def set_state(self, state: dict[str, Any]) -> np.ndarray:
        """Restore ``get_state``'s result; returns the current observations (SB3's ``_last_obs``)."""
        self._obs = self.venv.set_state(state)
        return self._obs

    def get_images(self) -> Sequence[np.ndarray]:
        if self._obs is None:
            raise RuntimeError("call reset() before render()")
        return list(self._obs)

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        owner = self if attr_name in vars(self) else self.venv
        return [getattr(owner, attr_name)] * len(self._index_list(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._require_all(indices, "set_attr")
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        self._require_all(indices, "env_method")
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result] * self.num_envs

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False] * len(self._index_list(indices))

    def _index_list(self, indices: VecEnvIndices) -> list[int]:
        return list(self._get_indices(indices))

    def _require_all(self, indices: VecEnvIndices, what: str) -> None:
        """The envs share one batch object: per-env attributes and calls do not exist."""
        if sorted(self._index_list(indices)) != list(range(self.num_envs)):
            raise ValueError(
                f"{what}: the {self.num_envs} ProcGen envs are one batch and can only be addressed "
                "together (indices=None)"
            )
