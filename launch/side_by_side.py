"""``ray: false`` with ``resources.side_by_side``: the pending jobs train at the same time, one
child process per job, on this machine's device. On one GPU, the member population and the
explorer then share it as they would under Ray, without Ray (which a workstation, or the GPU
machines this project is measured on, may not have). With several GPUs (``device`` auto or cuda),
the children take them in turn, the explorer first (``launch.placement.gpu_round_robin``): each
child sees its one GPU as ``cuda:0`` (CUDA_VISIBLE_DEVICES); ``device=cuda:N`` keeps every job on N.

Each child trains its job exactly as the in-process path does (``train_job``: resume from the
newest checkpoints, the same run directory, TensorBoard files and checkpoints), with the job's
CPU share (``resources.shard_cpus`` / ``explorer_cpus``) as torch threads, and reports every
iteration here through a queue, shown as the job table (launch/trial_table.py).

Stopping: children run in their own process group, so a Ctrl-C reaches this process only, which
forwards one SIGINT to each child; a child then finishes its iteration in flight, checkpoints and
exits, and ``train_side_by_side`` raises ``KeyboardInterrupt`` (train.py exits 130). A second
Ctrl-C stops the children at once. A child that fails stops the others the same way, and its
error ends the run as it would in-process. A child whose parent dies (killed, not interrupted)
exits by itself: nothing is left running.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from typing import Any

import torch

from core.config import Config
from core.runtime import Runtime
from launch.jobs import USER_ERRORS, Job, report_metrics, train_job
from launch.placement import gpu_round_robin
from launch.trial_table import JobTable

log = logging.getLogger("expgen")

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class JobFailed(RuntimeError):
    """A job's child process failed; its checkpoints are kept."""


def _exit_with_parent(parent: int) -> None:
    """Die with the parent: a SIGKILLed train.py must not leave its jobs training, nor let them
    write checkpoints while a re-run (which takes the run lock again) already trains the run."""
    if sys.platform.startswith("linux"):  # the kernel kills this process the moment its parent dies
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # it died before prctl took effect
            os._exit(1)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def visible_gpus(cfg: Config) -> list[str]:
    """The GPUs the jobs may spread over: the ids CUDA_VISIBLE_DEVICES lists (or every GPU's index
    when it is unset) when ``device`` is auto or cuda; none for cpu or one named device (cuda:N)."""
    if cfg.device not in ("auto", "cuda"):
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _child(cfg: Config, job: Job, reports: Any, parent: int, gpu: str | None) -> None:
    os.setpgrp()  # Ctrl-C at the terminal reaches the parent only, which forwards one SIGINT
    _exit_with_parent(parent)
    if gpu is not None:  # before anything here touches CUDA: the job's one GPU is its cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # "resuming at step ..." as here
    torch.set_num_threads(max(1, int(cfg.resources.explorer_cpus if job.explorer else cfg.resources.shard_cpus)))
    torch.manual_seed(cfg.seed)
    try:
        runtime = Runtime.from_config(cfg)
        summary = train_job(cfg, job, runtime, progress=False,
                            on_iteration=lambda info: reports.put(("report", job.name, report_metrics(info))))
        reports.put(("done", job.name, summary))
    except KeyboardInterrupt:
        reports.put(("interrupted", job.name, None))
    except USER_ERRORS as e:
        reports.put(("error", job.name, (type(e).__name__, str(e), "")))
    except BaseException as e:
        reports.put(("error", job.name, (type(e).__name__, str(e), traceback.format_exc())))


def train_side_by_side(cfg: Config, jobs: list[Job]) -> list[dict[str, Any]]:
    """Train ``jobs`` at the same time, one child process each; each job's summary
    (``train_job``'s), in the order of ``jobs``."""
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA
    reports = ctx.Queue()
    gpus = gpu_round_robin(jobs, visible_gpus(cfg))
    for name, gpu in gpus.items():
        if gpu is not None:
            log.info("%s: GPU %s", name, gpu)
    children = {j.name: ctx.Process(target=_child, args=(cfg, j, reports, os.getpid(), gpus[j.name]),
                                    name=f"expgen-{j.name}") for j in jobs}
    table = JobTable(cfg, jobs, f"{cfg.name}: {len(jobs)} jobs side by side") if cfg.logging.progress else None
    last: dict[str, dict[str, Any]] = {j.name: {} for j in jobs}
    states = {j.name: "STARTING" for j in jobs}
    summaries: dict[str, dict[str, Any]] = {}
    errors: list[tuple[str, tuple[str, str, str]]] = []
    interrupts = 0

    def stop_children(hard: bool = False) -> None:
        for name, child in children.items():
            # A child that has reported its end is exiting: a signal would only disturb that.
            if child.is_alive() and (hard or states[name] in ("STARTING", "RUNNING")):
                os.kill(child.pid, signal.SIGKILL if hard else signal.SIGINT)
                states[name] = "STOPPING"

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        stop_children(hard=interrupts > 1)

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        for child in children.values():
            child.start()
        if table is not None:
            table.start()
        while any(c.is_alive() for c in children.values()) or not reports.empty():
            try:
                kind, name, payload = reports.get(timeout=0.5)
            except queue.Empty:
                kind = None
            if kind == "report":
                last[name] = payload
                states[name] = "RUNNING" if states[name] == "STARTING" else states[name]
            elif kind == "done":
                summaries[name], states[name] = payload, "DONE"
            elif kind == "interrupted":
                states[name] = "INTERRUPTED"
            elif kind == "error":
                states[name] = "ERROR"
                errors.append((name, payload))
                stop_children()  # the others checkpoint their iteration in flight and stop
            for name, child in children.items():  # a child that ended without a word
                if child.exitcode in (None, 0) or not reports.empty():
                    continue
                if states[name] == "STOPPING":  # asked to stop before it could checkpoint anything
                    states[name] = "INTERRUPTED"
                elif states[name] in ("STARTING", "RUNNING"):  # killed (OOM killer, SIGKILL) or crashed
                    states[name] = "ERROR"
                    errors.append((name, ("died", f"exit code {child.exitcode}", "")))
                    stop_children()
            if table is not None:
                table.show([table.row(j.name, states[j.name], last[j.name], 0) for j in jobs])
    finally:
        # Normally every child has ended by now. Leaving the loop on an error of this process must
        # not leave a job training unwatched: stop them too, and keep reading their reports while
        # they stop, since a child cannot exit while its unread reports fill the queue's pipe.
        stop_children()
        while any(c.is_alive() for c in children.values()):
            with contextlib.suppress(queue.Empty):
                reports.get(timeout=0.5)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if table is not None:
            table.stop([table.row(j.name, states[j.name], last[j.name], 0) for j in jobs])
    if errors:
        name, (kind, message, trace) = errors[0]
        for cls in USER_ERRORS:
            if kind == cls.__name__:
                raise cls(f"{name}: {message}")
        raise JobFailed(f"{name} failed ({kind}: {message}); the checkpoints of every job are kept, "
                        f"re-run the same command to resume" + (f"\n{trace}" if trace else ""))
    if interrupts or len(summaries) < len(jobs):
        raise KeyboardInterrupt
    return [summaries[j.name] for j in jobs]
