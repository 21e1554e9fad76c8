"""Member algorithms by name (``member.algo``): ``ALGORITHMS`` is the one list of them, and this
module the one place that maps the root config to an algorithm and its settings section.

Adding one: write its ``MemberAlgorithm`` (agents/algorithm.py) in its own module, add its class to
``ALGORITHMS``, and its name to ``core/sections.py:Algo`` (the config's choices; core cannot import
this module, so the two lists are compared here, on import).
"""
from __future__ import annotations

from typing import Any

import torch

from agents.algorithm import MemberAlgorithm
from agents.idaac import DAACAlgorithm, IDAACAlgorithm
from agents.minibatches import MINIBATCH_SALT, STRATEGIES
from agents.population import MemberSpec
from agents.ppo import PPOAlgorithm
from agents.sampling import make_generators
from core.config import Config
from core.sections import ALGOS

ALGORITHMS: dict[str, type[MemberAlgorithm]] = {a.name: a for a in (PPOAlgorithm, IDAACAlgorithm, DAACAlgorithm)}
if tuple(ALGORITHMS) != ALGOS:
    raise ImportError(f"agents/registry.py lists the member algorithms {list(ALGORITHMS)}, core/sections.py:Algo "
                      f"{list(ALGOS)}: add the name or the class to the other")


def algorithm_class(name: str) -> type[MemberAlgorithm]:
    """The class of member algorithm ``name``; raises ``KeyError`` naming the known ones."""
    if name not in ALGORITHMS:
        raise KeyError(f"unknown member algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def algorithm_settings(cfg: Config) -> Any:
    """``member.algo``'s settings: its config section, ``configure``d for ``env.game``."""
    cls = algorithm_class(cfg.member.algo)
    return cls.configure(getattr(cfg, cls.section), cfg.env.game)


def build_algorithm(cfg: Config, seeds: list[int], bf16: bool, device: torch.device) -> MemberAlgorithm:
    """``member.algo``'s algorithm for members with ``seeds`` on ``device``, with the minibatch
    strategy it asks for (member m's order drawn from its own generator)."""
    cls, settings = algorithm_class(cfg.member.algo), algorithm_settings(cfg)
    minibatches = STRATEGIES[cls.minibatch_kind(settings)](make_generators(seeds, "cpu", salt=MINIBATCH_SALT))
    return cls(settings, cls.member_spec(cfg.network, settings), seeds, cfg.population.forward_mode, bf16, device,
               minibatches, cfg.network.init, compile_loss=cfg.population.compile)


def check_options(cfg: Config) -> None:
    """Raise ``ConfigError`` when the config asks ``member.algo`` for what it cannot do
    (``population.compile`` of a loss that is not traceable: ``MemberAlgorithm.check_compile``,
    which its constructor calls too); ``launch.run.open_run`` calls this before a run starts."""
    algorithm_class(cfg.member.algo).check_compile(cfg.population.compile)


def member_spec(cfg: Config) -> MemberSpec:
    """The spec of one member's networks under ``cfg`` (what its checkpoints must match)."""
    return algorithm_class(cfg.member.algo).member_spec(cfg.network, algorithm_settings(cfg))


def spec_from_dict(d: dict[str, Any]) -> MemberSpec:
    """A checkpoint's ``network`` entry as its algorithm's spec class: the one its ``algo`` names
    (an algorithm's own spec stores it), else PPO's ``NetworkSpec`` (PPO members, the explorer)."""
    return algorithm_class(d.get("algo", PPOAlgorithm.name)).spec_type.from_dict(d)
