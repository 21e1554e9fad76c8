"""Level fingerprints: which level seeds generate the same level, and which evaluation seeds are unseen.

ProcGen builds a level from its seed, but different seeds can build the same level
(openai/procgen#100). A level's fingerprint is a 16-byte BLAKE2b hash of the first frame of the
whole level (procgen ``center_agent=False``), drawn at the size that resolves every cell of it,
``envs/games.py:Game.level_frame_px``: the 64-px observation for the games whose agent sees the
whole level, procgen's 512-px render (``render_mode="rgb_array"``) for the others. For the games
that spawn most of their level during play (bigfish, plunder, starpilot:
``Game.level_reveal_steps``), the frames of that many no-op steps are hashed with it. Two kinds:

- ``exact``: drawn as played (backgrounds as the run uses them, themes and colours on). Equal
  fingerprints: the level looks the same to the agent, pixel for pixel.
- ``structure``: drawn with the drawing-only options off (``STRUCTURE_OPTIONS``: no backgrounds, one
  theme, monochrome assets). Equal fingerprints: the same layout (walls, platforms, items, enemies
  in the same places), whatever their look. Those options change drawing only, not the random
  draws that build a level (procgen's ``BasicAbstractGame::game_reset`` draws the background and
  themes either way), so the layout is the played level's and every exact match is a structural one.

What a fingerprint cannot tell: where play draws random numbers (chaser's monsters), two seeds
with the same layout can play out differently under other actions than the no-op; ``structure``
counts them as one level (its meaning: the same layout), ``exact`` too when they look the same.

How a fingerprint is computed: each seed's level is built by a one-env procgen batch restricted to
that seed (``num_levels=1``: ~2 ms here); for a 64-px game its observation is the fingerprinted
frame. Otherwise (512 px, or no-op steps to hash) the built level's state is moved (procgen's
``get_state``/``set_state``, as ``envs/split_batch.py`` moves envs) into one batch of up to
``batch_size`` envs, which draws (and steps) all of them per call: the 512-px drawing (5 to 50 ms a
level on the 2-core CPU) is most of the cost. A fingerprint depends on the seed alone, not on
``rand_seed``, the batch size or the level's position in the batch (tests/test_fingerprints.py).

Fingerprints are cached on disk, one ``.npz`` file per game, distribution mode, kind (exact: and
backgrounds) and procgen version, under ``cache_dir()``. The files hold arrays only (read with
``allow_pickle=False``) and a SHA-256 checksum of them; a file that does not load, is for other
options or fails its checksum is ignored with a ``FingerprintCacheWarning`` and recomputed. The
cache only saves time: where ``cache_dir()`` cannot be written (a read-only home on a cluster node),
the fingerprints computed are used without being kept, and a logged warning says how to keep them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium.utils import seeding

from envs.games import check_distribution_mode, get_game
from envs.levels import MAX_LEVEL_SEED, LevelExclusion, LevelRange, check_unseen_rule, get_split
from envs.procgen_vec import _import_procgen, reset_rand_seed

if TYPE_CHECKING:  # the config schema sits above envs; only its type is needed here
    from core.sections import EnvConfig

log = logging.getLogger("expgen")

KINDS = ("exact", "structure")
# Drawing-only options (procgen's defaults are False, False, False): the structural view of a level.
STRUCTURE_OPTIONS = {"use_backgrounds": False, "restrict_themes": True, "use_monochrome_assets": True}
DIGEST_BYTES = 16  # 128 bits: no accidental collision among the few million levels ever compared
DIGEST_DTYPE = np.dtype(f"S{DIGEST_BYTES}")
CACHE_FORMAT = "expgen-level-fingerprints/1"  # bump when the frame or hash definition changes
CACHE_ENV = "EXPGEN_LEVEL_CACHE"
# procgen's Game::step ends the episode at once when the action is -1 (``will_force_reset``): the env
# then starts its next level in the same step, without playing the level it was on.
FORCE_RESET = -1
NOOP = 4  # procgen's action 4 presses no key (ProcgenGym3Env.get_combos)


class FingerprintCacheWarning(UserWarning):
    """A fingerprint cache file was unreadable or did not match; it is ignored and recomputed."""


def cache_dir() -> Path:
    """Where fingerprint caches live: ``$EXPGEN_LEVEL_CACHE`` if set, else
    ``$XDG_CACHE_HOME/expgen-procgen/levels``, else ``~/.cache/expgen-procgen/levels``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "expgen-procgen" / "levels"


def drawing_options(kind: str, use_backgrounds: bool = True) -> dict[str, bool]:
    """procgen's drawing options for fingerprints of ``kind`` (``exact``: as played with
    ``use_backgrounds``; ``structure``: ``STRUCTURE_OPTIONS``). Raises ValueError for another kind."""
    if kind == "exact":
        return {"use_backgrounds": bool(use_backgrounds), "restrict_themes": False, "use_monochrome_assets": False}
    if kind == "structure":
        return dict(STRUCTURE_OPTIONS)
    raise ValueError(f"unknown fingerprint kind {kind!r}; choose one of: {', '.join(KINDS)}")


def frame_digest(*frames: np.ndarray) -> bytes:
    """The 16-byte fingerprint of a level's (H, W, 3) uint8 frames, in order: each frame's shape is
    hashed with its pixels."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for frame in frames:
        _add_frame(h, frame)
    return h.digest()


def _add_frame(h: Any, frame: np.ndarray) -> None:
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    h.update(repr(frame.shape).encode())
    h.update(frame.tobytes())


def seed_array(seeds: LevelRange | Iterable[int]) -> np.ndarray:
    """``seeds`` as an int64 array (a bounded ``LevelRange``: its seeds in order).

    Raises ValueError for the unbounded range (``num_levels=0``: 2**31 levels) and for seeds outside
    ``[0, 2**31 - 1)``, the seeds procgen can build a level from.
    """
    if isinstance(seeds, LevelRange):
        if seeds.num_levels == 0:
            raise ValueError("cannot fingerprint the full distribution (num_levels=0): give a bounded range or seeds")
        return np.arange(seeds.start_level, seeds.start_level + seeds.num_levels, dtype=np.int64)
    arr = np.asarray(list(seeds), dtype=np.int64).reshape(-1)
    bad = arr[(arr < 0) | (arr >= MAX_LEVEL_SEED)]
    if bad.size:
        raise ValueError(f"level seeds must lie in [0, {MAX_LEVEL_SEED}), got {bad[:5].tolist()}")
    return arr


# ---- computing ----------------------------------------------------------------------------------


def compute_fingerprints(game: str, distribution_mode: str, seeds: LevelRange | Iterable[int],
                         kind: str = "exact", *, use_backgrounds: bool = True, batch_size: int = 64,
                         rand_seed: int = 0) -> np.ndarray:
    """Fingerprints of ``seeds``' levels, computed now (no cache): (n,) ``DIGEST_DTYPE``, in seed order.

    ``batch_size`` envs draw the 512-px levels at once (memory: 0.75 MiB an env); ``rand_seed`` seeds
    the procgen batches (it changes no fingerprint). Raises ValueError for an unknown game, mode or
    kind, bad seeds or ``batch_size < 1``; RuntimeError if procgen built another level than asked.
    """
    get_game(game)
    check_distribution_mode(distribution_mode)
    options = drawing_options(kind, use_backgrounds)
    seeds = seed_array(seeds)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    px, steps = get_game(game).level_frame_px, get_game(game).level_reveal_steps
    procgen = _import_procgen()
    common = dict(env_name=game, distribution_mode=distribution_mode, center_agent=False, num_threads=0,
                  rand_seed=int(rand_seed), **options)
    out = np.empty(len(seeds), DIGEST_DTYPE)
    batch = None
    try:
        for lo in range(0, len(seeds), batch_size):
            chunk = seeds[lo:lo + batch_size]
            if px == 64 and not steps:  # the one-level batch's observation is the whole fingerprint
                out[lo:lo + len(chunk)] = [_build_level(procgen, common, s, digest=True) for s in chunk]
                continue
            # Otherwise the built levels move into one batch that draws (and steps) them together.
            states = [_build_level(procgen, common, s, digest=False) for s in chunk]
            if batch is None:
                render = {"render_mode": "rgb_array"} if px == 512 else {}
                batch = procgen(num=min(batch_size, len(seeds)), start_level=0, num_levels=0, **common, **render)
            # set_state needs one state per env: a short last chunk repeats its last level.
            batch.set_state(states + [states[-1]] * (batch.num - len(states)))
            hashes = [hashlib.blake2b(digest_size=DIGEST_BYTES) for _ in chunk]
            for t in range(steps + 1):
                if t:  # a level that ends restarts: a moved state keeps its one-level range
                    batch.act(np.full(batch.num, NOOP, np.int32))
                _, obs, _ = batch.observe()  # with render_mode, also draws every env at 512 px
                # gym3's get_info() builds a dict per env; ``_info``'s arrays hold the same.
                if t == 0:
                    _check_levels(batch._info["level_seed"][:len(chunk)], chunk)
                for h, frame in zip(hashes, batch._info["rgb"] if px == 512 else obs["rgb"]):
                    _add_frame(h, frame)
            out[lo:lo + len(chunk)] = [h.digest() for h in hashes]
    finally:
        if batch is not None:
            batch.close()
    return out


def _build_level(procgen: Any, common: dict[str, Any], seed: int, digest: bool) -> bytes:
    """A one-env batch on level ``seed`` alone: the digest of its 64-px first frame, or its procgen state."""
    env = procgen(num=1, start_level=int(seed), num_levels=1, **common)
    try:
        _, obs, _ = env.observe()
        _check_levels(env._info["level_seed"], [seed])
        return frame_digest(obs["rgb"][0]) if digest else env.get_state()[0]
    finally:
        env.close()


def _check_levels(got: np.ndarray, want: Iterable[int]) -> None:
    want = np.asarray(list(want), np.int64)
    if not np.array_equal(np.asarray(got, np.int64), want):
        raise RuntimeError(f"procgen built levels {np.asarray(got).tolist()[:8]} where levels "
                           f"{want.tolist()[:8]} were asked for")


# ---- the cache ----------------------------------------------------------------------------------


def _procgen_version() -> str:
    import procgen  # noqa: F401  (imported through envs.procgen_vec first: no gym banner)

    return str(getattr(procgen, "__version__", "unknown")).strip()


def cache_identity(game: str, distribution_mode: str, kind: str, use_backgrounds: bool = True) -> dict[str, Any]:
    """What a cache file's fingerprints depend on; a file is used only if its own matches exactly."""
    return {"format": CACHE_FORMAT, "game": game, "distribution_mode": distribution_mode, "kind": kind,
            "options": drawing_options(kind, use_backgrounds), "frame_px": get_game(game).level_frame_px,
            "reveal_steps": get_game(game).level_reveal_steps, "procgen": _procgen_version()}


def cache_path(game: str, distribution_mode: str, kind: str, use_backgrounds: bool = True) -> Path:
    """The cache file of one game, mode, kind (exact: and backgrounds) and procgen version."""
    name = kind if kind == "structure" else ("exact" if use_backgrounds else "exact-nobg")
    return cache_dir() / f"{game}-{distribution_mode}-{name}-procgen{_procgen_version()}.npz"


def _checksum(seeds: np.ndarray, digests: np.ndarray) -> str:
    return hashlib.sha256(seeds.astype("<i8").tobytes() + digests.tobytes()).hexdigest()


def read_cache(path: Path, identity: dict[str, Any]) -> dict[int, bytes]:
    """``seed -> fingerprint`` from a cache file; ``{}`` if there is none. A file that cannot be read
    as this format, belongs to other options (``identity``) or fails its checksum gives ``{}`` and a
    ``FingerprintCacheWarning`` naming it and why: its fingerprints are recomputed, never trusted."""
    try:
        if not path.is_file():  # inside try: stat fails (EACCES) in a folder that cannot be searched
            return {}
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"][()]))
            seeds, digests = f["seeds"], f["digests"]
        problem = None
        other = {k: meta.get(k) for k in identity if meta.get(k) != identity[k]}
        if other:
            problem = f"it was written for other settings ({other})"
        elif seeds.dtype != np.int64 or seeds.ndim != 1 or digests.dtype != DIGEST_DTYPE or digests.shape != seeds.shape:
            problem = "its arrays have the wrong types or shapes"
        elif meta.get("count") != len(seeds) or meta.get("checksum") != _checksum(seeds, digests):
            problem = "its checksum does not match its contents"
    except Exception as e:  # noqa: BLE001 (a damaged file can fail in zipfile, numpy or json)
        problem = f"it cannot be read ({type(e).__name__}: {e})"
    if problem is not None:
        warnings.warn(f"ignoring level fingerprint cache {path}: {problem}; recomputing",
                      FingerprintCacheWarning, stacklevel=3)
        return {}
    return dict(zip(seeds.tolist(), digests.tolist()))


def write_cache(path: Path, identity: dict[str, Any], entries: dict[int, bytes]) -> None:
    """Write ``entries`` atomically (a temporary file, then a rename): a reader sees the old file or
    the new one, never half of one. Processes that add seeds at once may lose each other's
    additions, which are then recomputed: never wrong, only slower."""
    seeds = np.array(sorted(entries), np.int64)
    digests = np.array([entries[s] for s in seeds.tolist()], DIGEST_DTYPE)
    meta = {**identity, "count": len(seeds), "checksum": _checksum(seeds, digests)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, seeds=seeds, digests=digests, meta=np.array(json.dumps(meta)))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache shared through $EXPGEN_LEVEL_CACHE is read by all
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def level_fingerprints(game: str, distribution_mode: str, seeds: LevelRange | Iterable[int],
                       kind: str = "exact", *, use_backgrounds: bool = True, cache: bool = True,
                       batch_size: int = 64, rand_seed: int = 0) -> np.ndarray:
    """Fingerprints of ``seeds``' levels: (n,) ``DIGEST_DTYPE`` (16 bytes each), in seed order.

    Compare fingerprints as arrays of this dtype (``np.isin``, ``==``): numpy drops the trailing
    zero bytes of an element it converts to Python ``bytes``, so ``frame_digest``'s 16 bytes equal
    ``np.array([d], DIGEST_DTYPE)``, not always the ``bytes`` read back from one element.

    ``kind``: ``exact`` (drawn as played, with ``use_backgrounds``) or ``structure``. With ``cache``,
    seeds in this game's cache file are read from it and the others computed
    (``compute_fingerprints``) and added to it; a cache folder that cannot be written is reported
    once (a logged warning) and the fingerprints are returned uncached. Raises ValueError as
    ``compute_fingerprints``.
    """
    seeds = seed_array(seeds)
    if not cache:
        return compute_fingerprints(game, distribution_mode, seeds, kind, use_backgrounds=use_backgrounds,
                                    batch_size=batch_size, rand_seed=rand_seed)
    identity = cache_identity(game, distribution_mode, kind, use_backgrounds)
    path = cache_path(game, distribution_mode, kind, use_backgrounds)
    known = read_cache(path, identity)
    missing = np.unique(seeds[[s not in known for s in seeds.tolist()]])
    if missing.size:
        start = time.perf_counter()
        new = compute_fingerprints(game, distribution_mode, missing, kind, use_backgrounds=use_backgrounds,
                                   batch_size=batch_size, rand_seed=rand_seed)
        log.info("fingerprinted %d %s %s levels (%s) in %.1fs", missing.size, game, distribution_mode,
                 kind, time.perf_counter() - start)
        known.update(zip(missing.tolist(), new.tolist()))
        with warnings.catch_warnings():  # a bad file was reported above; merge what others added since
            warnings.simplefilter("ignore", FingerprintCacheWarning)
            written_since = read_cache(path, identity)
        try:
            write_cache(path, identity, {**written_since, **known})
        except OSError as e:
            _warn_unwritable(path.parent, e)
    return np.array([known[s] for s in seeds.tolist()], DIGEST_DTYPE)


_UNWRITABLE: set[Path] = set()  # cache folders already reported, to say it once per process


def _warn_unwritable(folder: Path, error: OSError) -> None:
    """The cache folder cannot be written: the fingerprints are used uncached (only slower)."""
    if folder in _UNWRITABLE:
        return
    _UNWRITABLE.add(folder)
    log.warning("cannot keep level fingerprints in %s (%s: %s): they are recomputed each run; set %s "
                "to a writable folder to keep them", folder, type(error).__name__, error.strerror or error,
                CACHE_ENV)


# ---- unseen levels ------------------------------------------------------------------------------


def same_as_training(game: str, distribution_mode: str, seeds: LevelRange | Iterable[int],
                     train_levels: LevelRange, kind: str, *, use_backgrounds: bool = True,
                     cache: bool = True) -> np.ndarray:
    """(n,) bool: whether each of ``seeds`` builds a level whose ``kind`` fingerprint equals that of
    a level in ``train_levels`` (bounded). Raises ValueError as ``level_fingerprints``."""
    train = level_fingerprints(game, distribution_mode, train_levels, kind, use_backgrounds=use_backgrounds, cache=cache)
    mine = level_fingerprints(game, distribution_mode, seeds, kind, use_backgrounds=use_backgrounds, cache=cache)
    return np.isin(mine, train)


def predicted_levels(game: str, distribution_mode: str, levels: LevelRange, num_envs: int, rand_seed: int,
                     episodes: int) -> np.ndarray:
    """(num_envs, episodes) int64: the level seed env j of a batch built with ``rand_seed`` starts its
    k-th episode on (k = 0 is the level it starts on).

    Procgen draws each env's next level from the env's own generator, seeded from ``rand_seed`` and
    the env's index, at every episode end, whatever was played: so the sequence is found by ending
    every episode at once (action -1) ``episodes - 1`` times, without playing any of them. Raises
    ValueError if ``num_envs`` or ``episodes`` is below 1.
    """
    if num_envs < 1 or episodes < 1:
        raise ValueError(f"num_envs and episodes must be >= 1, got {num_envs} and {episodes}")
    env = _import_procgen()(num=num_envs, env_name=game, distribution_mode=distribution_mode,
                            start_level=levels.start_level, num_levels=levels.num_levels,
                            rand_seed=int(rand_seed), num_threads=0)
    try:
        out = np.empty((num_envs, episodes), np.int64)
        for k in range(episodes):
            if k:
                env.act(np.full(num_envs, FORCE_RESET, np.int32))
                env.observe()
            out[:, k] = env._info["level_seed"]
        return out
    finally:
        env.close()


def unseen_levels(env: "EnvConfig", split: str, rule: str, *, num_envs: int = 1, seed: int = 0,
                  episodes: int = 1) -> LevelExclusion:
    """The seeds of ``split`` that ``rule`` (``eval.unseen``) removes for a run whose env config is ``env``.

    ``test``: every seed of the range whose level equals a training level under ``rule``
    (independent of the other arguments). ``test-full``: among the levels that ``num_envs`` envs
    reset with ``seed`` (``evaluation/episodes.py:run_episodes``, ``ProcgenVecEnv.reset``) start on,
    until each env has met its quota of ``episodes`` on levels that are not removed, those that
    equal a training level. ``train`` and rule ``none``: nothing. Memoised per process.

    Raises ValueError for an unknown split or rule, a rule that cannot apply (test-full when
    training uses every level), or a rule that removes every seed of ``test``.
    """
    train = env.train_levels
    if split != "test-full":  # only test-full depends on how it is played
        num_envs, seed, episodes = 1, 0, 1
    return _unseen_levels(env.game, env.distribution_mode, bool(env.use_backgrounds), train.start_level,
                          train.num_levels, split, rule, num_envs, seed, episodes, str(cache_dir()))


@lru_cache(maxsize=64)
def _unseen_levels(game: str, mode: str, use_backgrounds: bool, start_level: int, num_levels: int,
                   split: str, rule: str, num_envs: int, seed: int, episodes: int, _cache_dir: str) -> LevelExclusion:
    train = LevelRange(start_level, num_levels)
    levels = get_split(split, train)
    check_unseen_rule(rule, split, train)
    if split == "train" or rule == "none":
        return LevelExclusion(split, "none" if split == "train" else rule, levels, train)
    start = time.perf_counter()
    kind = "exact" if rule == "exact" else "structure"

    def same(seeds: np.ndarray) -> np.ndarray:
        return same_as_training(game, mode, seeds, train, kind, use_backgrounds=use_backgrounds)

    if split == "test":
        seeds = seed_array(levels)
        excluded = seeds[same(seeds)]
        if len(excluded) == len(seeds):
            raise ValueError(f"every seed of test ({levels.describe()}) builds a level that {rule} matches "
                             f"a training level; use eval.unseen=exact or none")
        result = LevelExclusion(split, rule, levels, train, len(seeds), frozenset(excluded.tolist()))
    else:
        result = _test_full_exclusion(game, mode, levels, train, rule, same, num_envs, seed, episodes)
    log.info("%s: eval.unseen=%s removes %d of %d seeds checked (%.1fs)", split, rule,
             len(result.excluded), result.checked, time.perf_counter() - start)
    return result


def _test_full_exclusion(game: str, mode: str, levels: LevelRange, train: LevelRange, rule: str, same: Any,
                         num_envs: int, seed: int, episodes: int) -> LevelExclusion:
    # As ProcgenVecEnv.reset(seed=seed) builds its batch; procgen draws from every level then.
    rand_seed = reset_rand_seed(seed, seeding.np_random(seed)[0])
    # Episodes per env as evaluation/episodes.py:quotas (not imported: evaluation sits above envs).
    need = episodes // num_envs + (np.arange(num_envs) < episodes % num_envs)
    checked: set[int] = set()
    excluded: set[int] = set()
    horizon = int(need.max())
    for _ in range(20):  # each round looks further ahead; 20 rounds only if most levels are removed
        plan = predicted_levels(game, mode, levels, num_envs, rand_seed, horizon)
        removed = same(plan.reshape(-1)).reshape(plan.shape)
        kept_so_far = np.cumsum(~removed, axis=1)
        # Env j plays until its quota of kept levels: every level up to that one is met and checked.
        enough = kept_so_far[:, -1] >= need
        if enough.all():
            last = np.argmax(kept_so_far >= need[:, None], axis=1)
            for j in range(num_envs):
                met = plan[j, :last[j] + 1] if need[j] else plan[j, :0]
                checked.update(met.tolist())
                excluded.update(met[removed[j, :last[j] + 1]].tolist() if need[j] else [])
            return LevelExclusion("test-full", rule, levels, train, len(checked), frozenset(excluded))
        horizon *= 2
    raise RuntimeError(f"test-full: rule {rule!r} removes nearly every level the envs would start on")
