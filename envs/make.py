"""Build the procgen batch a config asks for, on a named level split."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from envs.levels import get_split
from envs.procgen_vec import ProcgenVecEnv

if TYPE_CHECKING:  # the config schema sits above envs; only its type is needed here
    from core.sections import EnvConfig


def make_env(env: "EnvConfig", num_envs: int, split: str, rand_seed: int, **kw: Any) -> ProcgenVecEnv:
    """``num_envs`` games of ``env.game`` on ``split`` (``train`` = the config's training levels)."""
    return ProcgenVecEnv(
        env.game, num_envs, get_split(split, env.train_levels), env.distribution_mode,
        use_backgrounds=env.use_backgrounds, rand_seed=rand_seed, num_threads=env.num_threads, **kw,
    )
