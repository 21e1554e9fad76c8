"""Test-only fault injection: a job crashes, or holds, after a known update, so that tests of
restarts, kills and interrupts depend on the update reached, never on the machine's speed.

A test arms faults with the environment variable ``EXPGEN_TEST_FAULT``: the path of a JSON file
(``arm`` writes it) listing them. The training loop calls ``after_update`` after every update and
its checkpoint; it reads the file there, so every process that trains a job sees the faults: the
process itself, the children of ``resources.side_by_side`` (they inherit the environment) and Ray
trials (Ray's workers inherit the environment of the process that started Ray). A file that does
not exist arms nothing; without the variable the hook costs one dictionary lookup. While a spec
exists, every process that trains records its id in ``pids_file(spec)``, so that a test that kills
a run can wait until each of them is gone (``wait_gone``).

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

from training.interrupt import DeferredInterrupt
from training.learner import Learner

ENV = "EXPGEN_TEST_FAULT"
ACTIONS = ("crash", "hold")
HOLD_LIMIT_S = 1800.0  # a hold nobody ends fails the job then, rather than hang a test run forever


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
    """Called by the training loop after every update (and its checkpoint)."""
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


# Processes, for tests and benchmarks that kill a run: a re-run must not start while a process of
# the killed one (a job side by side, a Ray trial) can still write into the run directory.

def processes(pids: set[int] | list[int]) -> dict[int, int]:
    """Those of ``pids`` that run, as {pid: start time} (for ``running`` and ``wait_gone``)."""
    return {pid: stat[2] for pid in pids if (stat := _stat(pid)) is not None and stat[1] != "Z"}


def session(sid: int) -> dict[int, int]:
    """Every running process of session ``sid`` (a process started with ``start_new_session``
    and what it started, even once orphaned), as {pid: start time}."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            if stat[3] == sid and stat[1] != "Z":
                found[int(entry.name)] = stat[2]
    return found


def running(pid: int, start: int) -> bool:
    """Whether process ``pid``, started at ``start``, still runs (a zombie writes nothing: it
    counts as gone, as does a new process that reuses the id)."""
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z" and stat[2] == start


def wait_gone(procs: dict[int, int], timeout_s: float) -> dict[int, int]:
    """Wait until none of ``procs`` ({pid: start time}) runs; returns those still running after
    ``timeout_s`` (a bound for failures, not a guess at how long it takes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = {p: s for p, s in procs.items() if running(p, s)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _stat(pid: int) -> tuple[int, str, int, int] | None:
    """(parent pid, state, start time, session) of ``pid`` from /proc/<pid>/stat (Linux); None
    once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, session, ...
    return int(fields[1]), fields[0], int(fields[19]), int(fields[3])
