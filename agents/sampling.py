"""Per-member random streams and batched categorical sampling.

Each member owns its generators, seeded from its own seed, so that what a member draws does not
depend on which other members share its population (a member trained in a population equals the same member trained alone).
"""
from __future__ import annotations

import torch


def _mix(*parts: int) -> int:
    # An explicit mix rather than hash(): the streams must not depend on the Python version.
    out = 0
    for p, k in zip(parts, (1_000_003, 7_919, 104_729)):
        out += int(p) * k
    return out & 0x7FFF_FFFF_FFFF_FFFF


def make_generators(seeds: list[int], device: torch.device | str, salt: int) -> list[torch.Generator]:
    """One generator per member on ``device``; ``salt`` separates streams used for different things."""
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(_mix(s, salt))
        gens.append(g)
    return gens


def restore_generator(g: torch.Generator, state: torch.Tensor, seed: int, salt: int, update: int) -> bool:
    """Set ``g`` to a saved ``get_state()``; returns False if it had to start another stream.

    A generator's state has a per-device-type form (CPU: Mersenne Twister, 5,056 bytes; CUDA:
    Philox seed and offset, 16 bytes) that cannot be converted. A state saved on the other kind of
    device (a run resumed with another ``device``) therefore re-seeds ``g`` from (seed, salt,
    update) instead: deterministic, but not the stream the uninterrupted run would have drawn.
    """
    if state.numel() == g.get_state().numel():
        g.set_state(state)
        return True
    g.manual_seed(_mix(seed, salt, update + 1))  # update + 1: never the fresh stream of update 0
    return False


def gumbel_noise(generators: list[torch.Generator], num_envs: int, num_actions: int,
                 device: torch.device) -> torch.Tensor:
    """(M, N, A) Gumbel noise, member m drawing from generators[m] (M = len(generators))."""
    u = torch.stack([torch.rand(num_envs, num_actions, generator=g, device=device) for g in generators])
    return -torch.log(-torch.log(u.clamp_(min=1e-20, max=1.0 - 1e-7)))


def log_prob_entropy(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of ``actions`` and entropy of Categorical(logits), batched over any prefix."""
    logp = torch.log_softmax(logits, -1)
    chosen = logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return chosen, entropy
