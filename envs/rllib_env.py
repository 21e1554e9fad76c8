"""ProcGen for RLlib's env runners: our batched ``ProcgenVecEnv``, handed over as a ready VectorEnv.

Why a ready VectorEnv: procgen steps all envs of a batch in one C++ call, which is what makes it
fast; RLlib's ``sync``/``async`` vectorisation modes would instead build one procgen instance per env
and step them one by one in Python (or one subprocess each). RLlib 2.60's ``SingleAgentEnvRunner``
takes a ready VectorEnv with ``gym_env_vectorize_mode="vector_entry_point"``: it calls the env
creator with ``env_config | {"num_envs": n}`` once per runner.

Autoreset mismatch, and what it costs: the runner assumes gymnasium's NEXT_STEP autoreset (after
``terminated`` the next ``step`` call only resets and its action is ignored), while procgen resets
in the SAME step (the frame returned with ``terminated`` is already the next episode's first frame)
and cannot hold back one env of its batch. Fed as is, the runner (1) stores that first frame as the
finished episode's final observation, whose value PPO masks out anyway because the episode
terminated, and (2) computes the next action from that same frame, which is exactly the action the
policy would take at the new episode's start, then records the frame after it as the new episode's
reset frame. So every recorded transition is real and every action comes from the policy; only the
first transition of each episode (and its reward, nearly always 0) is left out of the training
batch and of RLlib's step count. ``RLlibProcgenEnv.steps_taken`` counts the env steps procgen
really took, and the episode returns we log come from this env's own bookkeeping, which includes
that first step.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from envs.levels import LevelRange
from envs.procgen_vec import ProcgenVecEnv


class RLlibProcgenEnv(ProcgenVecEnv):
    """``ProcgenVecEnv`` that counts the env steps it takes (over all its envs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps_taken = 0

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self.steps_taken += self.num_envs
        return super().step(actions)


def rllib_env_config(game: str, levels: LevelRange, distribution_mode: str, use_backgrounds: bool,
                     rand_seed: int, num_threads: int = 1) -> dict[str, Any]:
    """The ``env_config`` that ``make_rllib_env`` reads (plain values: it travels to remote runners)."""
    return {"game": game, "start_level": levels.start_level, "num_levels": levels.num_levels,
            "distribution_mode": distribution_mode, "use_backgrounds": use_backgrounds,
            "rand_seed": rand_seed, "num_threads": num_threads}


def make_rllib_env(env_config: Mapping[str, Any]) -> RLlibProcgenEnv:
    """RLlib env creator: one procgen batch of ``env_config["num_envs"]`` envs per env runner.

    The batch's ``rand_seed`` is only its creation seed: the runner's first ``reset`` re-seeds it
    with RLlib's per-runner seed (``config.seed`` + an offset per runner index), so each runner of a
    member, and each member, plays its own stream of levels.
    """
    c = env_config
    return RLlibProcgenEnv(
        c["game"], int(c["num_envs"]), LevelRange(c["start_level"], c["num_levels"]),
        c["distribution_mode"], use_backgrounds=c["use_backgrounds"], rand_seed=c["rand_seed"],
        num_threads=c["num_threads"],
    )


ENV_NAME = "expgen_procgen"


def register_rllib_env() -> str:
    """Register ``make_rllib_env`` with Ray (RLlib accepts an env class or a registered name, not a
    bare creator function); Ray ships the registration to remote env runners. Returns the name."""
    from ray.tune.registry import register_env  # Ray is imported only by the rllib engine

    register_env(ENV_NAME, make_rllib_env)
    return ENV_NAME
