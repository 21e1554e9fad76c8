"""What eval.py evaluates: a run's saved config (plus overrides) and its networks, every member at
one checkpoint step (the newest step all of them have) and the explorer at its newest.

A run whose members are still training (``train.py`` running, or its jobs at different progress)
has members at different newest steps; the vote and ExpGen would then combine networks of different
ages. ``load_members`` picks the newest step every member has a readable checkpoint for (training
keeps each agent's newest few: core/checkpoint.py) and says when a member has a newer one; only
when the members share no step does it take each one's newest, and ``EvalAgents.mixed_steps`` says
so (printed and written to results.json). The explorer is trained on its own budget
(``explorer.total_steps``), so its step is never the members': it is its own newest.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.population import Population
from agents.registry import spec_from_dict
from core.checkpoint import CheckpointError, checkpoint_steps, list_checkpoints, load_latest, newest_readable_step
from core.config import Config, load_config
from core.run_layout import RunLayout
from core.runtime import Runtime

log = logging.getLogger("expgen")


@dataclass
class EvalAgents:
    """The networks under evaluation and the checkpoint steps they came from."""

    population: Population
    member_steps: list[int]
    member_seeds: list[int]
    explorer: Population | None = None  # a recurrent population of one
    explorer_step: int | None = None
    explorer_missing: str | None = None  # why there is no explorer, if there is none
    newer_steps: dict[int, int] = field(default_factory=dict)  # member -> its newer step, passed over
    mixed_steps: str | None = None  # the warning when the members share no checkpoint step

    @property
    def step(self) -> int | None:
        """The one checkpoint step of every member, or None when they are at different steps."""
        return self.member_steps[0] if len(set(self.member_steps)) == 1 else None

    @property
    def size(self) -> int:
        return self.population.size


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and make sure files can be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise FileNotFoundError(f"cannot write evaluation results to {folder}: {e.strerror or e}; "
                                "fix its permissions or copy the run somewhere writable") from None


def load_eval_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run's saved config plus ``overrides``; run paths follow ``run_dir`` wherever it now lives.

    Without ``eval.name``, an ``eval.split`` other than the saved config's is named after the split:
    ``--split test-full`` writes ``eval/test-full/``, and ``eval/`` keeps the run's own split. Raises
    FileNotFoundError (no run, no config.yaml) or ConfigError (a bad override)."""
    layout = RunLayout(Path(run_dir))
    if not layout.root.is_dir():
        raise FileNotFoundError(f"run directory {str(layout.root)!r} does not exist")
    if not layout.config.is_file():
        raise FileNotFoundError(
            f"{str(layout.root)!r} has no config.yaml: is it a run directory written by train.py?"
        )
    cfg = load_config(layout.config, list(overrides))
    # The saved runs_dir may be relative to wherever training ran; the directory given wins.
    cfg.runs_dir, cfg.name = str(layout.root.parent), layout.name
    if not cfg.eval.name:
        # eval/ holds the run's own split; another one without a name gets a folder of its own, so
        # that `--split test-full` does not replace the test split's results.json (its TensorBoard
        # points have their own folder already: tb/<split>/)
        saved = load_config(layout.config).eval.split
        if cfg.eval.split != saved:
            cfg.eval.name = cfg.eval.split
    return cfg


def load_members(cfg: Config, runtime: Runtime) -> tuple[Population, list[int], dict[int, int], str | None]:
    """Members ``0..m-1`` (``expgen.members`` or all) as one Population, each member's step, the
    members' newer steps passed over, and a warning when they are at different steps.

    Every member is loaded at the newest step all of them have a readable checkpoint for; members
    with a newer readable checkpoint (still training) are listed, with a logged warning. When they
    share no step (one is more than the kept checkpoints ahead), each member's newest readable
    checkpoint is loaded and the warning says so. Raises CheckpointError when a member has no readable checkpoint or the members'
    networks differ."""
    folders = [cfg.layout.member(m).checkpoints for m in range(cfg.eval_members)]
    ckpts = at_common_step(folders)
    newer: dict[int, int] = {}
    mixed = None
    if ckpts is not None:
        for m, folder in enumerate(folders):
            newest = newest_readable_step(folder)
            if newest is not None and newest > ckpts[m]["step"]:
                newer[m] = newest
        if newer:
            log.warning("evaluating every member at step %s, the newest step all of them have; %s (still "
                        "training?)", f"{ckpts[0]['step']:,}", steps_text(newer, "has a newer checkpoint"))
    else:
        ckpts = [load_latest(folder, "cpu") for folder in folders]
        for m, ckpt in enumerate(ckpts):
            if ckpt is None:
                raise CheckpointError(
                    f"member {m} has no readable checkpoint in {folders[m]}; "
                    "train the run first (python train.py --config ...)"
                )
        steps = {m: int(c["step"]) for m, c in enumerate(ckpts)}
        if len(set(steps.values())) > 1:
            mixed = (f"the members are at different checkpoint steps ({steps_text(steps, 'at')}) and share no "
                     "readable one (still training?): the vote and ExpGen combine networks of different ages, "
                     f"and the TensorBoard point is at the newest step, {max(steps.values()):,}. "
                     "Evaluate again when training has finished.")
            log.warning("%s", mixed)
    specs = [spec_from_dict(c["network"]) for c in ckpts]  # PPO, IDAAC or DAAC members
    if any(s != specs[0] for s in specs) or specs[0].recurrent:
        raise CheckpointError(
            f"members of {cfg.layout.root} must share one non-recurrent network to be evaluated "
            f"together; found {sorted({str(s) for s in specs})}"
        )
    pop = Population.from_state_dicts(specs[0], [c["model"] for c in ckpts], cfg.population.forward_mode,
                                      runtime.bf16)  # the training precision
    return pop.to(runtime.device).eval(), [int(c["step"]) for c in ckpts], newer, mixed


def at_common_step(folders: list[Path]) -> list[dict[str, Any]] | None:
    """One checkpoint per folder, all at the newest step every folder has a readable checkpoint
    for (as training resumes: training/checkpointing.py); None when there is no such step."""
    common = set.intersection(*(set(checkpoint_steps(f)) for f in folders))
    for step in sorted(common, reverse=True):
        ckpts = [load_latest(f, "cpu", max_step=step) for f in folders]
        if all(c is not None and c["step"] == step for c in ckpts):
            return ckpts
    return None


def steps_text(steps: dict[int, int], verb: str) -> str:
    """``member 0 at 4,864, member 1 at 4,288`` (``verb`` "at")."""
    return ", ".join(f"member {m} {verb} {s:,}" for m, s in steps.items())


def load_explorer(cfg: Config, runtime: Runtime) -> tuple[Population | None, int | None, str | None]:
    """(network, step, None), or (None, None, why) when the run has no usable explorer."""
    folder = cfg.layout.explorer.checkpoints
    if not list_checkpoints(folder):
        return None, None, f"no explorer checkpoint in {folder} (train it with explorer.enabled=true)"
    ckpt = load_latest(folder, "cpu")
    if ckpt is None:
        return None, None, f"no readable explorer checkpoint in {folder}"
    pop = Population.from_state_dicts(spec_from_dict(ckpt["network"]), [ckpt["model"]], "loop",
                                      runtime.bf16)
    return pop.to(runtime.device).eval(), int(ckpt["step"]), None


def load_agents(cfg: Config, runtime: Runtime) -> EvalAgents:
    pop, steps, newer, mixed = load_members(cfg, runtime)
    explorer, explorer_step, missing = load_explorer(cfg, runtime)
    return EvalAgents(pop, steps, cfg.member_seeds[: pop.size], explorer, explorer_step, missing, newer, mixed)
