"""Per-game constants of ProcGen and of ExpGen, in one place.

Everything that differs between games lives here: the names procgen accepts, the return ranges
used for normalised scores (Cobbe et al. 2020, easy and hard modes), the explorer's discount and the
ExpGen vote threshold (docs/expgen.md).
"""
from __future__ import annotations

from dataclasses import dataclass

NUM_ACTIONS = 15
DISTRIBUTION_MODES = ("easy", "hard")


@dataclass(frozen=True)
class Game:
    name: str
    easy_range: tuple[float, float]  # (R_min, R_max) for the normalised score, easy mode
    hard_range: tuple[float, float]
    explorer_gamma: float  # discount of the maximum-entropy explorer (docs/expgen.md, "Explorer")
    vote_threshold: int  # consensus threshold k out of 10 members (docs/expgen.md, "Controller")
    four_direction_classes: bool  # maze and miner vote over 4 direction classes, others over 6
    success_reward: float | None = None  # games whose only reward is a success bonus

    def return_range(self, mode: str) -> tuple[float, float]:
        return self.easy_range if mode == "easy" else self.hard_range

    def normalised_score(self, mean_return: float, mode: str) -> float:
        lo, hi = self.return_range(mode)
        return (mean_return - lo) / (hi - lo)


_G = Game
GAMES: dict[str, Game] = {
    g.name: g
    for g in [
        _G("bigfish", (1, 40), (0, 40), 0.99, 8, False),
        _G("bossfight", (0.5, 13), (0.5, 13), 0.99, 1, False),
        _G("caveflyer", (3.5, 12), (2, 13.4), 0.9, 2, False),
        _G("chaser", (0.5, 13), (0.5, 14.2), 0.5, 2, False),
        _G("climber", (2, 12.6), (1, 12.6), 0.99, 2, False),
        _G("coinrun", (5, 10), (5, 10), 0.99, 1, False, 10.0),
        _G("dodgeball", (1.5, 19), (1.5, 19), 0.9, 2, False),
        _G("fruitbot", (-1.5, 32.4), (-0.5, 27.2), 0.99, 1, False),
        _G("heist", (3.5, 10), (2, 10), 0.5, 8, False, 10.0),
        _G("jumper", (3, 10), (1, 10), 0.99, 1, False, 10.0),
        _G("leaper", (3, 10), (1.5, 10), 0.99, 1, False, 10.0),
        _G("maze", (5, 10), (4, 10), 0.9, 6, True, 10.0),
        _G("miner", (1.5, 13), (1.5, 20), 0.9, 2, True),
        _G("ninja", (3.5, 10), (2, 10), 0.9, 2, False, 10.0),
        _G("plunder", (4.5, 30), (3, 30), 0.9, 2, False),
        _G("starpilot", (2.5, 64), (1.5, 35), 0.9, 1, False),
    ]
}


def get_game(name: str) -> Game:
    """Look a game up by name; an unknown name raises ValueError listing the valid ones."""
    try:
        return GAMES[name]
    except KeyError:
        raise ValueError(
            f"unknown ProcGen game {name!r}; choose one of: {', '.join(sorted(GAMES))}"
        ) from None


def check_distribution_mode(mode: str) -> str:
    if mode not in DISTRIBUTION_MODES:
        raise ValueError(
            f"unknown distribution_mode {mode!r}; choose one of: {', '.join(DISTRIBUTION_MODES)}"
        )
    return mode
