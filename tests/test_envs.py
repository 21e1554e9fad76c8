"""ProcgenVecEnv: batched stepping, level splits, episode statistics, state round-trips, errors."""
from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

from envs.games import DISTRIBUTION_MODES, GAMES, check_distribution_mode, get_game
from envs.levels import MAX_LEVEL_SEED, SPLITS, LevelRange, get_split

TRAIN = get_split("train")  # levels [0, 200)
from envs.procgen_vec import OBS_SHAPE, ProcgenVecEnv

# chaser: short random episodes with many small, fractional rewards,
# so a few hundred random steps contain plenty of episode ends and non-trivial returns.
GAME = "chaser"


def random_actions(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 15, n)


def test_one_step_call_steps_every_env():
    n = 5
    env = ProcgenVecEnv("maze", n, TRAIN, rand_seed=1)
    try:
        obs, info = env.reset(seed=1)
        assert obs.shape == (n, *OBS_SHAPE) and obs.dtype == np.uint8
        assert info["level_seed"].shape == (n,)
        obs, rew, term, trunc, info = env.step(np.zeros(n, np.int64))
        assert obs.shape == (n, 64, 64, 3) and obs.dtype == np.uint8
        assert rew.shape == (n,) and rew.dtype == np.float32
        assert term.shape == (n,) and term.dtype == bool
        assert trunc.shape == (n,) and not trunc.any()
        assert info["level_seed"].shape == (n,)
        assert env.observation_space.shape == (n, 64, 64, 3)
        assert env.single_action_space.n == 15
    finally:
        env.close()


@pytest.mark.parametrize("split", ["train", "test", "test-full"])
def test_level_seeds_stay_in_split(split):
    levels = get_split(split)
    n, rng = 16, np.random.default_rng(0)
    env = ProcgenVecEnv(GAME, n, levels, rand_seed=7)
    seen, finished = set(), set()
    try:
        _, info = env.reset(seed=7)
        seen.update(info["level_seed"].tolist())
        ends = 0
        for _ in range(300):
            _, _, term, _, info = env.step(random_actions(rng, n))
            seen.update(info["level_seed"].tolist())
            if term.any():
                ends += int(term.sum())
                finished.update(info["prev_level_seed"][info["_level_complete"]].tolist())
    finally:
        env.close()
    assert ends >= 20, "the test needs episode ends to exercise level changes"
    assert len(seen) > n, "new levels must be drawn after episode ends"
    bad = sorted(s for s in seen | finished if not levels.contains(s))
    assert not bad, f"{split}: seeds outside {levels.describe()}: {bad[:10]}"
    if split == "train":
        assert all(0 <= s < 200 for s in seen | finished)
    elif split == "test":
        assert all(201 <= s < 401 for s in seen | finished)
    else:
        assert all(0 <= s <= MAX_LEVEL_SEED for s in seen | finished)
        assert len(seen | finished) > 50  # the unbounded distribution: (almost) never a repeat


def test_episode_statistics_match_reference_sums():
    n, rng = 8, np.random.default_rng(1)
    env = ProcgenVecEnv(GAME, n, TRAIN, rand_seed=3)
    ret, length = np.zeros(n, np.float64), np.zeros(n, np.int64)
    checked, nonzero = 0, 0
    try:
        _, info = env.reset(seed=3)
        level = info["level_seed"].copy()
        for _ in range(400):
            _, rew, term, _, info = env.step(random_actions(rng, n))
            ret += rew
            length += 1
            if not term.any():
                assert "episode_return" not in info and "episode" not in info
                continue
            assert "episode" not in info  # left to gymnasium's RecordEpisodeStatistics
            np.testing.assert_array_equal(info["_episode_return"], term)
            np.testing.assert_array_equal(info["_episode_length"], term)
            np.testing.assert_array_equal(info["_level_complete"], term)
            np.testing.assert_allclose(info["episode_return"][term], ret[term], rtol=1e-5, atol=1e-4)
            np.testing.assert_array_equal(info["episode_length"][term], length[term])
            # the finished level is the one the env was playing before the step
            np.testing.assert_array_equal(info["prev_level_seed"][term], level[term])
            # entries of envs that did not finish are masked out and zero
            assert (info["episode_return"][~term] == 0).all() and (info["episode_length"][~term] == 0).all()
            assert not info["level_complete"][~term].any()
            checked += int(term.sum())
            nonzero += int((ret[term] != 0).sum())
            ret[term], length[term] = 0.0, 0
            level = info["level_seed"].copy()
    finally:
        env.close()
    assert checked >= 20 and nonzero >= 5, (checked, nonzero)


def _rollout(env: ProcgenVecEnv, actions: np.ndarray) -> list:
    out = []
    for a in actions:
        obs, rew, term, _, info = env.step(a)
        out.append((obs.copy(), rew.copy(), term.copy(), info["level_seed"].copy(),
                    info["episode_return"].copy() if "episode_return" in info else None))
    return out


def test_set_state_reproduces_trajectory():
    n, rng = 6, np.random.default_rng(2)
    env = ProcgenVecEnv(GAME, n, TRAIN, rand_seed=11)
    other = ProcgenVecEnv(GAME, n, TRAIN, rand_seed=999)
    try:
        env.reset(seed=11)
        other.reset(seed=999)
        before = _rollout(env, random_actions(rng, (25, n)))  # mid-episode, running returns != 0
        state = env.get_state()
        _rollout(env, random_actions(rng, (10, n)))  # move on; set_state must rewind this
        actions = random_actions(rng, (150, n))

        obs0 = env.set_state(state)
        a = _rollout(env, actions)
        # the same state loaded into a different batch continues identically too
        obs1 = other.set_state(state)
        b = _rollout(other, actions)
    finally:
        env.close()
        other.close()
    np.testing.assert_array_equal(obs0, before[-1][0])  # set_state returns the saved frame
    np.testing.assert_array_equal(obs1, obs0)
    assert any(x[4] is not None for x in a), "the trajectory should include episode ends"
    for (o1, r1, t1, s1, e1), (o2, r2, t2, s2, e2) in zip(a, b):
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(s1, s2)
        if e1 is None or e2 is None:
            assert e1 is None and e2 is None
        else:
            np.testing.assert_array_equal(e1, e2)  # running returns were restored too


def test_set_state_rejects_wrong_batch_size():
    a = ProcgenVecEnv(GAME, 2, TRAIN, rand_seed=0)
    b = ProcgenVecEnv(GAME, 3, TRAIN, rand_seed=0)
    try:
        with pytest.raises(ValueError, match="2 envs"):
            b.set_state(a.get_state())
    finally:
        a.close()
        b.close()


def test_unknown_game_names_the_allowed_ones():
    with pytest.raises(ValueError, match="maze") as e:
        ProcgenVecEnv("mazee", 2, TRAIN)
    assert "mazee" in str(e.value) and all(g in str(e.value) for g in GAMES)
    with pytest.raises(ValueError, match="coinrun"):
        get_game("pong")


def test_bad_distribution_mode_names_the_allowed_ones():
    with pytest.raises(ValueError) as e:
        ProcgenVecEnv("maze", 2, TRAIN, distribution_mode="medium")
    assert "medium" in str(e.value)
    assert all(m in str(e.value) for m in DISTRIBUTION_MODES)
    assert check_distribution_mode("hard") == "hard"


@pytest.mark.parametrize(
    "start, num, words",
    [(0, -1, "num_levels"), (-1, 10, "start_level"), (-5, 0, "start_level"), (2**31 - 10, 100, "exceeds")],
)
def test_bad_level_range(start, num, words):
    with pytest.raises(ValueError, match=words):
        LevelRange(start, num)


def test_bad_split_and_num_envs():
    with pytest.raises(ValueError) as e:
        get_split("validation")
    assert all(s in str(e.value) for s in SPLITS)
    with pytest.raises(ValueError, match="num_envs"):
        ProcgenVecEnv("maze", 0, TRAIN)


def test_split_contains_and_train_override():
    test, train, full = get_split("test"), get_split("train"), get_split("test-full")
    assert test.contains(201) and test.contains(400)
    assert not test.contains(200) and not test.contains(401)
    assert not train.contains(200) and train.contains(0)
    assert full.contains(10**9) and full.num_levels == 0
    own = LevelRange(5, 1)
    assert get_split("train", own) is own and get_split("test", own) == LevelRange(7, 1)


def test_failed_construction_leaves_no_error_in_del(monkeypatch):
    """A constructor that rejects its arguments must not leave a half-built env whose ``__del__``
    (gymnasium's VectorEnv.__del__ -> close) raises AttributeError."""
    errors = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: errors.append(repr(u.exc_value)))
    for bad in ({"game": "mazee"}, {"distribution_mode": "medium"}, {"num_envs": 0}):
        kwargs = {"game": "maze", "num_envs": 2, "levels": TRAIN, **bad}
        try:
            ProcgenVecEnv(**kwargs)
        except ValueError:
            pass
        else:
            pytest.fail(f"{bad} was accepted")
        gc.collect()
    assert errors == []
