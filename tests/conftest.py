"""Shared fixtures: tiny, fast configurations that write only under pytest's tmp_path."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.config import Config, load_config  # noqa: E402

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


@pytest.fixture
def small_cfg(tmp_path: Path):
    """Factory: ``small_cfg("ppo.lr=1e-3", name="x")`` -> a Config whose runs_dir is tmp_path."""

    def make(*overrides: str, name: str = "t") -> Config:
        return make_small_cfg(tmp_path, *overrides, name=name)

    return make


@pytest.fixture
def small_cli_args(tmp_path: Path):
    """Factory of train.py argv lists equivalent to ``small_cfg``."""

    def make(*overrides: str, resume: bool = False) -> list[str]:
        args = ["--config", str(QUICKSTART)]
        if resume:
            args.append("--resume")
        return args + [f"runs_dir={tmp_path}", *SMALL, *overrides]

    return make


@pytest.fixture(scope="module")
def one_thread():
    """Tiny batches on a shared 2-core machine: one torch thread is faster; restored afterwards.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def level_cache(tmp_path_factory):
    """Level fingerprints (envs/fingerprints.py) computed by any test, its child processes too, go
    to one folder of this session, never to the user's cache: no test depends on what an earlier
    session left there. tests/test_fingerprints.py sets its own folders on top."""
    saved = os.environ.get("EXPGEN_LEVEL_CACHE")
    os.environ["EXPGEN_LEVEL_CACHE"] = str(tmp_path_factory.mktemp("level_cache"))
    yield
    if saved is None:
        os.environ.pop("EXPGEN_LEVEL_CACHE", None)
    else:
        os.environ["EXPGEN_LEVEL_CACHE"] = saved
