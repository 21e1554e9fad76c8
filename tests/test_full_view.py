"""Which games already draw the whole level in the agent's view (``Game.full_view_is_agent_view``),
the explorer's env pair (envs/full_view.py) stepping no twin batch for them, and its threaded
stepping (procgen's threads, the twin beside the agent view) changing no number."""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from envs.full_view import FullViewPair, LockstepError
from envs.games import GAMES
from envs.levels import get_split
from envs.procgen_vec import ProcgenVecEnv

TRAIN = get_split("train")


def views(game: str, n: int, mode: str = "easy", seed: int = 5) -> tuple[ProcgenVecEnv, ProcgenVecEnv]:
    """An agent-view and a full-view batch of the same games."""
    make = functools.partial(ProcgenVecEnv, game, n, TRAIN, mode, rand_seed=seed)
    return make(center_agent=True), make(center_agent=False)


def play(game: str, mode: str, n: int, steps: int) -> tuple[bool, int]:
    """Random actions in both views: whether every frame was bit-identical, and the episode ends
    crossed. Rewards, episode ends and levels must agree in any game (the views are twins)."""
    agent, full = views(game, n, mode)
    try:
        a, _ = agent.reset(seed=5)
        f, _ = full.reset(seed=5)
        same, ends, rng = np.array_equal(a, f), 0, np.random.default_rng(1)
        for _ in range(steps):
            actions = rng.integers(0, 15, n)
            a, ra, ta, _, ia = agent.step(actions)
            f, rf, tf, _, iff = full.step(actions)
            assert np.array_equal(ra, rf) and np.array_equal(ta, tf)
            assert np.array_equal(ia["level_seed"], iff["level_seed"])
            ends += int(ta.sum())
            same = same and np.array_equal(a, f)
            if not same:
                break
        if same:  # then the whole games are the same too, not just the pictures
            assert agent.get_state()["procgen"] == full.get_state()["procgen"]
        return same, ends
    finally:
        agent.close()
        full.close()


@pytest.mark.slow  # 1,500 steps of 8 envs in each view
@pytest.mark.parametrize("mode", ["easy", "hard"])
@pytest.mark.parametrize("game", ["maze", "heist"])
def test_maze_and_heist_agent_view_is_the_full_view(game: str, mode: str) -> None:
    """The paper's two headline games: procgen ignores center_agent for them (outside memory mode),
    so the explorer's full-view twin would be a bit-identical copy of the agent's batch."""
    same, ends = play(game, mode, n=8, steps=1500)
    assert same
    assert ends >= 8  # new levels were entered: the fact holds across level changes
    assert GAMES[game].full_view_is_agent_view


@pytest.mark.parametrize("mode", ["easy", "hard"])
@pytest.mark.parametrize("game", sorted(GAMES))
def test_every_game_records_whether_its_agent_view_is_the_full_view(game: str, mode: str) -> None:
    """The per-game fact in envs/games.py, for all 16 games (shorter runs than for maze and heist;
    a game whose camera follows the agent differs from its first frame)."""
    same, _ = play(game, mode, n=4, steps=150)
    assert same == GAMES[game].full_view_is_agent_view


def maze_pair(parts: int = 1, twin: bool | None = None, game: str = "maze") -> FullViewPair:
    return FullViewPair(functools.partial(ProcgenVecEnv, game, levels=TRAIN, rand_seed=3), 4, parts, twin)


@pytest.mark.parametrize("parts", [1, 2])
def test_pair_steps_no_twin_where_the_views_are_the_same(parts: int) -> None:
    """maze: no second batch, the agent's frames are the full view; forcing the twin on gives the
    same frames, rewards and episode ends, step for step."""
    skip, forced = maze_pair(parts), maze_pair(parts, twin=True)
    assert not skip.twin and skip.full is skip.agent
    assert forced.twin and forced.full is not forced.agent
    try:
        obs, full = skip.reset(seed=3)
        assert full is obs
        ref_obs, ref_full = forced.reset(seed=3)
        assert np.array_equal(obs, ref_obs) and np.array_equal(full, ref_full)
        rng, ends = np.random.default_rng(0), 0
        for _ in range(300):
            actions = rng.integers(0, 15, 4)
            for part, envs in enumerate(skip.slices):
                obs, full, reward, term, info = skip.step(part, actions[envs])
                ref = forced.step(part, actions[envs])
                assert full is obs
                for got, want in zip((obs, full, reward, term), ref[:4]):
                    assert np.array_equal(got, want)
                assert np.array_equal(info["level_seed"], ref[4]["level_seed"])
                ends += int(term.sum())
        assert ends > 0
        assert skip.get_state()["agent"]["procgen"] == forced.get_state()["full"]["procgen"]
    finally:
        skip.close(), forced.close()


def test_pair_keeps_the_twin_where_the_camera_follows_the_agent() -> None:
    pair = maze_pair(game="coinrun")
    assert pair.twin and pair.full is not pair.agent
    pair.close()
    with pytest.raises(ValueError, match="not the full view"):
        maze_pair(game="coinrun", twin=False)


def test_pair_checkpoints_with_and_without_the_twin_state() -> None:
    """Old checkpoints (a "full" state for every game) still load; a pair without a twin saves the
    agent's state alone, which a pair with a forced twin loads too."""
    forced, skip = maze_pair(twin=True), maze_pair()
    try:
        forced.reset(seed=3)
        for _ in range(40):
            last = forced.step(0, np.full(4, 3))[0]
        old = forced.get_state()
        assert set(old) == {"agent", "full"}
        obs, full = skip.set_state(old)  # an old checkpoint into a pair without a twin
        assert full is obs and np.array_equal(obs, last)
        new = skip.get_state()
        assert set(new) == {"agent"} and new["agent"]["procgen"] == old["agent"]["procgen"]
        obs, full = forced.set_state(new)  # a new checkpoint into a pair with a forced twin
        assert np.array_equal(obs, full)
        a, b = skip.step(0, np.full(4, 2)), forced.step(0, np.full(4, 2))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])

        bad = {"agent": old["agent"], "full": {**old["full"], "procgen": old["full"]["procgen"][::-1]}}
        with pytest.raises(LockstepError, match="procgen states differ"):
            skip.set_state(bad)
    finally:
        forced.close(), skip.close()
    coinrun = maze_pair(game="coinrun")
    try:
        with pytest.raises(ValueError, match="no full-view state"):
            coinrun.set_state({"agent": coinrun.get_state()["agent"]})
    finally:
        coinrun.close()


def step_slices(pair: FullViewPair, actions: np.ndarray, steppers: ThreadPoolExecutor) -> list[tuple]:
    """One step of every slice of ``pair``, the slices at once (as the learner's worker threads
    step them with ``env.pipeline=overlap``)."""
    return [s.result() for s in [steppers.submit(pair.step, part, actions[envs])
                                 for part, envs in enumerate(pair.slices)]]


# coinrun steps a twin beside its agent view, maze none; 0 threads: procgen steps in the caller.
@pytest.mark.parametrize("game,threads,parts", [("coinrun", 3, 1), ("coinrun", 0, 2), ("maze", 3, 2), ("maze", 0, 1)])
def test_stepping_threads_and_the_twin_beside_the_agent_change_no_number(game: str, threads: int, parts: int) -> None:
    """The explorer's threaded stepping (procgen's ``num_threads`` per batch, the twin stepped beside
    the agent view, slices at once) against the two views stepped one after the other by a single
    batch each on one procgen thread: the same frames, rewards, episode ends, infos and procgen
    states, bit for bit, across episode ends."""
    n, seed = 8, 11
    make = functools.partial(ProcgenVecEnv, game, levels=TRAIN, rand_seed=seed)
    pair = FullViewPair(functools.partial(make, num_threads=threads), n, parts)
    ref_agent = ProcgenVecEnv(game, n, TRAIN, rand_seed=seed, num_threads=1, center_agent=True)
    ref_full = ProcgenVecEnv(game, n, TRAIN, rand_seed=seed, num_threads=1, center_agent=False) if pair.twin else None
    steppers = ThreadPoolExecutor(parts)
    try:
        assert pair.twin == (game == "coinrun")
        obs, full = pair.reset(seed=seed)
        want_obs = ref_agent.reset(seed=seed)[0]
        want_full = ref_full.reset(seed=seed)[0] if pair.twin else want_obs
        assert np.array_equal(obs, want_obs) and np.array_equal(full, want_full)
        rng, ends = np.random.default_rng(2), 0
        for _ in range(250):
            actions = rng.integers(0, 15, n)
            got = step_slices(pair, actions, steppers)
            obs, reward, term, _, info = ref_agent.step(actions)
            full = ref_full.step(actions)[0] if pair.twin else obs
            for envs, (g_obs, g_full, g_reward, g_term, g_info) in zip(pair.slices, got):
                for a, b in ((g_obs, obs), (g_full, full), (g_reward, reward), (g_term, term)):
                    assert a.dtype == b.dtype and np.array_equal(a, b[envs])
                # a slice reports episode statistics when one of its own envs ended
                assert g_info.keys() == (info.keys() if term[envs].any() else {"level_seed"})
                assert all(np.array_equal(g_info[k], info[k][envs]) for k in g_info)
            ends += int(term.sum())
        assert ends >= 2, ends  # level changes were crossed
        state = pair.get_state()
        assert state["agent"]["procgen"] == ref_agent.get_state()["procgen"]
        if pair.twin:
            assert state["full"]["procgen"] == ref_full.get_state()["procgen"]
    finally:
        steppers.shutdown()
        pair.close(), ref_agent.close()
        if ref_full is not None:
            ref_full.close()


def test_a_twin_that_fails_to_step_fails_the_pair_step() -> None:
    """The twin steps in the pair's thread: its error reaches the caller, after the agent view's step."""
    pair = maze_pair(game="coinrun")
    try:
        pair.reset(seed=3)
        with pytest.raises(ValueError, match="twin broke"):
            pair.full.step = lambda part, actions: (_ for _ in ()).throw(ValueError("twin broke"))
            pair.step(0, np.zeros(4, np.int64))
    finally:
        pair.close()
