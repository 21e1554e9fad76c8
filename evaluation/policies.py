"""The policies eval.py plays: each member alone, the vote, the explorer, and ExpGen.

A policy maps a batch of frames (G, N, 64, 64, 3) to actions (G, N) and is told after every step
which envs finished an episode (recurrent state resets, controller counters). All members always run
in one batched forward of the stacked ``Population``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from agents.acting import ActionPicker, PopulationActor
from agents.controller import ExpGenController, plurality_votes
from agents.population import Population


class Policy:
    """What a mode plays: ``act`` maps frames (G, N, 64, 64, 3) to actions (G, N); ``groups`` = G."""

    groups = 1
    explored: torch.Tensor | None = None  # (N,) True where this step's action was exploration

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, info: dict) -> None:
        """Called after every env step of group ``info['group']`` (``terminated`` marks episode ends)."""


class MemberPolicy(Policy):
    """Member m plays env batch m: one batched forward for all members."""

    def __init__(self, pop: Population, pick: ActionPicker) -> None:
        self.pop, self.pick, self.groups = pop, pick, pop.size

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self.pick(self.pop(obs)[0])


def member_actions(pop: Population, pick: ActionPicker, obs: torch.Tensor) -> torch.Tensor:
    """Every member's action on one env batch (1, N, ...): (M, N). ``expand`` shares the frames."""
    return pick(pop(obs.expand(pop.size, *obs.shape[1:]))[0])


class VotePolicy(Policy):
    """The plurality of the members' exact actions (ties to the smallest id); never explores."""

    def __init__(self, pop: Population, pick: ActionPicker) -> None:
        self.pop, self.pick = pop, pick

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return plurality_votes(member_actions(self.pop, self.pick, obs))[1].unsqueeze(0)


class ExplorerPolicy(Policy):
    """The explorer alone (its GRU state carried across steps, reset at episode starts)."""

    def __init__(self, actor: PopulationActor) -> None:
        self.actor = actor

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)[0]

    def observe(self, info: dict) -> None:
        self.actor.episode_ended(0, info["terminated"])


@dataclass
class ExpGenTally:
    """Explore steps, consensus steps and vote counts, over the steps of counted episodes only.

    ``run_episodes`` decides which episodes count (an env's first ``quota`` ones, on levels not
    skipped by ``eval.unseen``); the others are not in the returns, so their steps are not counted
    either. Per-env accumulators (N envs) are added to the totals when a counted episode ends.
    """

    num_envs: int
    members: int
    ep_votes: np.ndarray = field(init=False)  # (N, M + 1) vote-count histogram of running episodes
    ep_explore: np.ndarray = field(init=False)
    ep_consensus: np.ndarray = field(init=False)
    votes: np.ndarray = field(init=False)
    explore_steps: int = 0
    consensus_steps: int = 0

    def __post_init__(self) -> None:
        n = self.num_envs
        self.ep_votes = np.zeros((n, self.members + 1), np.int64)
        self.ep_explore = np.zeros(n, np.int64)
        self.ep_consensus = np.zeros(n, np.int64)
        self.votes = np.zeros(self.members + 1, np.int64)

    def step(self, votes: np.ndarray, explored: np.ndarray, consensus: np.ndarray,
             terminated: np.ndarray, counted: np.ndarray) -> None:
        """(N,) arrays of one step: vote counts, explored and consensus flags, episode ends, and
        which of those ends are counted episodes (``info["episode"] >= 0`` of ``run_episodes``)."""
        self.ep_votes[np.arange(len(votes)), votes] += 1
        self.ep_explore += explored
        self.ep_consensus += consensus
        self.votes += self.ep_votes[counted].sum(0)
        self.explore_steps += int(self.ep_explore[counted].sum())
        self.consensus_steps += int(self.ep_consensus[counted].sum())
        for acc in (self.ep_votes, self.ep_explore, self.ep_consensus):
            acc[terminated] = 0

    @property
    def steps(self) -> int:
        return int(self.votes.sum())


class ExpGenPolicy(Policy):
    """All members and the explorer act every step; the controller picks per env
    (docs/expgen.md, "Controller")."""

    def __init__(self, pop: Population, pick: ActionPicker, explorer: PopulationActor | None,
                 controller: ExpGenController, tally: ExpGenTally) -> None:
        self.pop, self.pick, self.explorer = pop, pick, explorer
        self.controller, self.tally = controller, tally
        self.out = None

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        actions = member_actions(self.pop, self.pick, obs)
        if self.explorer is not None:  # advanced on every real frame, used or not
            explorer = self.explorer(obs)[0][0]
        else:  # random_explorer ablation without an explorer: the controller draws the actions
            explorer = torch.zeros_like(actions[0])
        self.out = self.controller.step(actions, explorer)
        self.explored = self.out.explored
        return self.out.action.unsqueeze(0)

    def observe(self, info: dict) -> None:
        term = np.asarray(info["terminated"], bool)
        self.tally.step(self.out.votes.cpu().numpy(), self.out.explored.cpu().numpy(),
                        self.out.consensus.cpu().numpy(), term, np.asarray(info["episode"]) >= 0)
        self.controller.reset(torch.from_numpy(term))
        if self.explorer is not None:
            self.explorer.episode_ended(0, term)
