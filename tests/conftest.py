"""Shared fixtures: tiny, fast configurations that write only under pytest's tmp_path. Nothing
imports this file (pytest loads it); what test modules share is in tests/helpers.py."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# The tests import the repository's packages, and tests.helpers, from whatever folder pytest runs in.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.config import Config  # noqa: E402
from tests.helpers import QUICKSTART, SMALL, make_small_cfg  # noqa: E402


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
