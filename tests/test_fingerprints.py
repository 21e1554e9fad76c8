"""Level fingerprints and unseen splits (envs/fingerprints.py, envs/levels.py), on real procgen.

Every test writes its fingerprint cache under pytest's tmp_path (``EXPGEN_LEVEL_CACHE``), never in
the user's cache. The three ways a fingerprint is computed are checked against frames procgen draws
for one level alone: maze on its 64-px observation, coinrun on procgen's 512-px render of levels
moved into a render batch, bigfish on 100 no-op steps of levels moved into a 64-px batch.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import envs.fingerprints as fp
from core.config import load_config
from core.sections import ConfigError, EnvConfig
from envs.fingerprints import (
    FingerprintCacheWarning,
    compute_fingerprints,
    frame_digest,
    level_fingerprints,
    predicted_levels,
    same_as_training,
    unseen_levels,
)
from envs.games import get_game
from envs.levels import LevelRange, unseen_summary
from envs.procgen_vec import ProcgenVecEnv, _import_procgen
from evaluation.episodes import run_episodes
from tests.helpers import DEFAULT_LEVELS, QUICKSTART

TRAIN = LevelRange(0, 200)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the tests that only need the numbers: maze's 400 levels are computed once."""
    path = tmp_path_factory.mktemp("levels")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(fp.CACHE_ENV, str(path))
        yield path


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    path = tmp_path / "levels"
    monkeypatch.setenv(fp.CACHE_ENV, str(path))
    return path


def _as_stored(digest: bytes) -> bytes:
    """A digest as an element of a fingerprint array reads back (numpy's S16 drops trailing zero bytes)."""
    return np.array([digest], fp.DIGEST_DTYPE).tolist()[0]


def _alone_digest(game: str, seed: int) -> bytes:
    """The hash of the full-level frames procgen draws for ``seed`` in a batch of that level alone:
    the first one and those of the game's no-op steps."""
    g = get_game(game)
    extra = {"render_mode": "rgb_array"} if g.level_frame_px == 512 else {}
    env = _import_procgen()(num=1, env_name=game, distribution_mode="easy", start_level=seed, num_levels=1,
                            center_agent=False, num_threads=0, **extra)
    frames = []
    try:
        for t in range(g.level_reveal_steps + 1):
            if t:
                env.act(np.array([fp.NOOP], np.int32))
            _, obs, _ = env.observe()
            frames.append(env._info["rgb"][0].copy() if extra else obs["rgb"][0].copy())
    finally:
        env.close()
    return _as_stored(frame_digest(*frames))


@pytest.mark.parametrize("game, px, steps", [("maze", 64, 0), ("coinrun", 512, 0), ("bigfish", 64, 100)])
def test_fingerprint_depends_on_the_seed_only(game, px, steps):
    """Same fingerprints whatever the batches' rand_seed, the batch size or a seed's env index."""
    seeds = [5, 17, 42, 230, 17, 99]
    ref = dict(zip(seeds, compute_fingerprints(game, "easy", seeds, batch_size=len(seeds), rand_seed=0).tolist()))
    order = [99, 17, 230, 5, 42]  # every seed at another env index
    for batch_size, rand_seed in [(1, 123), (2, 2**31 - 2), (4, 7)]:
        got = compute_fingerprints(game, "easy", order, batch_size=batch_size, rand_seed=rand_seed)
        assert dict(zip(order, got.tolist())) == {s: ref[s] for s in order}
    assert len(set(ref.values())) == 5  # five different levels
    assert (get_game(game).level_frame_px, get_game(game).level_reveal_steps) == (px, steps)
    # ... and they hash the frames procgen draws for that level alone: moving a level into a batch
    # changes none of them.
    for s in (17, 230):
        assert _alone_digest(game, s) == ref[s]


def test_maze_fingerprint_is_the_frame_the_agent_plays():
    env = ProcgenVecEnv("maze", 1, LevelRange(72, 1))
    try:
        frame = env.reset(seed=3)[0][0]
    finally:
        env.close()
    assert _as_stored(frame_digest(frame)) == compute_fingerprints("maze", "easy", [72]).tolist()[0]


def test_maze_easy_test_seeds_that_are_training_levels(shared_cache):
    """openai/procgen#100 on our split: test seeds 217, 273, 391 build training levels 72, 0, 46."""
    test, train = level_fingerprints("maze", "easy", [217, 273, 391]), level_fingerprints("maze", "easy", [72, 0, 46])
    assert test.tolist() == train.tolist()
    assert len(set(test.tolist())) == 3
    assert same_as_training("maze", "easy", [217, 273, 391, 218], TRAIN, "exact").tolist() == [True, True, True, False]


def test_test_split_rules(shared_cache):
    env = EnvConfig()  # maze easy, training levels [0, 200), backgrounds on
    exact, structure, none = (unseen_levels(env, "test", rule) for rule in ("exact", "structure", "none"))
    assert exact.excluded == {217, 273, 391}
    assert structure.excluded > exact.excluded and len(structure.excluded) == 19  # docs/levels.md
    assert none.excluded == frozenset() and none.rule == "none"
    assert unseen_levels(env, "train", "structure").excluded == frozenset()
    summary = unseen_summary(structure)
    assert (summary["rule"], summary["checked"], summary["removed"], summary["kept"]) == ("structure", 200, 19, 181)
    assert "eval.unseen=structure" in summary["text"] and "181 kept" in summary["text"]
    assert unseen_summary(none)["removed"] == 0 and unseen_summary(none)["kept"] == 200
    assert unseen_levels(env, "test", "exact") is exact  # memoised: eval's modes share one computation


def test_full_distribution_exclusion_matches_predicted_levels(shared_cache):
    """test-full: each env's levels until its quota of kept ones; removed = equal to a training level."""
    env, n, episodes = EnvConfig(), 16, 400  # quota 25 per env
    ex = unseen_levels(env, "test-full", "exact", num_envs=n, seed=12345, episodes=episodes)
    assert ex.excluded, "about 3% of maze easy's random levels are training levels: expected some"
    plan = predicted_levels("maze", "easy", LevelRange(0, 0), n, 12345, 40)
    same = same_as_training("maze", "easy", plan.reshape(-1), TRAIN, "exact").reshape(plan.shape)
    met: set[int] = set()
    for j in range(n):
        last = np.flatnonzero(np.cumsum(~same[j]) == episodes // n)[0]
        met.update(plan[j, :last + 1].tolist())
        assert set(plan[j, :last + 1][same[j, :last + 1]].tolist()) <= ex.excluded
        assert not set(plan[j, :last + 1][~same[j, :last + 1]].tolist()) & ex.excluded
    assert ex.excluded <= met and ex.checked == len(met)


def test_skipped_levels_are_played_but_not_counted(shared_cache):
    """End to end on test-full: the envs start on the predicted levels and run_episodes skips the
    removed ones (seed 19: three of the 8 envs start on a level with a training level's layout)."""
    env, n, seed = EnvConfig(), 8, 19
    ex = unseen_levels(env, "test-full", "structure", num_envs=n, seed=seed, episodes=n)
    plan = predicted_levels("maze", "easy", LevelRange(0, 0), n, seed, 3)
    assert 1 <= len(ex.excluded & set(plan[:, 0].tolist())) < n
    gen = torch.Generator().manual_seed(0)
    batch = ProcgenVecEnv("maze", n, LevelRange(0, 0), rand_seed=seed)
    try:
        stats = run_episodes(lambda obs: torch.randint(0, 15, obs.shape[:2], generator=gen), [batch], n,
                             torch.device("cpu"), seed, skip_levels=ex.excluded)
    finally:
        batch.close()
    counted = stats.level_seeds[0]
    assert not set(counted.tolist()) & ex.excluded
    expected = [next(s for s in plan[j].tolist() if s not in ex.excluded) for j in range(n)]
    assert counted.tolist() == expected  # env j's first level that is not removed


def test_cache_round_trip(own_cache, monkeypatch):
    seeds = [3, 1, 4, 1, 5, 9]
    first = level_fingerprints("maze", "easy", seeds, "structure")
    path = fp.cache_path("maze", "easy", "structure")
    assert path.parent == own_cache and path.is_file()
    monkeypatch.setattr(fp, "compute_fingerprints", lambda *a, **k: pytest.fail("recomputed a cached level"))
    assert level_fingerprints("maze", "easy", seeds, "structure").tolist() == first.tolist()
    assert sorted(fp.read_cache(path, fp.cache_identity("maze", "easy", "structure"))) == [1, 3, 4, 5, 9]
    with np.load(path, allow_pickle=False) as f:  # arrays only
        assert sorted(f.files) == ["digests", "meta", "seeds"]


def _corrupt(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(b"not a cache file")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        if how == "tampered":  # valid file, one fingerprint changed: the checksum no longer matches
            arrays["digests"] = arrays["digests"].copy()
            arrays["digests"][0] = arrays["digests"][1]
        elif how == "other-options":  # written for the exact fingerprints: not these
            meta = arrays["meta"][()].replace('"kind": "structure"', '"kind": "exact"')
            arrays["meta"] = np.array(meta)
        elif how == "pickled":  # an object array would need pickle to load: refused
            arrays["seeds"] = np.array([object()] * 3, dtype=object)
        np.savez(path, **arrays)


@pytest.mark.parametrize("how, why", [("garbage", "cannot be read"), ("truncated", "cannot be read"),
                                      ("tampered", "checksum"), ("other-options", "written for other settings"),
                                      ("pickled", "cannot be read")])
def test_bad_cache_file_is_recomputed_never_trusted(own_cache, how, why):
    seeds = [3, 1, 4, 5]
    right = level_fingerprints("maze", "easy", seeds, "structure")
    path = fp.cache_path("maze", "easy", "structure")
    _corrupt(path, how)
    with pytest.warns(FingerprintCacheWarning, match=f"{path.name}: .*{why}"):
        again = level_fingerprints("maze", "easy", seeds, "structure")
    assert again.tolist() == right.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten: reads cleanly now
        assert len(fp.read_cache(path, fp.cache_identity("maze", "easy", "structure"))) == 4


def test_unwritable_cache_is_used_uncached_with_one_warning(tmp_path, monkeypatch, caplog):
    """XDG_CACHE_HOME where no folder can be made (under a file; a read-only home on a cluster node
    fails alike, and root would ignore permissions): the fingerprints come back, computed, with one
    logged warning naming the folder and the variable that moves the cache."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.delenv(fp.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    seeds = [3, 1, 4]
    with caplog.at_level(logging.WARNING, logger="expgen"):
        got = [level_fingerprints("maze", "easy", seeds).tolist() for _ in range(2)]
    assert got[0] == got[1] == [_alone_digest("maze", s) for s in seeds]  # exact: the frames procgen draws
    warned = [r.getMessage() for r in caplog.records if "cannot keep level fingerprints" in r.getMessage()]
    assert len(warned) == 1 and str(fp.cache_dir()) in warned[0] and fp.CACHE_ENV in warned[0]
    assert blocker.read_text() == ""


def test_bad_seeds_and_kinds_are_refused():
    with pytest.raises(ValueError, match="full distribution"):
        compute_fingerprints("maze", "easy", LevelRange(0, 0))
    with pytest.raises(ValueError, match=r"\[0, 2147483647\)"):
        compute_fingerprints("maze", "easy", [-1])
    with pytest.raises(ValueError, match="exact, structure"):
        compute_fingerprints("maze", "easy", [1], "layout")


def test_config_refuses_a_bad_unseen_rule():
    assert load_config(QUICKSTART, DEFAULT_LEVELS).eval.unseen == "structure"
    with pytest.raises(ConfigError, match=r"eval\.unseen='maybe'.*exact, structure, none"):
        load_config(QUICKSTART, [*DEFAULT_LEVELS, "eval.unseen=maybe"])
    full = ["env.num_levels=0", "eval.split=test-full", "logging.eval_splits=[train]"]
    with pytest.raises(ConfigError, match=r"eval\.unseen=none"):
        load_config(QUICKSTART, full)
    assert load_config(QUICKSTART, [*full, "eval.unseen=none"]).eval.unseen == "none"
