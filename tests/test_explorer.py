"""The exploration agent: lock-stepped full view, sequence replay through the GRU, resume."""
from __future__ import annotations

import collections
import functools
import sys

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from agents.sampling import log_prob_entropy
from core.checkpoint import load_latest
from core.runtime import Runtime
from envs.full_view import FullViewPair, LockstepError
from envs.levels import get_split
from envs.procgen_vec import ProcgenVecEnv
from envs.split_batch import SplitBatch
from tests.test_precision import ConvolutionDtypes
from training import checkpointing, explorer_learner
from training.explorer_learner import ExplorerLearner, env_threads
from training.loop import train
from training.native_learner import NativeLearner

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny batches on a shared 2-core CPU

EXPLORER = ["explorer.enabled=true", "ensemble.size=1", "env.game=chaser", "env.num_envs=4",
            "ppo.num_steps=48", "ppo.num_minibatches=2", "explorer.total_steps=384",
            "explorer.buffer_size=20"]


def make_explorer(cfg) -> ExplorerLearner:
    """The explorer's learner on the config's device and precision."""
    return ExplorerLearner(cfg, Runtime.resolve(cfg.device, cfg.network.precision))


def pair(game: str, agent_seed: int, full_seed: int, n: int = 8) -> FullViewPair:
    make = functools.partial(ProcgenVecEnv, game, levels=get_split("train"))
    p = FullViewPair(functools.partial(make, rand_seed=agent_seed), n)
    if full_seed != agent_seed:
        p.full = SplitBatch(lambda k: make(k, center_agent=False, rand_seed=full_seed), n)
    return p


@pytest.mark.slow  # 3,000 steps of both views
def test_views_stay_in_lockstep_over_thousands_of_steps() -> None:
    p = pair("coinrun", 3, 3)
    obs, full = p.reset(seed=3)
    rng, ends, differ = np.random.default_rng(0), 0, 0
    for _ in range(3000):  # raises LockstepError on any divergence
        obs, full, _, term, _ = p.step(0, rng.integers(0, 15, p.num_envs))
        ends += term.sum()
        differ += (obs != full).any()
    assert ends > 20  # many episode ends and level changes were crossed
    assert differ > 2900  # coinrun's full view really is another picture than the agent's
    p.close()


def test_divergence_is_detected() -> None:
    p = pair("coinrun", 3, 4)
    with pytest.raises(LockstepError, match="disagree"):
        p.reset(seed=3)
        p.full.reset(seed=4)  # a twin that plays other levels
        for _ in range(2000):
            p.step(0, np.zeros(p.num_envs, np.int64))


def test_sequence_replay_equals_the_step_by_step_rollout(small_cfg) -> None:
    trainer = make_explorer(small_cfg(*EXPLORER))
    trainer.collect()  # the second rollout starts from a non-zero GRU state
    trainer.collect()
    ro = trainer.ro
    assert ro.episode_starts.sum() > 0, "the test needs episode starts inside the rollout"
    assert trainer.start_state.abs().sum() > 0
    with torch.no_grad():
        logits, values, _ = trainer.pop(ro.obs, trainer.start_state, ro.episode_starts)
    torch.testing.assert_close(values, ro.values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_prob_entropy(logits, ro.actions)[0], ro.logprobs, rtol=1e-5, atol=1e-5)
    assert (ro.rewards >= 0).all() and (ro.rewards > 0).any()
    trainer.close()


def test_resets_matter_in_the_replay(small_cfg) -> None:
    """Replaying without the episode-start resets gives other values: the resets are real."""
    trainer = make_explorer(small_cfg(*EXPLORER))
    trainer.collect(), trainer.collect()
    with torch.no_grad():
        _, values, _ = trainer.pop(trainer.ro.obs, trainer.start_state, torch.zeros_like(trainer.ro.episode_starts))
    assert not torch.allclose(values, trainer.ro.values, atol=1e-5)
    trainer.close()


def test_explorer_resume_gives_identical_next_actions(small_cfg) -> None:
    cfg = small_cfg(*EXPLORER, "explorer.total_steps=192")
    first = make_explorer(cfg)
    train(first, cfg, first.runtime)  # one update, then a checkpoint
    first.collect()
    second = make_explorer(cfg)
    assert checkpointing.restore(second) and second.global_step == first.global_step - 0
    second.collect()
    assert torch.equal(first.ro.actions, second.ro.actions)
    torch.testing.assert_close(first.ro.rewards, second.ro.rewards)
    first.close(), second.close()


@pytest.mark.parametrize("cores,overrides,threads", [
    (64, [], 0),  # auto: resources.explorer_cpus (1) for two views: procgen steps in the calling thread
    (1, ["resources.explorer_cpus=8"], 0),  # no more than the cores this process may run on
    (64, ["resources.explorer_cpus=4"], 2),  # 4 CPUs, 2 views (coinrun has a twin)
    (64, ["resources.explorer_cpus=32"], 4),  # at most one thread per env of a batch
    (64, ["resources.explorer_cpus=32", "env.pipeline=overlap"], 2),  # a batch is half of env.num_envs
    (64, ["explorer.env_threads=3"], 3),
    (2, ["explorer.env_threads=0"], 0),
])
def test_explorer_env_threads(small_cfg, monkeypatch, cores, overrides, threads) -> None:
    """``explorer.env_threads``: auto (< 0) from the explorer's CPUs and the cores this process may
    use, or as given; the explorer's batches (both views) are built with it, whatever
    ``env.num_threads`` says."""
    monkeypatch.setattr(explorer_learner, "available_cores", lambda: cores)
    cfg = small_cfg(*EXPLORER, "env.game=coinrun", "env.num_threads=1", *overrides)
    assert env_threads(cfg) == threads
    trainer = make_explorer(cfg)
    batches = trainer.envs.agent.parts + trainer.envs.full.parts
    assert len(batches) == 2 * len(trainer.slices)
    assert {b._options["num_threads"] for b in batches} == {threads}
    trainer.close()


def test_explorer_rollouts_do_not_depend_on_its_env_threads(small_cfg) -> None:
    """fruitbot (a full-view twin stepped beside the agent view; random play ends its episodes
    within a rollout), two slices stepped by the learner's worker threads: procgen's threads per
    batch change no action, frame, episode start or kNN reward of two rollouts."""
    rollouts = []
    for threads in (0, 3):
        trainer = make_explorer(small_cfg(*EXPLORER, "env.game=fruitbot", "env.pipeline=overlap",
                                          f"explorer.env_threads={threads}"))
        assert trainer.envs.twin and len(trainer.slices) == 2
        rollouts.append([])
        for _ in range(2):
            trainer.collect()
            ro = trainer.ro
            rollouts[-1].append([t.clone() for t in (ro.obs, ro.actions, ro.episode_starts, ro.rewards, trainer.full)])
        trainer.close()
    first, second = rollouts
    assert sum(r[2].sum() for r in first) > 0  # episode ends: the kNN buffers restarted
    for a, b in zip(first, second):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_explorer_needs_whole_env_minibatches(small_cfg) -> None:
    with pytest.raises(ValueError, match="divisible"):
        make_explorer(small_cfg(*EXPLORER, "env.num_envs=3", "ppo.num_minibatches=2",
                                  "ppo.num_steps=32"))


def same(a, b) -> bool:
    """Checkpoint payloads equal value for value: tensors and arrays bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


# One level each whose episodes a random policy often ends within a rollout.
@pytest.mark.slow  # trains the explorer twice to compare them
@pytest.mark.parametrize("game,pipeline,level", [("maze", "overlap", 30), ("heist", "serial", 26)])
def test_explorer_without_the_twin_equals_the_explorer_with_it(small_cfg, monkeypatch, game, pipeline, level) -> None:
    """maze and heist draw the whole level in the agent's view: the explorer steps no full-view twin
    there, and trains exactly as with the twin forced on: the same kNN rewards in every rollout and
    the same checkpoints, tensor by tensor (the twin's env state aside, a copy of the agent's)."""
    runs = {}
    for twin in (None, True):
        monkeypatch.setattr(explorer_learner, "FullViewPair", functools.partial(FullViewPair, twin=twin))
        cfg = small_cfg(*EXPLORER, f"env.game={game}", f"env.pipeline={pipeline}", f"env.start_level={level}",
                        "env.num_levels=1", "explorer.total_steps=576", name=f"twin_{twin}")
        trainer = make_explorer(cfg)
        assert trainer.envs.twin is (twin is True)
        rewards, collect = [], trainer.collect

        def collect_and_keep_rewards(collect=collect, trainer=trainer, rewards=rewards):
            episodes = collect()
            rewards.append((trainer.ro.rewards.clone(), trainer.ro.episode_starts.sum()))
            return episodes

        trainer.collect = collect_and_keep_rewards
        train(trainer, cfg, trainer.runtime)
        trainer.close()
        runs[twin] = rewards, load_latest(cfg.layout.explorer.checkpoints)
    (rewards, ckpt), (ref_rewards, ref_ckpt) = runs[None], runs[True]
    assert len(rewards) == len(ref_rewards) == 3
    for (got, _), (want, _) in zip(rewards, ref_rewards):
        assert torch.equal(got, want)
    assert sum(dones for _, dones in ref_rewards) > 0  # episode ends: the kNN buffers restarted
    assert any((r > 0).any() for r, _ in rewards)
    env, ref_env = ckpt.pop("env"), ref_ckpt.pop("env")
    assert set(env) == {"agent"} and set(ref_env) == {"agent", "full"}
    assert same(env["agent"], ref_env["agent"]) and same(ref_env["full"]["procgen"], ref_env["agent"]["procgen"])
    assert same(ckpt, ref_ckpt)


class HostReads:
    """Counts, by calling function, the acting step's reads of tensors on the host and its uploads
    of numpy arrays (approximate on a CPU, where every tensor is a host tensor: these are the calls
    that synchronise with a GPU)."""

    READS = ("cpu", "item", "tolist", "__bool__")

    def __init__(self, monkeypatch) -> None:
        self.reads, self.uploads = collections.Counter(), collections.Counter()
        for name in self.READS:
            monkeypatch.setattr(torch.Tensor, name, self._count(getattr(torch.Tensor, name), self.reads))
        for name in ("as_tensor", "from_numpy", "tensor"):
            monkeypatch.setattr(torch, name, self._count(getattr(torch, name), self.uploads, numpy_only=True))

    @staticmethod
    def _count(fn, counter, numpy_only=False):
        def counted(*args, **kwargs):
            if not numpy_only or isinstance(args[0], np.ndarray):
                counter[sys._getframe(1).f_code.co_qualname] += 1
            return fn(*args, **kwargs)
        return counted


@pytest.mark.parametrize("game", ["chaser", "coinrun"])
def test_explorer_acting_reads_the_host_once_per_step_and_slice(small_cfg, monkeypatch, game) -> None:
    """The actions are the acting step's one host read (and the rollout's logged intrinsic returns
    its one read per rollout); episode ends and frames reach the device from the learner's host
    buffers only (pinned on CUDA, copied without blocking), with or without the twin."""
    trainer = make_explorer(small_cfg(*EXPLORER, f"env.game={game}", "env.pipeline=overlap"))
    buffers = {id(b) for name in ("host_obs", "host_term", "host_full") for b in getattr(trainer, name, [])}
    sources, to_device = [], trainer.to_device
    monkeypatch.setattr(trainer, "to_device", lambda host, out: (sources.append(id(host)), to_device(host, out)))
    counts = HostReads(monkeypatch)
    trainer.collect()
    steps, parts = trainer.ro.steps, len(trainer.slices)
    assert parts == 2
    assert counts.reads == {"NativeLearner.act": steps * parts, "ExplorerLearner.collect": 1}
    assert counts.uploads == {"NativeLearner.to_device": steps * parts * (3 if trainer.envs.twin else 2)}
    assert set(sources) <= buffers and trainer.envs.twin == (game == "coinrun")
    trainer.close()


class PageableUploads(TorchDispatchMode):
    """Records host-to-device copies that block the host: from pageable memory, or not non_blocking."""

    def __init__(self) -> None:
        super().__init__()
        self.blocking: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.copy_.default:
            dst, src, non_blocking = args[0], args[1], (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
            to = dst.device
        elif func is torch.ops.aten._to_copy.default:
            src, non_blocking = args[0], kwargs.get("non_blocking", False)
            to = torch.device(kwargs.get("device") or src.device)
        else:
            return func(*args, **kwargs)
        if src.device.type == "cpu" and to.type == "cuda" and not (non_blocking and src.is_pinned()):
            self.blocking.append(f"{func} {tuple(src.shape)} pinned={src.is_pinned()} non_blocking={non_blocking}")
        return func(*args, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync debug mode needs a GPU")
@pytest.mark.parametrize("game", ["maze", "coinrun"])
def test_explorer_acting_step_never_syncs_on_cuda(small_cfg, monkeypatch, game) -> None:
    """A whole rollout of acting (inference, env results, episode starts, kNN reward) under
    ``torch.cuda.set_sync_debug_mode("error")``: the only syncs allowed are the actions' read in
    ``NativeLearner.act`` (one per step and slice) and the rollout's one read of its intrinsic
    returns; no upload blocks the host (pinned buffers, non_blocking)."""
    trainer = make_explorer(small_cfg(*EXPLORER, f"env.game={game}", "device=cuda", "env.pipeline=overlap"))
    trainer.collect()  # warm-up: the first calls of a shape may sync (cuDNN autotuning, cuBLAS setup)
    allowed = {NativeLearner.act.__code__, ExplorerLearner.collect.__code__}
    reads, cpu = collections.Counter(), torch.Tensor.cpu

    def allowed_cpu(self, *args, **kwargs):
        caller = sys._getframe(1).f_code
        if caller not in allowed or self.device.type != "cuda":
            return cpu(self, *args, **kwargs)  # a sync here raises under the debug mode
        reads[caller.co_qualname] += 1
        torch.cuda.set_sync_debug_mode(0)
        try:
            return cpu(self, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(torch.Tensor, "cpu", allowed_cpu)
    uploads = PageableUploads()
    torch.cuda.synchronize()
    try:
        with uploads:
            torch.cuda.set_sync_debug_mode("error")
            trainer.collect()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    steps, parts = trainer.ro.steps, len(trainer.slices)
    assert reads == {"NativeLearner.act": steps * parts, "ExplorerLearner.collect": 1}
    assert uploads.blocking == []
    assert trainer.envs.twin == (game == "coinrun")
    trainer.close()


def test_explorer_update_never_reads_the_host(small_cfg, monkeypatch) -> None:
    """The update (GAE, every minibatch's replay through the GRU, PPO's steps) leaves its metrics on
    the device: none of its calls reads a tensor on the host (the loop reads the metrics once, in
    ``NativeLearner.iterate``). The GRU's resets are a mask on the device (``gru_sequence``; cutting
    the sequences into episodes on the host was one read per minibatch)."""
    trainer = make_explorer(small_cfg(*EXPLORER))
    trainer.collect(), trainer.collect()  # chaser's episodes end within the second rollout
    assert trainer.ro.episode_starts[:, 1:].sum() > 0  # resets inside the replayed sequences
    counts = HostReads(monkeypatch)
    metrics = trainer.learn()
    # torch.optim's Adam reads its step count (``_get_value``), a tensor it keeps on the CPU
    # whatever the device: no device sync. Nothing else may read.
    assert set(counts.reads) <= {"_get_value"} and counts.uploads == {}
    assert metrics and all(torch.is_tensor(v) for v in metrics.values())
    trainer.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync debug mode needs a GPU")
def test_explorer_update_never_syncs_on_cuda(small_cfg) -> None:
    """On CUDA, with torch's sync debugging set to raise: a whole explorer update (GAE, the value
    after the rollout, every minibatch's replay through the GRU from its start state, PPO's loss,
    clipping and Adam) makes no synchronising call, as the members' update
    (tests/test_members_update.py)."""
    trainer = make_explorer(small_cfg(*EXPLORER, "device=cuda"))
    try:
        trainer.collect()
        trainer.learn()  # first update: allocations, cuDNN's autotuner
        trainer.collect()
        assert trainer.ro.episode_starts[:, 1:].sum() > 0  # resets inside the replayed sequences
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            metrics = trainer.learn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert metrics and all(v.device.type == "cuda" for v in metrics.values())
    finally:
        trainer.close()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_explorer_trunk_follows_network_precision(small_cfg, precision) -> None:
    """``network.precision`` reaches the explorer's trunk as it does the members' (the explorer's
    runtime is theirs: ``network.tf32`` is applied process-wide where it is resolved, core/runtime.py):
    every convolution of its acting steps and of its update (the value after the rollout, each
    minibatch's replay, forward and backward) runs in bf16 autocast with ``bf16`` (a CPU runs it
    whether or not it multiplies bf16 natively), in fp32 with ``fp32``; parameters, gradients, the
    GRU's state and the rollout's values stay fp32."""
    trainer = make_explorer(small_cfg(*EXPLORER, f"network.precision={precision}"))
    assert trainer.pop.bf16 is (precision == "bf16")
    record = ConvolutionDtypes()
    with record:
        trainer.collect()
        acting = len(record.forward)
        trainer.learn()
    convolutions = 2  # network.kind=small
    assert acting == trainer.ro.steps * len(trainer.slices) * convolutions
    assert len(record.forward) > acting and record.backward
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert set(record.forward) == set(record.backward) == {(want, want)}
    assert trainer.ro.values.dtype == trainer.actor.state.dtype == torch.float32
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in trainer.params)
    trainer.close()
