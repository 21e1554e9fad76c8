"""ExpGen's test-time controller (docs/expgen.md, "Controller") as pure tensor logic.

The controller sees only actions: what each ensemble member proposes, shape ``(M, N)`` with member 0
the anchor, and what the explorer proposes, shape ``(N,)``. It decides per env whether the ensemble
agrees (execute its action) or not (hand control to the explorer for a burst of steps). There is no
environment and no network in here, so the rule can be tested exhaustively with hand-made tensors
and runs unchanged on any device. Everything is vectorised over envs; the only state is one burst
counter per env.

Two agreement modes:
- ``reference``: the authors' rule. Actions map to (overlapping) direction classes; the anchor's class
  is the first class, in table order, containing its action; votes = members whose action lies in it.
  In the authors' evaluation script the "else" class of some members (1, 2, 3, 5, 7, 9) lists
  action 9 where action 4 belongs; that slip is not copied (docs/expgen.md, "Departures").
- ``plurality``: a clean variant; votes = count of the most common exact action (ties to the smallest
  id), and that plurality action is what gets executed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.sections import ExpGenConfig, check_section
from envs.games import NUM_ACTIONS, get_game

# Procgen ids: 0 LD, 1 L, 2 LU, 3 D, 4 noop, 5 U, 6 RD, 7 R, 8 RU, 9-14 special keys.
FOUR_CLASS_NAMES = ("up", "right", "down", "left")
FOUR_CLASS_MEMBERS = ((5,), (6, 7, 8), (3,), (0, 1, 2))
SIX_CLASS_NAMES = ("up", "right", "down", "left", "fire", "else")
SIX_CLASS_MEMBERS = ((5, 2, 8), (6, 7, 8), (3, 0, 6), (0, 1, 2), (9,), (4, 10, 11, 12, 13, 14))

# P(n) for n = 1..10 in the reference: about Geometric(0.5), truncated at 10.
REFERENCE_BURST_PROBS = (0.55, 0.25) + (0.025,) * 8


def _membership(classes: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """Boolean table (num_classes, NUM_ACTIONS): entry [c, a] says action a belongs to class c."""
    table = torch.zeros(len(classes), NUM_ACTIONS, dtype=torch.bool)
    for c, members in enumerate(classes):
        table[c, list(members)] = True
    return table


FOUR_CLASSES = _membership(FOUR_CLASS_MEMBERS)
SIX_CLASSES = _membership(SIX_CLASS_MEMBERS)


def scaled_threshold(k_of_10: int, ensemble_size: int) -> int:
    """The vote threshold for ``ensemble_size`` members, given the per-game k out of 10.

    ``ceil(k * m / 10)`` keeps at least the same *fraction* of agreement the authors tuned for ten
    members (maze 6/10 becomes 2/3 with three members, not an impossible 6/3). Rounding up never asks
    for less agreement than the paper. Clamping to [1, m] keeps consensus reachable, and k = 1 stays 1
    at every size: it means "run member 0", since the anchor always agrees with itself.
    """
    if not 1 <= k_of_10 <= 10:
        raise ValueError(f"k_of_10 must lie in [1, 10], got {k_of_10!r}")
    if ensemble_size < 1:
        raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size!r}")
    k = -(-k_of_10 * ensemble_size // 10)  # exact integer ceil
    return min(max(k, 1), ensemble_size)


def sample_burst_lengths(
    settings: ExpGenConfig,
    n: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    burst_max: int | None = 10,
) -> torch.Tensor:
    """``n`` burst lengths (int64, all >= 1) from ``settings.burst``'s distribution; ``burst_max``
    caps geometric bursts (None: uncapped)."""
    if settings.burst == "fixed":
        return torch.full((n,), settings.burst_length, dtype=torch.int64, device=device)
    if settings.burst == "reference":
        probs = torch.tensor(REFERENCE_BURST_PROBS, device=device)
        return torch.multinomial(probs, n, replacement=True, generator=generator) + 1
    return _geometric(settings.burst_p, burst_max, n, device, generator)


def _geometric(
    p: float, cap: int | None, n: int, device: torch.device | str, generator: torch.Generator | None
) -> torch.Tensor:
    """Inverse-CDF draw of P(n) = (1-p)^(n-1) p, n >= 1, optionally capped."""
    if p >= 1.0:
        lengths = torch.ones(n, dtype=torch.int64, device=device)
    else:
        u = 1.0 - torch.rand(n, device=device, generator=generator, dtype=torch.float64)  # (0, 1]
        lengths = torch.floor(torch.log(u) / math.log1p(-p)).to(torch.int64) + 1
    return lengths if cap is None else lengths.clamp_max(cap)


@dataclass
class ControllerOutput:
    """Per-env result of one step; ``votes``/``consensus`` are reported even during a burst."""

    action: torch.Tensor  # (N,) int64, the action to execute
    explored: torch.Tensor  # (N,) bool, True where the action came from the explorer (or random)
    votes: torch.Tensor  # (N,) int64
    consensus: torch.Tensor  # (N,) bool, votes >= threshold


def reference_votes(member_actions: torch.Tensor, table: torch.Tensor,
                    unclassed_anchor: str = "up") -> torch.Tensor:
    """Votes for the anchor's class: members (anchor included) whose action lies in it.

    The anchor's class is the first class, in table order, containing its action. An anchor action
    in no class (noop or a special key in the 4-class games of maze and miner):
    - ``up`` (the authors' code): their class lookup falls to class 0, so the votes counted are the
      members choosing "up", possibly 0 (and the anchor's own action is executed on consensus);
    - ``exact``: a class of its own, so only exact matches vote for it (votes >= 1).
    """
    anchor = member_actions[0]  # (N,)
    in_class = table[:, member_actions]  # (K, M, N)
    anchor_in = table[:, anchor]  # (K, N)
    first = anchor_in.to(torch.int64).argmax(dim=0)  # (N,), first True; 0 if none
    per_class = in_class.sum(dim=1)  # (K, N)
    class_votes = per_class.gather(0, first.unsqueeze(0)).squeeze(0)
    if unclassed_anchor == "up":
        return class_votes
    exact_votes = (member_actions == anchor).sum(dim=0)
    return torch.where(anchor_in.any(dim=0), class_votes, exact_votes)


def plurality_votes(member_actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(votes, action): count of the most common exact action and that action, ties to smallest id."""
    n = member_actions.shape[1]
    counts = torch.zeros(n, NUM_ACTIONS, dtype=torch.int64, device=member_actions.device)
    counts.scatter_add_(1, member_actions.T, torch.ones_like(member_actions.T))
    votes = counts.max(dim=1).values
    ids = torch.arange(NUM_ACTIONS, device=member_actions.device).expand(n, NUM_ACTIONS)
    # Explicit smallest-id tie-break rather than relying on argmax's first-index behaviour.
    action = torch.where(counts == votes.unsqueeze(1), ids, NUM_ACTIONS).min(dim=1).values
    return votes, action


class ExpGenController:
    """Per-env ensemble vote plus explorer bursts, for ``num_envs`` envs stepped in lockstep.

    Ordering, our reading of the method's rule ("c is decremented every step. If there is no consensus
    and c <= 0, draw n and set c = n. While c > 0 take the explorer's action; otherwise the anchor's"):
    1. c -= 1 (first thing every step);
    2. if no consensus and c <= 0: c = n;
    3. c > 0 -> explore, else execute the consensus action.
    Consequences: a burst starts on the very step the disagreement is seen and lasts exactly n steps
    (c = n, n-1, ..., 1); consensus during a burst does not cut it short; the step right after a burst
    (c = 0) votes again. With no consensus step 2 always sets c >= 1, so disagreement always explores.
    The counter is clamped at 0 instead of running negative: equivalent for the rule (only c <= 0
    vs. c > 0 matters) and ``counter`` then reads as "burst steps left".
    """

    def __init__(
        self,
        settings: ExpGenConfig,
        num_envs: int,
        *,
        game: str,
        ensemble_size: int | None = None,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        burst_max: int | None = 10,
    ) -> None:
        """``settings``: the config's ``expgen`` section as it is (checked here as the config is);
        ``game`` gives the class table and, where ``settings.threshold`` < 0, the per-game k, scaled
        to ``ensemble_size`` members (``scaled_threshold``). ``burst_max`` caps geometric bursts
        (None: uncapped). Raises ValueError (``ConfigError`` for the settings) on bad input."""
        check_section("expgen", settings)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs!r}")
        if burst_max is not None and (not isinstance(burst_max, int) or burst_max < 1):
            raise ValueError(f"burst_max must be an integer >= 1 or None, got {burst_max!r}")
        g = get_game(game)
        if settings.threshold > 0:
            self.threshold = settings.threshold
        elif ensemble_size is None:
            raise ValueError("expgen.threshold < 0 means the game's k scaled to the ensemble: give ensemble_size")
        else:
            self.threshold = scaled_threshold(g.vote_threshold, ensemble_size)
        self.settings, self.burst_max = settings, burst_max
        self.four_classes = g.four_direction_classes
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.generator = generator
        self.table = (FOUR_CLASSES if self.four_classes else SIX_CLASSES).to(self.device)
        self.counter = torch.zeros(num_envs, dtype=torch.int64, device=self.device)

    def reset(self, mask: torch.Tensor | None = None) -> None:
        """Zero the burst counters: all of them, or those where ``mask`` is True (episode ended)."""
        if mask is None:
            self.counter.zero_()
        else:
            mask = mask.to(device=self.device, dtype=torch.bool)
            self.counter = torch.where(mask, 0, self.counter)

    def step(self, member_actions: torch.Tensor, explorer_actions: torch.Tensor) -> ControllerOutput:
        """One decision for every env; see the class docstring for the ordering."""
        self._check_inputs(member_actions, explorer_actions)
        member_actions = member_actions.to(self.device, torch.int64)
        explorer_actions = explorer_actions.to(self.device, torch.int64)
        self.counter = (self.counter - 1).clamp_min(0)
        votes, consensus_action = self._vote(member_actions)
        consensus = votes >= self.threshold
        # Draw for every env every step: the generator advances by the same amount whichever envs
        # start a burst, so the stream stays reproducible and there is no data-dependent shape.
        lengths = sample_burst_lengths(self.settings, self.num_envs, self.device, self.generator, self.burst_max)
        start = ~consensus & (self.counter <= 0)
        self.counter = torch.where(start, lengths, self.counter)
        explored = self.counter > 0
        explore_action = self._explore_actions(explorer_actions)
        action = torch.where(explored, explore_action, consensus_action)
        return ControllerOutput(action=action, explored=explored, votes=votes, consensus=consensus)

    def _vote(self, member_actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.settings.controller == "reference":
            return reference_votes(member_actions, self.table, self.settings.unclassed_anchor), member_actions[0]
        return plurality_votes(member_actions)

    def _explore_actions(self, explorer_actions: torch.Tensor) -> torch.Tensor:
        if not self.settings.random_explorer:
            return explorer_actions
        return torch.randint(
            0, NUM_ACTIONS, (self.num_envs,), device=self.device, generator=self.generator
        )

    def _check_inputs(self, member_actions: torch.Tensor, explorer_actions: torch.Tensor) -> None:
        if member_actions.dim() != 2 or member_actions.shape[1] != self.num_envs:
            raise ValueError(
                f"member_actions must have shape (M, {self.num_envs}), "
                f"got {tuple(member_actions.shape)}"
            )
        if member_actions.shape[0] < 1:
            raise ValueError("member_actions needs at least one member (the anchor)")
        if explorer_actions.shape != (self.num_envs,):
            raise ValueError(
                f"explorer_actions must have shape ({self.num_envs},), "
                f"got {tuple(explorer_actions.shape)}"
            )
        if self.threshold > member_actions.shape[0]:
            raise ValueError(
                f"threshold {self.threshold} exceeds the ensemble size "
                f"{member_actions.shape[0]}: "
                "consensus would be impossible; use scaled_threshold()"
            )
