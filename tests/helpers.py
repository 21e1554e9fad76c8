"""What several test modules (and benchmarks/same_weights.py) share: tiny, fast configurations that
write only where they are told, and reading a run back. Imported as ``tests.helpers``; the fixtures
built on it are in tests/conftest.py, which pytest loads by itself and nothing imports."""
from __future__ import annotations

from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from core.config import Config, load_config
from core.run_layout import AgentDir

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"

# The quickstart's demo choices (one training level, test-full) are not what tests are about:
# they run on the default level ranges, training [0, 200) and test [201, 401).
DEFAULT_LEVELS = [
    "env.start_level=0",
    "env.num_levels=200",
    "eval.split=test",
    "logging.eval_splits=[train,test]",
]

# The smallest config that still exercises every part of an iteration: 4 envs x 8 steps,
# two minibatches, one member, small CNN, no held-out evaluation, a checkpoint every update,
# no exploration agent.
SMALL = [
    *DEFAULT_LEVELS,
    "device=cpu",
    "ray=false",
    # Tests train in this process (they monkeypatch, count calls and need speed); child processes
    # side by side are tested in tests/test_side_by_side.py.
    "resources.side_by_side=false",
    "logging.progress=false",
    "env.num_envs=4",
    "ppo.num_steps=8",
    "ppo.num_minibatches=2",
    "ppo.epochs=1",
    "ppo.total_steps=64",
    "network.kind=small",
    "ensemble.size=1",
    "logging.eval_interval=0",
    "logging.checkpoint_interval=1",
    "explorer.enabled=false",
]


def make_small_cfg(runs_dir: Path, *overrides: str, name: str = "t") -> Config:
    """quickstart.yaml shrunk to ``SMALL``, then ``overrides`` (later ones win)."""
    return load_config(QUICKSTART, [f"runs_dir={runs_dir}", *SMALL, *overrides], name=name)


def member_network(pop, m: int) -> torch.nn.Module:
    """Member ``m`` of the population ``pop`` as the plain network its spec builds, with the
    member's weights: the reference that the population's batched forward is compared with."""
    net = pop.spec.build()
    net.load_state_dict(pop.member_state_dict(m))
    return net


def logged_steps(agent: AgentDir, tag: str = "charts/SPS") -> list[int]:
    """Steps of ``tag`` as TensorBoard shows them (events purged by a restart are dropped)."""
    acc = EventAccumulator(str(agent.tb))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []
