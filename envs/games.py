"""Per-game constants of ProcGen and of ExpGen, in one place.

Everything that differs between games lives here: the names procgen accepts, the return ranges
used for normalised scores (Cobbe et al. 2020, easy and hard modes), the explorer's discount, the
ExpGen vote threshold (docs/expgen.md), whether the agent already sees the whole level, and
IDAAC's tuned settings (``idaac.use_best_hps``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

NUM_ACTIONS = 15
DISTRIBUTION_MODES = ("easy", "hard")


@dataclass(frozen=True)
class IDAACSettings:
    """IDAAC's per-game settings: the reference's ``hyperparams.py`` (rraileanu/idaac at 2fe3020),
    read by ``train.py --use_best_hps``. ``discriminator_hidden`` is its ``clf_hidden_size``, used
    only where the discriminator is non-linear (its ``nonlin_envs``)."""

    value_epoch: int
    value_freq: int
    adv_loss_coef: float
    order_loss_coef: float
    nonlinear_discriminator: bool
    discriminator_hidden: int


IDAAC_DEFAULTS = IDAACSettings(9, 1, 0.25, 0.001, False, 4)  # every game the table does not tune


@dataclass(frozen=True)
class Game:
    name: str
    easy_range: tuple[float, float]  # (R_min, R_max) for the normalised score, easy mode
    hard_range: tuple[float, float]
    explorer_gamma: float  # discount of the maximum-entropy explorer (docs/expgen.md, "Explorer")
    vote_threshold: int  # consensus threshold k out of 10 members (docs/expgen.md, "Controller")
    four_direction_classes: bool  # maze and miner vote over 4 direction classes, others over 6
    success_reward: float | None = None  # games whose only reward is a success bonus
    # The agent's frames are the full-level frames (procgen's center_agent=False), bit for bit: the
    # game sets ``options.center_agent`` itself in every level reset, to false (bigfish, bossfight,
    # chaser, leaper, plunder, starpilot) or to false outside memory mode (dodgeball, heist, maze,
    # miner), so center_agent=True and False build the same game. The explorer then needs no
    # second, full-view batch (envs/full_view.py). Checked over thousands of random-action steps
    # in easy and hard mode, with and without backgrounds (tests/test_full_view.py).
    full_view_is_agent_view: bool = field(kw_only=True)
    idaac: IDAACSettings = field(default=IDAAC_DEFAULTS, kw_only=True)
    # Steps of the no-op action whose frames join the first frame in a level's fingerprint
    # (envs/fingerprints.py), for games that spawn most of their level during play: bigfish,
    # plunder and starpilot start with the agent nearly alone, so one frame cannot tell their
    # levels apart (bigfish easy: 167 of 200 test seeds would share a training level's first
    # layout; after 100 steps none do). Elsewhere 100 more steps changed no count (docs/levels.md).
    level_reveal_steps: int = field(default=0, kw_only=True)

    @property
    def level_frame_px(self) -> int:
        """Side, in pixels, of the full-level frame that resolves every cell of a level.

        64 (the observation itself) where the agent's view is the whole level: those levels are
        drawn to fit the 64-px frame the agent plays on. 512 (procgen's ``render_mode="rgb_array"``
        render, gym3 ``info["rgb"]``) for the games whose camera follows the agent: their whole
        level (``center_agent=False``) squeezed into 64 px is about 1 px per cell, so cells can
        merge or vanish. Used by level fingerprints (envs/fingerprints.py).
        """
        return 64 if self.full_view_is_agent_view else 512

    def return_range(self, mode: str) -> tuple[float, float]:
        return self.easy_range if mode == "easy" else self.hard_range

    def normalised_score(self, mean_return: float, mode: str) -> float:
        lo, hi = self.return_range(mode)
        return (mean_return - lo) / (hi - lo)


_G = Game
GAMES: dict[str, Game] = {
    g.name: g
    for g in [
        _G("bigfish", (1, 40), (0, 40), 0.99, 8, False, full_view_is_agent_view=True, level_reveal_steps=100,
           idaac=IDAACSettings(9, 32, 0.05, 0.01, True, 4)),
        _G("bossfight", (0.5, 13), (0.5, 13), 0.99, 1, False, full_view_is_agent_view=True),
        _G("caveflyer", (3.5, 12), (2, 13.4), 0.9, 2, False, full_view_is_agent_view=False),
        _G("chaser", (0.5, 13), (0.5, 14.2), 0.5, 2, False, full_view_is_agent_view=True,
           idaac=IDAACSettings(1, 1, 0.15, 0.001, False, 4)),
        _G("climber", (2, 12.6), (1, 12.6), 0.99, 2, False, full_view_is_agent_view=False,
           idaac=IDAACSettings(9, 1, 0.05, 0.001, True, 64)),
        _G("coinrun", (5, 10), (5, 10), 0.99, 1, False, 10.0, full_view_is_agent_view=False),
        _G("dodgeball", (1.5, 19), (1.5, 19), 0.9, 2, False, full_view_is_agent_view=True,
           idaac=IDAACSettings(9, 32, 0.25, 0.001, True, 64)),
        _G("fruitbot", (-1.5, 32.4), (-0.5, 27.2), 0.99, 1, False, full_view_is_agent_view=False),
        _G("heist", (3.5, 10), (2, 10), 0.5, 8, False, 10.0, full_view_is_agent_view=True),
        _G("jumper", (3, 10), (1, 10), 0.99, 1, False, 10.0, full_view_is_agent_view=False),
        _G("leaper", (3, 10), (1.5, 10), 0.99, 1, False, 10.0, full_view_is_agent_view=True),
        _G("maze", (5, 10), (4, 10), 0.9, 6, True, 10.0, full_view_is_agent_view=True),
        _G("miner", (1.5, 13), (1.5, 20), 0.9, 2, True, full_view_is_agent_view=True,
           idaac=IDAACSettings(9, 32, 0.25, 0.1, True, 64)),
        _G("ninja", (3.5, 10), (2, 10), 0.9, 2, False, 10.0, full_view_is_agent_view=False),
        _G("plunder", (4.5, 30), (3, 30), 0.9, 2, False, full_view_is_agent_view=True, level_reveal_steps=100,
           idaac=IDAACSettings(1, 8, 0.3, 0.1, False, 4)),
        _G("starpilot", (2.5, 64), (1.5, 35), 0.9, 1, False, full_view_is_agent_view=True, level_reveal_steps=100),
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
