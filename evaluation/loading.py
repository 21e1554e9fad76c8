"""What eval.py evaluates: a run's saved config (plus overrides) and its newest valid networks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agents.population import Population
from agents.registry import spec_from_dict
from core.checkpoint import CheckpointError, list_checkpoints, load_latest
from core.config import Config, load_config
from core.run_layout import RunLayout
from core.runtime import Runtime


@dataclass
class EvalAgents:
    """The networks under evaluation and the checkpoint steps they came from."""

    population: Population
    member_steps: list[int]
    member_seeds: list[int]
    explorer: Population | None = None  # a recurrent population of one
    explorer_step: int | None = None
    explorer_missing: str | None = None  # why there is no explorer, if there is none

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
    """The run's saved config plus ``overrides``; run paths follow ``run_dir`` wherever it now lives."""
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
    return cfg


def load_members(cfg: Config, runtime: Runtime) -> tuple[Population, list[int]]:
    """Newest readable checkpoint of members ``0..m-1`` (``expgen.members`` or all) as one Population."""
    ckpts = []
    for m in range(cfg.eval_members):
        agent = cfg.layout.member(m)
        ckpt = load_latest(agent.checkpoints, "cpu")
        if ckpt is None:
            raise CheckpointError(
                f"member {m} has no readable checkpoint in {agent.checkpoints}; "
                "train the run first (python train.py --config ...)"
            )
        ckpts.append(ckpt)
    specs = [spec_from_dict(c["network"]) for c in ckpts]  # PPO, IDAAC or DAAC members
    if any(s != specs[0] for s in specs) or specs[0].recurrent:
        raise CheckpointError(
            f"members of {cfg.layout.root} must share one non-recurrent network to be evaluated "
            f"together; found {sorted({str(s) for s in specs})}"
        )
    pop = Population.from_state_dicts(specs[0], [c["model"] for c in ckpts], cfg.population.forward_mode,
                                      runtime.bf16)  # the training precision
    return pop.to(runtime.device).eval(), [int(c["step"]) for c in ckpts]


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
    pop, steps = load_members(cfg, runtime)
    explorer, explorer_step, missing = load_explorer(cfg, runtime)
    return EvalAgents(pop, steps, cfg.member_seeds[: pop.size], explorer, explorer_step, missing)
