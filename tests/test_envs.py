"""ProcgenVecEnv: batched stepping, level splits, episode statistics, state round-trips, errors,
reset seeding (also of SplitBatch, FullViewPair and the SB3 adapter) and gym's import banner."""
from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.games import DISTRIBUTION_MODES, GAMES, check_distribution_mode, get_game
from envs.levels import MAX_LEVEL_SEED, SPLITS, LevelRange, get_split
from envs.procgen_vec import OBS_SHAPE, ProcgenVecEnv

TRAIN = get_split("train")  # levels [0, 200)

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


# --- gymnasium's seeding contract: reset(seed=s) seeds np_random, later reset()s follow from it ---

def _levels_after_resets(reset, seeds) -> list[list[int]]:
    """Level seeds after each ``reset(seed)`` of ``seeds`` (``None``: a plain reset)."""
    return [reset(s).tolist() for s in seeds]


def _vec_reset(env: ProcgenVecEnv):
    """``reset(seed)`` of ``env`` -> level seeds; ``None`` calls a plain ``env.reset()``."""

    def reset(seed):
        return (env.reset() if seed is None else env.reset(seed=seed))[1]["level_seed"]

    return reset


def _rllib_maze(num_envs: int, levels: LevelRange):
    """The batch RLlib's env runners get (envs/rllib_env.py's env creator)."""
    from envs.rllib_env import make_rllib_env, rllib_env_config

    return make_rllib_env(rllib_env_config("maze", levels, "easy", True, rand_seed=0) | {"num_envs": num_envs})


@pytest.mark.parametrize("creator", ["ProcgenVecEnv", "rllib"])
def test_seeded_reset_makes_later_resets_reproducible(creator):
    """The issue's input: two fresh maze batches of 6 on [0, 200), ``reset(seed=5)`` then ``reset()``.
    Before, the second resets differed and ``np_random_seed`` was a random 128-bit number."""
    make = {"ProcgenVecEnv": lambda n, lv: ProcgenVecEnv("maze", n, lv), "rllib": _rllib_maze}[creator]
    a, b = make(6, LevelRange(0, 200)), make(6, LevelRange(0, 200))
    try:
        a.reset(seed=5)
        b.reset(seed=5)
        assert a.np_random_seed == 5 and b.np_random_seed == 5
        rng = np.random.default_rng(0)
        b.step(random_actions(rng, 6))  # stepping does not change which batches later resets draw
        obs_a, info_a = a.reset()
        obs_b, info_b = b.reset()
        np.testing.assert_array_equal(info_a["level_seed"], info_b["level_seed"])
        np.testing.assert_array_equal(obs_a, obs_b)
        seq = [_vec_reset(a)(None).tolist() for _ in range(3)]
        assert seq == [_vec_reset(b)(None).tolist() for _ in range(3)]
        assert len({tuple(s) for s in [info_a["level_seed"].tolist(), *seq]}) == 4  # new batches
        # a seeded reset restarts the same stream; another seed gives another one
        assert _levels_after_resets(_vec_reset(a), [5, None, None]) == \
            [[44, 157, 73, 28, 199, 161], info_b["level_seed"].tolist(), seq[0]]
        assert _levels_after_resets(_vec_reset(b), [6, None])[1] != info_b["level_seed"].tolist()
        assert b.np_random_seed == 6
    finally:
        a.close()
        b.close()


def test_seeded_reset_of_a_fresh_batch_does_not_rebuild_it(monkeypatch):
    env = ProcgenVecEnv("maze", 2, TRAIN, rand_seed=5)
    built = []
    monkeypatch.setattr(env, "_make", lambda s: built.append(s) or ProcgenVecEnv._make(env, s))
    try:
        env.reset(seed=5)
        assert built == [] and env.np_random_seed == 5  # still seeds the generator
        env.step(np.zeros(2, np.int64))
        env.reset(seed=5)
        assert built == [5]  # stepped: rebuilt
    finally:
        env.close()


def test_seeds_procgen_cannot_take_still_seed_reproducibly():
    """gymnasium and SB3 allow any non-negative seed; procgen's rand_seed is a C int (< 2**31)."""
    big = 2**32 - 1  # SB3's VecEnv.seed() without an argument draws seeds up to this
    a, b = ProcgenVecEnv("maze", 3, TRAIN), ProcgenVecEnv("maze", 3, TRAIN)
    try:
        assert _levels_after_resets(_vec_reset(a), [big, None]) == _levels_after_resets(_vec_reset(b), [big, None])
        assert a.np_random_seed == big
        assert _levels_after_resets(_vec_reset(a), [np.int64(7)]) == _levels_after_resets(_vec_reset(b), [7])
        with pytest.raises(ValueError, match=">= 0"):
            a.reset(seed=-1)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("parts", [1, 2])
def test_split_batch_and_full_view_pair_resets_follow_the_seeded_stream(parts):
    """SplitBatch and FullViewPair reset like one ProcgenVecEnv of N: same batches, for any K,
    after a seeded reset; the two views of the pair always get the same seed."""
    from envs.full_view import FullViewPair
    from envs.split_batch import SplitBatch

    n, seeds = 4, [5, None, None, 2**32 + 3, None]
    make = lambda k, **kw: ProcgenVecEnv("maze", k, TRAIN, rand_seed=0, **kw)  # noqa: E731
    single = make(n)
    split = SplitBatch(make, n, parts)
    pair = FullViewPair(make, n, parts)
    try:
        want = _levels_after_resets(_vec_reset(single), seeds)

        def split_reset(seed):
            split.reset(seed) if seed is not None else split.reset()
            return split.level_seeds()

        def pair_reset(seed):
            pair.reset(seed=seed) if seed is not None else pair.reset()
            return pair.full.level_seeds()  # reset checks the agent view plays the same levels

        assert _levels_after_resets(split_reset, seeds) == want
        assert _levels_after_resets(pair_reset, seeds) == want
        assert split.np_random_seed == pair.np_random_seed == 2**32 + 3
        # never seeded: a random stream, but the two views of a pair still agree
        fresh = FullViewPair(make, n, parts)
        fresh.reset()
        fresh.close()
    finally:
        single.close()
        split.close()
        pair.close()


def test_sb3_adapter_resets_after_seed_are_reproducible():
    """SB3's contract: ``venv.seed(s)`` applies at the next reset; later plain resets follow from it."""
    from envs.sb3_vec_env import ProcgenSB3VecEnv

    def run(seed):
        venv = ProcgenSB3VecEnv(ProcgenVecEnv("maze", 3, TRAIN))
        try:
            venv.seed(seed)
            out = [venv.reset().copy()]
            venv.step(np.zeros(3, np.int64))
            out += [venv.reset().copy(), venv.reset().copy()]
            return out, [i["level_seed"] for i in venv.reset_infos]
        finally:
            venv.close()

    for seed in (5, 2**32 - 2):  # any seed SB3's seed() may hand over
        (first, *later), levels = run(seed)
        (first2, *later2), levels2 = run(seed)
        np.testing.assert_array_equal(first, first2)
        for x, y in zip(later, later2):
            np.testing.assert_array_equal(x, y)
        assert levels == levels2


# --- gym's "Gym has been unmaintained since 2022" import banner (procgen and SB3 import gym) ---

GYM_BANNER = "Gym has been unmaintained since 2022"
ROOT = Path(__file__).resolve().parents[1]


def _python_stderr(code: str, *flags: str) -> str:
    """stderr of a fresh interpreter running ``code`` in the repository (gym is imported once per process)."""
    run = subprocess.run([sys.executable, *flags, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    return run.stderr


@pytest.mark.slow  # a fresh interpreter
def test_gym_prints_its_banner_when_imported_alone():
    """The control: the installed gym does print the banner, so the tests below can see it."""
    assert GYM_BANNER in _python_stderr("import gym")


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.parametrize("code", [
    # a batch (the native and RLlib engines, evaluation): procgen imports gym
    "from envs.procgen_vec import ProcgenVecEnv; from envs.levels import LevelRange;"
    "ProcgenVecEnv('maze', 2, LevelRange(0, 200)).close()",
    # the SB3 adapter, then SB3, procgen and gym themselves in any order
    "import envs.sb3_vec_env, stable_baselines3, procgen, gym",
    # the sb3 engine
    "import training.engines.sb3",
], ids=["procgen-batch", "sb3-adapter-then-sb3-procgen-gym", "engine-sb3"])
def test_no_gym_banner_on_our_import_paths(code):
    assert GYM_BANNER not in _python_stderr(code)


@pytest.mark.slow  # a fresh interpreter
def test_other_output_of_the_procgen_import_still_shows():
    """Only the banner goes: a warning and a line written to stderr while procgen imports gym (sent
    here by an audit hook) still reach stderr, as does procgen's own ResourceWarning where enabled."""
    code = """if True:
        import sys, warnings
        sent = []
        def hook(event, args):
            if event == "import" and args[0] == "gym" and not sent:
                sent.append(True)
                print("a message while gym imports", file=sys.stderr)
                warnings.warn("a warning while gym imports", UserWarning)
        sys.addaudithook(hook)
        from envs.procgen_vec import _import_procgen
        _import_procgen()
        assert sent
    """
    err = _python_stderr(code, "-W", "default::ResourceWarning")
    assert GYM_BANNER not in err
    assert "a message while gym imports" in err
    assert "UserWarning: a warning while gym imports" in err
    assert "ResourceWarning" in err and "procgen" in err  # procgen/__init__.py leaves version.txt open
