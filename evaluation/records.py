"""Per-episode records of an evaluation: one row per episode played and counted, every mode and
agent, written beside results.json as ``episodes.csv``.

Why CSV (through pandas) and not Parquet: an evaluation has at most a few tens of thousands of rows,
where Parquet's compression and typed columns buy nothing a reader would notice, while a CSV opens
in every tool a researcher already has (``head``, a spreadsheet, R, ``pandas.read_csv``) without an
extra library and diffs as text.

Columns (``COLUMNS``):

- ``mode``: member | vote | explorer | expgen; ``agent``: ``member_<i>`` in the member mode (as its
  run folder), else the mode's name;
- ``episode``: the episode's index i in the mode's results (0 .. episodes-1); ``env``: the env slot
  that played it, ``env_episode``: that env's counted episodes before this one. Every mode and
  every member plays episode i in the same env slot on the same level: rows with equal ``episode``
  are paired;
- ``level_seed``, ``return``, ``length`` (env steps), ``success`` (the level was completed);
- ``explore_fraction``: ExpGen only, the fraction of the episode's steps on which the controller
  handed control to the explorer; empty for the other modes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.episodes import EpisodeStats

EPISODES_CSV = "episodes.csv"
COLUMNS = ("mode", "agent", "episode", "env", "env_episode", "level_seed", "return", "length", "success",
           "explore_fraction")


def episode_table(mode: str, agents: list[str], stats: EpisodeStats, explore: np.ndarray | None = None
                  ) -> pd.DataFrame:
    """The rows of one mode: ``agents[g]`` played group g of ``stats`` (G groups x n episodes).

    ``explore``: (G, n) explore fraction per episode, or None (NaN in the table).
    Raises ValueError when ``agents`` does not name every group.
    """
    g_count, n = stats.returns.shape
    if len(agents) != g_count:
        raise ValueError(f"{mode}: {len(agents)} agent names for {g_count} groups of episodes")
    explore = np.full((g_count, n), np.nan) if explore is None else np.asarray(explore, np.float64)
    return pd.DataFrame({
        "mode": mode,
        "agent": np.repeat(agents, n),
        "episode": np.tile(np.arange(n), g_count),
        "env": np.tile(stats.env_slots, g_count),
        "env_episode": np.tile(stats.env_episodes, g_count),
        "level_seed": stats.level_seeds.ravel(),
        "return": stats.returns.ravel().astype(np.float64),
        "length": stats.lengths.ravel(),
        "success": stats.successes.ravel(),
        "explore_fraction": explore.ravel(),
    }, columns=list(COLUMNS))


def write_episode_table(table: pd.DataFrame, path: Path) -> Path:
    """Write ``table`` as CSV, whole or not at all (a temporary file renamed over ``path``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_episode_table(path: Path) -> pd.DataFrame:
    """An ``episodes.csv`` back as a DataFrame with ``COLUMNS`` (``success`` as bool).

    Raises FileNotFoundError, or ValueError when the file lacks a column.
    """
    table = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} is not an episodes.csv written by eval.py: no column(s) {missing}")
    table["success"] = table["success"].astype(bool)
    return table
