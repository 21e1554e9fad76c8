"""ProcGen for RLlib's env runners: our batched ``ProcgenVecEnv``, handed over as a ready VectorEnv.

Why a ready VectorEnv: procgen steps all envs of a batch in one C++ call, which is what makes it
fast; RLlib's ``sync``/``async`` vectorisation modes would instead build one procgen instance per env
and step them one by one in Python (or one subprocess each). RLlib 2.60's ``SingleAgentEnvRunner``
takes a ready VectorEnv with ``gym_env_vectorize_mode="vector_entry_point"``: it calls the env
creator with ``env_config | {"num_envs": n}`` once per runner.

Autoreset: procgen resets a finished env in the SAME step (gymnasium's ``AutoresetMode.SAME_STEP``,
which ``ProcgenVecEnv.metadata`` declares): the frame returned with ``terminated`` is already the
next episode's first frame, and procgen cannot hold one env of its batch back. RLlib 2.60's
``SingleAgentEnvRunner`` ignores ``metadata["autoreset_mode"]`` and assumes NEXT_STEP: it takes the
step after a ``terminated`` as a reset, keeping only its frame and dropping its action, reward and
``terminated``. That would drop the first transition of every episode from the train batch and
from RLlib's step count, and lose every episode that ends on its first step together with its
return (jumper: 19 of the 200 training levels end on their first step whatever the action, 4 of
them with reward 10). The rllib engine therefore samples with
``training.engines.rllib.SameStepEnvRunner``, which starts the next episode on the frame returned
with ``terminated``: every procgen step is one real transition, with its reward, in its episode.
The finished episode's last observation is that same first frame (procgen does not expose the last
frame); PPO never uses its value, because the episode terminated.
"""
from __future__ import annotations

from typing import Any, Mapping

from envs.levels import LevelRange
from envs.procgen_vec import ProcgenVecEnv


def rllib_env_config(game: str, levels: LevelRange, distribution_mode: str, use_backgrounds: bool,
                     rand_seed: int, num_threads: int = 1) -> dict[str, Any]:
    """The ``env_config`` that ``make_rllib_env`` reads (plain values: it travels to remote runners)."""
    return {"game": game, "start_level": levels.start_level, "num_levels": levels.num_levels,
            "distribution_mode": distribution_mode, "use_backgrounds": use_backgrounds,
            "rand_seed": rand_seed, "num_threads": num_threads}


def make_rllib_env(env_config: Mapping[str, Any]) -> ProcgenVecEnv:
    """RLlib env creator: one procgen batch of ``env_config["num_envs"]`` envs per env runner.

    The batch's ``rand_seed`` is only its creation seed: the runner's first ``reset`` re-seeds it
    with RLlib's per-runner seed (``config.seed`` + an offset per runner index), so each runner of a
    member, and each member, plays its own stream of levels.
    """
    c = env_config
    return ProcgenVecEnv(
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
