"""Member algorithms by name (``member.algo``): the one place that lists them.

Adding one: write its ``MemberAlgorithm`` (agents/algorithm.py) in its own module, add it here,
and add its name to ``core/sections.py:Algo`` (the ``Literal`` the config checks) with any config
section it needs.
"""
from __future__ import annotations

from typing import Any

import torch

from agents.algorithm import MemberAlgorithm, PPOAlgorithm
from agents.idaac import DAACAlgorithm, IDAACAlgorithm, IDAACSpec
from agents.minibatches import MinibatchStrategy
from agents.networks import NetworkSpec
from agents.population import MemberSpec
from core.config import Config
from core.sections import ALGOS

ALGORITHMS: dict[str, type[MemberAlgorithm]] = {a.name: a for a in (PPOAlgorithm, IDAACAlgorithm, DAACAlgorithm)}
assert tuple(ALGORITHMS) == ALGOS, "core/sections.py:Algo and the registry must list the same algorithms"


def build_algorithm(cfg: Config, seeds: list[int], bf16: bool, device: torch.device,
                    minibatches: MinibatchStrategy) -> MemberAlgorithm:
    """``member.algo``'s algorithm for members with ``seeds`` on ``device``."""
    cls = ALGORITHMS[cfg.member.algo]
    return cls(cfg, cls.member_spec(cfg), seeds, cfg.population.forward_mode, bf16, device, minibatches)


def member_spec(cfg: Config) -> MemberSpec:
    """The spec of one member's networks under ``cfg`` (what its checkpoints must match)."""
    return ALGORITHMS[cfg.member.algo].member_spec(cfg)


def spec_from_dict(d: dict[str, Any]) -> MemberSpec:
    """A checkpoint's ``network`` entry as its spec: an algorithm's own when it names one
    (``algo``), else a ``NetworkSpec`` (PPO members and the explorer)."""
    return IDAACSpec.from_dict(d) if d.get("algo", "ppo") in ("idaac", "daac") else NetworkSpec.from_dict(d)
