"""Evaluate a trained run on held-out levels: every member, the ensemble vote, the explorer, ExpGen.

``evaluate_run(run_dir, overrides)`` reads ``runs/<name>/config.yaml`` (plus ``key=value`` overrides
such as ``eval.split=test-full``), loads every member at one checkpoint step, the newest all of them
have (``evaluation/loading.py``), into one ``Population`` (one batched forward for all members per
step) and the explorer's newest checkpoint if there is one, and
plays ``eval.episodes`` complete episodes per agent on ``eval.split`` in each of ``eval.modes``
(docs/expgen.md, "Evaluation"):

- ``member``: every member alone, each in its own env batch (all members in one forward per step);
- ``vote``: the plurality of the members' exact actions (ties to the smallest id), no exploration;
- ``explorer``: the maximum-entropy explorer alone;
- ``expgen``: the test-time rule of ``agents/controller.py``.

Every mode resets its envs with the same ``eval.seed``, so all agents meet the same levels in the
same order, and collects episodes with per-env quotas (``evaluation/episodes.py``), so short episodes are
not over-sampled. Same seed, same numbers. Episode i is played in the same env slot on the same level
by every mode, so ExpGen is compared with the other modes episode by episode (``paired_differences``:
paired bootstrap CIs). Writing tables, plots, TensorBoard and the per-episode records
(``evaluation/records.py``) is ``evaluation/report.py``'s job; ``evaluate`` returns the JSON-ready
results and the records as a DataFrame.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from agents.acting import ActionPicker, PopulationActor
from agents.controller import ExpGenController
from core.config import Config, ConfigError
from core.runtime import Runtime
from core.sections import EVAL_MODES
from envs.fingerprints import unseen_levels
from envs.levels import LevelExclusion, get_split, unseen_summary
from envs.make import make_env
from evaluation.episodes import EpisodeStats, run_episodes
from evaluation.loading import EvalAgents, check_writable, load_agents, load_eval_config
from evaluation.policies import ExpGenPolicy, ExpGenTally, ExplorerPolicy, MemberPolicy, Policy, VotePolicy
from evaluation.records import COLUMNS, episode_table
from evaluation.statistics import iqm_summary, paired_difference, summarize_stats
from evaluation.video import EpisodeRecorder, write_episodes

log = logging.getLogger("expgen")



# ---- playing -------------------------------------------------------------------------------------


@dataclass
class EvalContext:
    """Everything a mode needs: config, networks, device, and where videos go; what each mode
    played (``played``; ``explore``: ExpGen's explore fraction per episode) for the per-episode
    records and the paired differences."""

    cfg: Config
    agents: EvalAgents
    runtime: Runtime
    num_envs: int
    videos: list[str] = field(default_factory=list)
    played: dict[str, EpisodeStats] = field(default_factory=dict)
    explore: dict[str, np.ndarray] = field(default_factory=dict)  # mode -> (G, episodes)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def seed(self) -> int:
        return self.cfg.eval.seed

    @property
    def unseen(self) -> LevelExclusion:
        """The seeds of eval.split whose level equals a training level under eval.unseen (memoised)."""
        cfg = self.cfg
        return unseen_levels(cfg.env, cfg.eval.split, cfg.eval.unseen, num_envs=self.num_envs,
                             seed=self.seed, episodes=cfg.eval.episodes)

    def picker(self, seeds: list[int]) -> ActionPicker:
        return ActionPicker(seeds, self.device, self.seed, self.cfg.expgen.sample)


@torch.no_grad()
def play(ctx: EvalContext, policy: Policy, mode: str) -> EpisodeStats:
    """``eval.episodes`` episodes per group on ``eval.split``; records env 0 of group 0 if asked.
    Kept in ``ctx.played[mode]``, with ``ctx.explore[mode]`` for a policy that explores (ExpGen)."""
    cfg = ctx.cfg
    envs = [make_env(cfg.env, ctx.num_envs, cfg.eval.split, rand_seed=ctx.seed) for _ in range(policy.groups)]
    recorder = EpisodeRecorder(cfg.eval.video) if cfg.eval.video > 0 else None
    explore = np.full((policy.groups, cfg.eval.episodes), np.nan)  # per counted episode
    explored = np.zeros(ctx.num_envs)  # explored steps of each env's running episode (group 0)

    def act(obs: torch.Tensor) -> torch.Tensor:
        actions = policy.act(obs)
        if recorder is not None and recorder.active:
            marked = policy.explored is not None and bool(policy.explored[0])
            recorder.add(obs[0, 0].cpu().numpy(), marked)
        return actions

    def on_step(info: dict) -> None:
        policy.observe(info)
        if policy.explored is not None and info["group"] == 0:  # this step's action was exploration
            explored[:] += policy.explored.cpu().numpy()
            done = info["episode"] >= 0
            if done.any():
                explore[0, info["episode"][done]] = explored[done] / info["episode_length"][done]
            explored[info["terminated"]] = 0
        if recorder is not None and info["group"] == 0:
            level = info["prev_level_seed"][0] if "prev_level_seed" in info else None
            recorder.end_step(bool(info["terminated"][0]), level, counted=bool(info["episode"][0] >= 0))

    try:
        stats = run_episodes(act, envs, cfg.eval.episodes, ctx.device, ctx.seed, on_step,
                             skip_levels=ctx.unseen.excluded)
    finally:
        for env in envs:
            env.close()
    if recorder is not None:
        paths = write_episodes(recorder, cfg.layout.videos(cfg.eval.name), mode)
        ctx.videos += [str(p.relative_to(cfg.layout.root)) for p in paths]
        if len(paths) < cfg.eval.video:
            log.warning("%s: env 0 finished %d of the %d episodes asked for video",
                        mode, len(paths), cfg.eval.video)
    ctx.played[mode] = stats
    if policy.explored is not None:
        ctx.explore[mode] = explore
    return stats


# ---- modes ---------------------------------------------------------------------------------------


def evaluate_member(ctx: EvalContext) -> dict[str, Any]:
    """Every member alone; the headline is pooled over members, plus per-member results and the IQM."""
    agents = ctx.agents
    stats = play(ctx, MemberPolicy(agents.population, ctx.picker(agents.member_seeds)), "member")
    members = [
        {"member": m, "step": agents.member_steps[m], **summarize_stats(stats, ctx.cfg, m)}
        for m in range(agents.size)
    ]
    return {**summarize_stats(stats, ctx.cfg), "members": members, "iqm": iqm_summary(stats, ctx.cfg)}


def evaluate_vote(ctx: EvalContext) -> dict[str, Any]:
    """The ensemble's plurality action every step; no exploration."""
    policy = VotePolicy(ctx.agents.population, ctx.picker(ctx.agents.member_seeds))
    return summarize_stats(play(ctx, policy, "vote"), ctx.cfg, 0)


def evaluate_explorer(ctx: EvalContext) -> dict[str, Any]:
    """The explorer alone (its GRU state carried across steps, reset at episode starts)."""
    policy = ExplorerPolicy(explorer_actor(ctx))
    return summarize_stats(play(ctx, policy, "explorer"), ctx.cfg, 0)


def explorer_actor(ctx: EvalContext) -> PopulationActor:
    return PopulationActor(ctx.agents.explorer, ctx.num_envs, ctx.picker([ctx.cfg.explorer.seed]), ctx.device)


def evaluate_expgen(ctx: EvalContext) -> dict[str, Any]:
    """ExpGen: consensus action or explorer bursts per env; also explore fraction and vote counts."""
    cfg, agents, m = ctx.cfg, ctx.agents, ctx.agents.size
    generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    controller = ExpGenController(cfg.expgen, ctx.num_envs, game=cfg.env.game, ensemble_size=m, device=ctx.device,
                                  generator=generator)
    s = cfg.expgen
    tally = ExpGenTally(ctx.num_envs, m)
    explorer = None if agents.explorer is None else explorer_actor(ctx)
    policy = ExpGenPolicy(agents.population, ctx.picker(agents.member_seeds), explorer, controller, tally)
    result = summarize_stats(play(ctx, policy, "expgen"), cfg, 0)
    steps = max(tally.steps, 1)
    mean_votes = float((np.arange(m + 1) * tally.votes).sum() / steps)
    result.update(
        explore_fraction=tally.explore_steps / steps,
        consensus_fraction=tally.consensus_steps / steps,
        agreement=mean_votes / m,
        mean_votes=mean_votes,
        vote_histogram=tally.votes.tolist(),
        steps=tally.steps,
        controller={"mode": s.controller, "threshold": controller.threshold, "burst": s.burst,
                    "burst_p": s.burst_p, "burst_length": s.burst_length,
                    "four_classes": controller.four_classes, "random_explorer": s.random_explorer},
    )
    return result


# What plays each mode of the config's choices (core/sections.py:EvalMode, the one list of modes).
MODE_FUNCTIONS: dict[str, Callable[[EvalContext], dict[str, Any]]] = {
    mode: globals()[f"evaluate_{mode}"] for mode in EVAL_MODES}


def missing_requirement(mode: str, cfg: Config, agents: EvalAgents) -> str | None:
    """Why ``mode`` cannot run with these agents, or None when it can."""
    needs_explorer = mode == "explorer" or (mode == "expgen" and not cfg.expgen.random_explorer)
    if needs_explorer and agents.explorer is None:
        return agents.explorer_missing
    return None


def check_something_to_evaluate(ctx: EvalContext, skipped: dict[str, str]) -> None:
    """ConfigError, before any work, when no mode of ``eval.modes`` can run on this run (an
    evaluation of nothing would replace the results of a real one): it names what each mode lacks
    and the modes this run can evaluate."""
    cfg = ctx.cfg
    if any(mode not in skipped for mode in cfg.eval.modes):
        return
    why = "; ".join(f"{mode!r} needs the explorer: {reason}" for mode, reason in skipped.items())
    possible = [mode for mode in EVAL_MODES if missing_requirement(mode, cfg, ctx.agents) is None]
    if "expgen" not in possible:  # ExpGen's ablation with a uniform-random explorer needs none
        possible.append("expgen with expgen.random_explorer=true")
    raise ConfigError(f"nothing to evaluate in {cfg.layout.root} with eval.modes=[{','.join(cfg.eval.modes)}]: "
                      f"{why}. This run can evaluate: {', '.join(possible)} (--modes); no results were written")


def check_same_split(path: Path, cfg: Config) -> None:
    """ConfigError, before any work, when ``path`` (a results.json this evaluation would replace)
    holds an evaluation on another split: one folder's results describe one split."""
    try:
        split = json.loads(path.read_text()).get("split")
    except (OSError, ValueError, AttributeError):  # none yet, or not ours: nothing to keep apart
        return
    if split is None or split == cfg.eval.split:
        return
    raise ConfigError(
        f"{path} holds an evaluation on split {split!r}, and this one, on split {cfg.eval.split!r}, would "
        f"replace it: give this one its own folder with --name (e.g. --name {cfg.eval.split}), or move or "
        "delete that evaluation first"
    )


def results_header(ctx: EvalContext) -> dict[str, Any]:
    """What was evaluated, on which levels, with which seed and checkpoints."""
    cfg, agents = ctx.cfg, ctx.agents
    return {
        "run": cfg.name,
        "name": cfg.eval.name,
        "game": cfg.env.game,
        "distribution_mode": cfg.env.distribution_mode,
        "split": cfg.eval.split,
        "levels": get_split(cfg.eval.split, cfg.env.train_levels).describe(),
        "unseen": unseen_summary(ctx.unseen),  # rule, seeds removed and kept (envs/levels.py)
        "train_levels": cfg.env.train_levels.describe(),
        "episodes": cfg.eval.episodes,
        "seed": cfg.eval.seed,
        "num_envs": ctx.num_envs,
        "sample": cfg.expgen.sample,
        "members": agents.size,
        "checkpoints": checkpoints_summary(agents),
    }


def checkpoints_summary(agents: EvalAgents) -> dict[str, Any]:
    """Each agent's checkpoint step; ``step``: the members' one step (None when they differ, with
    ``warning`` saying so); ``newer``: members' newer checkpoints passed over for that step."""
    out: dict[str, Any] = {"members": agents.member_steps, "explorer": agents.explorer_step, "step": agents.step}
    if agents.newer_steps:
        out["newer"] = {f"member_{m}": s for m, s in agents.newer_steps.items()}
    if agents.mixed_steps:
        out["warning"] = agents.mixed_steps
    return out


def evaluation_context(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> EvalContext:
    """Config, device and networks, checked before any episode is played."""
    cfg = load_eval_config(run_dir, overrides)
    runtime = Runtime.from_config(cfg)  # as in training
    agents = load_agents(cfg, runtime)
    return EvalContext(cfg, agents, runtime, num_envs=min(cfg.eval.num_envs, cfg.eval.episodes))


# ---- ExpGen against the other modes, episode by episode -----------------------------------------


def paired_differences(ctx: EvalContext) -> list[dict[str, Any]]:
    """ExpGen minus the best member, the members' IQM, the vote and the explorer, in mean return and
    success rate, each with a paired 95% bootstrap CI over the episodes (``paired_difference``):
    every mode played episode i in the same env slot on the same level. The best member is picked on
    these episodes (optimistic for it). [] without an ExpGen evaluation.
    """
    played = ctx.played
    if "expgen" not in played:
        return []
    expgen = played["expgen"]
    sides: list[tuple[str, str | None, str, list[int]]] = []  # label, agent, mode, groups
    if "member" in played:
        best = int(np.argmax(played["member"].returns.mean(1)))
        sides.append(("best member", f"member_{best}", "member", [best]))
        sides.append(("members (IQM)", None, "member", list(range(played["member"].returns.shape[0]))))
    sides += [(mode, mode, mode, [0]) for mode in ("vote", "explorer") if mode in played]
    out = []
    for label, agent, mode, groups in sides:
        other = played[mode]
        if not (other.level_seeds[groups] == expgen.level_seeds[0]).all():  # cannot happen: say so if it does
            log.warning("expgen - %s: the modes met different levels; no paired difference", label)
            continue
        out.append({
            "a": "expgen", "b": label, "agent": agent,
            "return": paired_difference(expgen.returns[0], list(other.returns[groups]), ctx.seed),
            "success": paired_difference(expgen.successes[0].astype(np.float64),
                                         list(other.successes[groups].astype(np.float64)), ctx.seed),
        })
    return out


def episode_records(ctx: EvalContext) -> pd.DataFrame:
    """Every counted episode of every mode and agent played so far, one row each
    (``evaluation/records.py``)."""
    tables = []
    for mode, stats in ctx.played.items():
        agents = [f"member_{g}" for g in range(stats.returns.shape[0])] if mode == "member" else [mode]
        tables.append(episode_table(mode, agents, stats, ctx.explore.get(mode)))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(COLUMNS))


@dataclass
class Evaluation:
    """What ``evaluate`` returns: the JSON-ready results and the per-episode records."""

    results: dict[str, Any]
    episodes: pd.DataFrame  # evaluation/records.py's COLUMNS, one row per counted episode


def evaluate_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """``evaluate(run_dir, overrides).results``: the JSON-ready results only."""
    return evaluate(run_dir, overrides).results


def evaluate(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Evaluation:
    """Evaluate every mode of ``eval.modes`` on a run directory: the JSON-ready results (with
    ``differences``: ``paired_differences``) and the per-episode records.

    Modes whose agent is missing (no explorer checkpoint) are skipped with a printed note and listed
    under ``skipped``; when every mode asked for would be skipped, ConfigError. Videos (``eval.video``
    > 0) are written to ``<run>/eval/videos`` (``eval/<name>/videos`` for a named evaluation). Raises
    ConfigError (also when the folder written holds a results.json of another split: it is never
    replaced), CheckpointError, FileNotFoundError (eval.py's messages) before any episode is played
    and before anything is written.
    """
    ctx = evaluation_context(run_dir, overrides)
    cfg = ctx.cfg
    skipped = {mode: reason for mode in cfg.eval.modes
               if (reason := missing_requirement(mode, cfg, ctx.agents)) is not None}
    check_something_to_evaluate(ctx, skipped)
    check_same_split(cfg.layout.eval(cfg.eval.name) / "results.json", cfg)
    check_writable(cfg.layout.eval(cfg.eval.name))  # before minutes of episodes, not after
    results: dict[str, Any] = {**results_header(ctx), "modes": {}, "skipped": {}}
    for mode in dict.fromkeys(cfg.eval.modes):  # de-duplicated, in the order asked
        if mode in skipped:
            log.warning("skipping mode %r: %s", mode, skipped[mode])
            results["skipped"][mode] = skipped[mode]
            continue
        start = time.perf_counter()
        results["modes"][mode] = MODE_FUNCTIONS[mode](ctx)
        log.info("%s: %d episodes on %s in %.1fs", mode, ctx.cfg.eval.episodes, results["levels"],
                 time.perf_counter() - start)
    results["differences"] = paired_differences(ctx)
    if ctx.videos:
        results["videos"] = ctx.videos
    return Evaluation(results, episode_records(ctx))
