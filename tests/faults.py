"""Fault injection for tests: a job crashes, or holds, after a known update, so that tests of
restarts, kills and interrupts depend on the update reached, never on the machine's speed.

A test arms faults in a JSON file (``arm`` writes it) and starts the processes that train with
``environment(spec)``: ``EXPGEN_TEST_FAULT`` names the file, and ``PYTHONPATH`` leads with
``tests/fault_site``, whose ``sitecustomize`` installs ``after_update`` as a training-loop callback
(``training.callbacks``) in every Python process that starts with it: the children of
``resources.side_by_side`` and Ray's workers inherit it (Ray's, from the process that starts
Ray). The callback reads the file after every update, so a test may re-arm or remove it between
runs; a file that does not exist arms nothing. While a spec exists, every process that trains
records its id in ``pids_file(spec)``, so that a test that kills a run can wait until each of
them is gone (tests/processes.py).

Actions, each after update ``after_update`` of the agents named (every agent when none is):

- ``crash``: raise ``InjectedFault``, once per agent (a marker file ``.fault_injected`` in the
  agent's directory keeps a restarted or re-run job from crashing again).
- ``hold``: write this process's id to ``held_file(spec, agent)``, then wait: until the loop is
  interrupted (SIGINT: it then trains the next iteration, checkpoints it and stops, as after any
  Ctrl-C), or, in a thread that cannot receive SIGINT (a Ray trial), until the process is killed.
  A held job never finishes, whatever the machine's speed (after ``HOLD_LIMIT_S`` it crashes:
  a bound for a broken test, not a timing).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from training import callbacks
from training.interrupt import DeferredInterrupt

if TYPE_CHECKING:  # the sitecustomize imports this module in every process it starts: keep it light
    from training.learner import Learner

ENV = "EXPGEN_TEST_FAULT"
ACTIONS = ("crash", "hold")
HOLD_LIMIT_S = 1800.0  # a hold nobody ends fails the job then, rather than hang a test run forever
ROOT = Path(__file__).resolve().parents[1]
SITE = Path(__file__).resolve().with_name("fault_site")


class InjectedFault(RuntimeError):
    """The crash that a ``crash`` fault asks for."""


@dataclass(frozen=True)
class Fault:
    action: str  # one of ACTIONS
    after_update: int
    agents: tuple[str, ...] = ()  # agent names (member_0, explorer); empty: every agent

    def applies(self, learner: Learner) -> bool:
        return learner.update == self.after_update and (
            not self.agents or any(a.name in self.agents for a in learner.agents))


def arm(spec: Path, *faults: Fault) -> Path:
    """Write ``faults`` to ``spec`` (the file ``EXPGEN_TEST_FAULT`` names); returns ``spec``."""
    for f in faults:
        if f.action not in ACTIONS or f.after_update < 1:
            raise ValueError(f"bad fault {f}: action one of {ACTIONS}, after_update >= 1")
    _write_atomically(Path(spec), json.dumps([asdict(f) for f in faults]))
    return Path(spec)


def environment(spec: Path) -> dict[str, str]:
    """The variables that make the processes started with them read ``spec``: ``EXPGEN_TEST_FAULT``,
    and ``PYTHONPATH`` with ``SITE`` (the callback's installer) and the repository root (this
    module) before the current entries."""
    path = [str(SITE), str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {ENV: str(spec), "PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}


def install() -> None:
    """Add ``after_update`` to this process's training-loop callbacks (once)."""
    if after_update not in callbacks.after_update:
        callbacks.after_update.append(after_update)


def held_file(spec: Path, agent: str) -> Path:
    """Where a ``hold`` fault of ``spec`` writes the id of the process it holds, for ``agent``
    (the first agent of the held job)."""
    return Path(spec).with_name(f"{Path(spec).stem}.held.{agent}")


def pids_file(spec: Path) -> Path:
    """Where every process that trains while ``spec`` is armed records its id (a line each)."""
    return Path(spec).with_name(f"{Path(spec).stem}.pids")


def recorded_pids(spec: Path) -> set[int]:
    path = pids_file(spec)
    return {int(line) for line in path.read_text().split()} if path.exists() else set()


def after_update(learner: Learner) -> None:
    """The training-loop callback: apply the faults armed for this update."""
    for fault in _armed():
        if fault.applies(learner):
            if fault.action == "crash":
                _crash(learner)
            else:
                _hold(Path(os.environ[ENV]), learner)


_recorded: set[str] = set()  # the specs whose pids_file holds this process's id


def _armed() -> list[Fault]:
    path = os.environ.get(ENV)
    if not path:
        return []
    try:
        entries = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return []
    if path not in _recorded:
        with open(pids_file(Path(path)), "a") as f:  # one short append: whole lines, whoever writes
            f.write(f"{os.getpid()}\n")
        _recorded.add(path)
    return [Fault(e["action"], int(e["after_update"]), tuple(e.get("agents") or ())) for e in entries]


def _crash(learner: Learner) -> None:
    marker = learner.agents[0].path / ".fault_injected"
    if not marker.exists():
        marker.touch()
        raise InjectedFault(f"{learner.agents[0].name}: injected fault after update {learner.update}")


def _hold(spec: Path, learner: Learner) -> None:
    _write_atomically(held_file(spec, learner.agents[0].name), str(os.getpid()))
    main = threading.current_thread() is threading.main_thread()
    give_up = time.monotonic() + HOLD_LIMIT_S
    while not main or _interrupt_armed():
        time.sleep(0.05)  # SIGINT, handled by the loop, ends the wait; a kill ends the process
        if time.monotonic() > give_up:
            raise InjectedFault(f"{learner.agents[0].name}: held after update {learner.update} for "
                                f"{HOLD_LIMIT_S:.0f} s and never stopped (a test that forgot to?)")


def _interrupt_armed() -> bool:
    """Whether the training loop's ``DeferredInterrupt`` still waits for its Ctrl-C. Its handler
    records the first SIGINT and puts the previous handler back, so this is also false when the
    SIGINT came before the hold began."""
    owner = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
    return isinstance(owner, DeferredInterrupt) and not owner.requested


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
