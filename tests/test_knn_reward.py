"""Tests for the explorer's episodic k-NN reward (agents/knn_reward.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.knn_reward import EpisodicKNNReward, embed_frames, embedding_dim, embedding_scale


class ReferenceKNN:
    """Brute-force per-env reference: a Python list of this episode's frames, last B kept."""

    def __init__(self, k: int, buffer_size: int) -> None:
        self.k, self.buffer_size = k, buffer_size
        self.frames: list[list[np.ndarray]] = []

    def reset(self, first: np.ndarray) -> None:
        self.frames = [[row.astype(np.float64)] for row in first]

    def step(self, x: np.ndarray, done: np.ndarray) -> np.ndarray:
        rewards = np.zeros(len(x))
        for i, (row, finished) in enumerate(zip(x.astype(np.float64), done)):
            if finished:
                self.frames[i] = [row]
                continue
            dists = sorted(float(np.linalg.norm(row - f)) for f in self.frames[i])
            rewards[i] = dists[self.k - 1] if len(dists) >= self.k else dists[-1]
            self.frames[i] = (self.frames[i] + [row])[-self.buffer_size:]
        return rewards


@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_matches_bruteforce_reference(k: int) -> None:
    rng = np.random.default_rng(k)
    num_envs, dim, buffer_size, steps = 5, 6, 7, 120
    module = EpisodicKNNReward(num_envs, dim, k=k, buffer_size=buffer_size)
    reference = ReferenceKNN(k, buffer_size)
    first = rng.normal(size=(num_envs, dim)).astype(np.float32)
    module.reset(torch.from_numpy(first))
    reference.reset(first)
    for _ in range(steps):
        x = rng.normal(size=(num_envs, dim)).astype(np.float32)
        # Short and long episodes: some envs end often, others wrap the 7-slot buffer many times.
        done = rng.random(num_envs) < np.array([0.0, 0.02, 0.1, 0.3, 0.6])
        got = module.step(torch.from_numpy(x), torch.from_numpy(done))
        assert got.dtype == torch.float32 and got.shape == (num_envs,)
        np.testing.assert_allclose(got.numpy(), reference.step(x, done), rtol=1e-5, atol=1e-5)


def test_repeated_frame_earns_exactly_zero_once_stored_k_times() -> None:
    k = 3
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, size=(4, 2, 64, 64, 3), dtype=np.uint8))
    distinct, repeated = [embed_frames(f) for f in frames[:3]], embed_frames(frames[3])
    module = EpisodicKNNReward(2, embedding_dim(), k=k, buffer_size=500)
    not_done = torch.zeros(2, dtype=torch.bool)
    module.reset(distinct[0])
    for emb in distinct[1:]:
        assert (module.step(emb, not_done) > 0).all()
    # The repeated frame is stored 0, 1, 2 times before these calls: still a distinct frame among
    # the k nearest, so the reward stays positive.
    for _ in range(k):
        assert (module.step(repeated, not_done) > 0).all()
    # From now on k copies of the frame are stored: exactly zero, not a rounding residue.
    for _ in range(5):
        assert torch.equal(module.step(repeated, not_done), torch.zeros(2))


def test_done_gives_zero_and_restarts_buffer() -> None:
    module = EpisodicKNNReward(2, 4, k=3, buffer_size=10)
    old, new, probe = torch.zeros(2, 4), torch.full((2, 4), 5.0), torch.full((2, 4), 1.0)
    module.reset(old)
    for _ in range(4):
        module.step(old, torch.zeros(2, dtype=torch.bool))
    reward = module.step(new, torch.tensor([True, False]))
    assert reward[0] == 0.0 and reward[1] == pytest.approx(10.0)
    assert module.counts.tolist() == [1, 6]
    # Env 0's buffer holds only the new episode's first frame, so the old frames no longer count:
    # the reward is the distance to that single frame (largest available, fewer than k stored).
    reward = module.step(probe, torch.zeros(2, dtype=torch.bool))
    assert reward[0] == pytest.approx(8.0)  # ||(1,1,1,1) - (5,5,5,5)||
    assert reward[1] == pytest.approx(2.0)  # 3rd nearest of five zeros and one 5-vector


def test_state_dict_round_trip_resumes_identically() -> None:
    gen = torch.Generator().manual_seed(0)
    module = EpisodicKNNReward(3, 5, k=2, buffer_size=4)
    module.reset(torch.randn(3, 5, generator=gen))
    for _ in range(6):
        module.step(torch.randn(3, 5, generator=gen), torch.rand(3, generator=gen) < 0.2)
    restored = EpisodicKNNReward(3, 5, k=2, buffer_size=4)
    restored.load_state_dict(module.state_dict())
    for _ in range(6):
        x, done = torch.randn(3, 5, generator=gen), torch.rand(3, generator=gen) < 0.2
        assert torch.equal(module.step(x, done), restored.step(x, done))
    with pytest.raises(ValueError):
        EpisodicKNNReward(3, 5, k=2, buffer_size=8).load_state_dict(module.state_dict())


def test_embed_frames_matches_numpy_average_pooling() -> None:
    frames = np.random.default_rng(1).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    got = embed_frames(torch.from_numpy(frames))
    assert got.shape == (2, 1323) and got.dtype == torch.float32 and embedding_dim() == 1323
    pooled = (frames[:, :63, :63].astype(np.float64) / 255.0).reshape(2, 21, 3, 21, 3, 3).mean((2, 4))
    expected = pooled.transpose(0, 3, 1, 2).reshape(2, -1)  # channels-first flatten
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"k": -1}, {"buffer_size": 0}, {"k": 1.5},
                                    {"num_envs": 0}, {"dim": 0}])
def test_bad_constructor_arguments_raise(kwargs: dict) -> None:
    args = {"num_envs": 2, "dim": 3, **kwargs}
    with pytest.raises(ValueError):
        EpisodicKNNReward(**args)


def test_bad_inputs_raise() -> None:
    module = EpisodicKNNReward(2, 3)
    with pytest.raises(RuntimeError):
        module.step(torch.zeros(2, 3), torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError):
        module.reset(torch.zeros(3, 3))
    module.reset(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        module.step(torch.zeros(2, 3), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError):
        embed_frames(torch.zeros(2, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError):
        embed_frames(torch.zeros(1, 64, 64, 3, dtype=torch.uint8), pool=0)


def test_integer_state_is_half_the_bytes_and_restores_bit_for_bit() -> None:
    """Embeddings are window sums / embedding_scale: the checkpoint stores the sums as uint16."""
    rng = np.random.default_rng(2)
    frames = [torch.from_numpy(rng.integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)) for _ in range(12)]
    frames[3][:] = 255  # the largest sum, 9 * 255
    kwargs = dict(num_envs=4, dim=embedding_dim(), k=3, buffer_size=8, scale=embedding_scale())
    module = EpisodicKNNReward(**kwargs)
    module.reset(embed_frames(frames[0]))
    done = torch.tensor([False, True, False, False])
    for f in frames[1:10]:
        module.step(embed_frames(f), done)
    state = module.state_dict()
    assert state["buffer"].dtype == torch.uint16
    restored = EpisodicKNNReward(**kwargs)
    restored.load_state_dict(state)
    assert torch.equal(restored.buffer, module.buffer)  # bit for bit, so rewards resume exactly
    for f in frames[10:]:
        assert torch.equal(module.step(embed_frames(f), done), restored.step(embed_frames(f), done))
    # A float32 state (checkpoints written before the integer store) still loads.
    legacy = EpisodicKNNReward(**kwargs)
    legacy.load_state_dict({**state, "buffer": restored.buffer.clone()})
    assert torch.equal(legacy.buffer, restored.buffer)


def test_integer_state_refuses_embeddings_that_are_not_window_sums() -> None:
    module = EpisodicKNNReward(2, 3, buffer_size=4, scale=embedding_scale())
    module.reset(torch.full((2, 3), 0.3))
    with pytest.raises(ValueError, match="without scale"):
        module.state_dict()


@pytest.mark.usefixtures("one_thread")  # tiny batches on a shared 2-core CPU
@pytest.mark.parametrize("game", ["maze", "heist", "coinrun"])
def test_reward_on_the_pairs_full_view_equals_the_twins(game: str) -> None:
    """The kNN reward of the explorer's env pair (envs/full_view.py) is unchanged by skipping the
    full-view twin where the agent view is the full view (maze, heist): computed on the pair's full
    view without the twin, it equals the reward on the forced twin's frames, step for step. Where the
    camera follows the agent (coinrun) the pair keeps its twin, whose reward differs from the agent
    view's: the twin is needed there."""
    import functools

    from envs.full_view import FullViewPair
    from envs.levels import get_split
    from envs.procgen_vec import ProcgenVecEnv

    make = functools.partial(ProcgenVecEnv, game, levels=get_split("train"), rand_seed=7)
    pair, forced = FullViewPair(make, 4), FullViewPair(make, 4, twin=True)
    assert pair.twin == (game == "coinrun")
    kwargs = dict(num_envs=4, dim=embedding_dim(), k=3, buffer_size=50)
    on_pair, on_twin, on_agent = (EpisodicKNNReward(**kwargs) for _ in range(3))
    try:
        obs, full = pair.reset(seed=7)
        ref_obs, ref_full = forced.reset(seed=7)
        on_pair.reset(embed_frames(torch.from_numpy(full)))
        on_twin.reset(embed_frames(torch.from_numpy(ref_full)))
        on_agent.reset(embed_frames(torch.from_numpy(ref_obs)))
        rng, differs, ends = np.random.default_rng(3), 0, 0
        for _ in range(200):
            actions = rng.integers(0, 15, 4)
            _, full, _, term, _ = pair.step(0, actions)
            ref_obs, ref_full, _, ref_term, _ = forced.step(0, actions)
            done = torch.from_numpy(term)
            reward = on_pair.step(embed_frames(torch.from_numpy(full)), done)
            assert torch.equal(reward, on_twin.step(embed_frames(torch.from_numpy(ref_full)), done))
            agent_view = on_agent.step(embed_frames(torch.from_numpy(ref_obs)), done)
            differs += not torch.equal(reward, agent_view)
            ends += int(term.sum())
        assert (differs > 150) == (game == "coinrun")
        assert ends > 0 or game != "maze"  # maze's episodes end within 200 steps: buffers restarted
    finally:
        pair.close(), forced.close()


def unallocated_step(buffer, counts, positions, x, done, k):
    """The reward step as it was before its working tensors were preallocated, transcribed: every
    intermediate a new tensor, the state returned anew. (reward, buffer, counts, positions)."""
    size = buffer.shape[1]
    dist = torch.cdist(x.unsqueeze(1), buffer, compute_mode="donot_use_mm_for_euclid_dist").squeeze(1)
    dist = dist.masked_fill(~(torch.arange(size) < counts.unsqueeze(1)), float("inf"))
    kk = min(k, size)
    smallest = torch.topk(dist, kk, dim=1, largest=False, sorted=True).values
    reward = smallest.gather(1, counts.clamp(min=1, max=kk).sub(1).unsqueeze(1)).squeeze(1).masked_fill(done, 0.0)
    slot = torch.where(done, torch.zeros_like(positions), positions)
    buffer = buffer.clone()
    buffer[torch.arange(len(x)), slot] = x
    counts = torch.where(done, torch.ones_like(counts), (counts + 1).clamp(max=size))
    return reward, buffer, counts, (slot + 1) % size


@pytest.mark.parametrize("k,buffer_size", [(3, 6), (1, 4), (8, 5)])
def test_step_equals_the_unallocated_computation_and_keeps_its_tensors(k: int, buffer_size: int) -> None:
    """Rewards and state bit for bit equal to the step before preallocation, over wrapped buffers,
    episode ends and fewer-than-k slots, on real frame embeddings; the state and working tensors
    never move (what a captured CUDA graph replays on), loading a state included."""
    rng = np.random.default_rng(k)
    num_envs = 4
    module = EpisodicKNNReward(num_envs, embedding_dim(), k=k, buffer_size=buffer_size, scale=embedding_scale())

    def frames() -> torch.Tensor:
        return embed_frames(torch.from_numpy(rng.integers(0, 256, (num_envs, 64, 64, 3), dtype=np.uint8)))

    module.reset(frames())
    buffer, counts, positions = module.buffer.clone(), module.counts.clone(), module.positions.clone()
    names = ["buffer", "counts", "positions", "_empty", "_smallest", "_pick"]
    addresses = [getattr(module, name).data_ptr() for name in names]
    for step in range(40):
        x, done = frames(), torch.from_numpy(rng.random(num_envs) < [0.0, 0.05, 0.2, 0.5])
        if step == 20:  # a resumed module continues the same episodes
            module.load_state_dict({name: t.clone() for name, t in module.state_dict().items()})
        got = module.step(x, done)
        want, buffer, counts, positions = unallocated_step(buffer, counts, positions, x, done, k)
        assert torch.equal(got, want)
        assert torch.equal(module.buffer, buffer) and torch.equal(module.counts, counts)
        assert torch.equal(module.positions, positions)
        assert [getattr(module, name).data_ptr() for name in names] == addresses
    assert (counts == buffer_size).any() and (got > 0).any()  # buffers wrapped, rewards earned
