"""Processes, for tests and benchmarks that kill a run: a re-run must not start while a process of
the killed one (a job side by side, a Ray trial) can still write into the run directory.

Read from /proc (Linux).
"""
from __future__ import annotations

import time
from pathlib import Path


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
    """(parent pid, state, start time, session) of ``pid`` from /proc/<pid>/stat; None once it is
    gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, session, ...
    return int(fields[1]), fields[0], int(fields[19]), int(fields[3])
