"""The runner of ``benchmarks/gpu_suite.sh``, the GPU check and benchmark: runs the stages of
benchmarks/gpu_stages.py (``STAGES``, in priority order) one after another, each in a fresh
process, optionally within a time budget for the whole run (``--budget-s``, wheel installs
included).

    bash benchmarks/gpu_suite.sh [--out DIR] [--budget-s S] [--dry-run] [--seconds S] [--only A,B]
                                 [--limit NAME=S] [--precision tf32|bf16] [--wheels DIR] [--site DIR]
                                 [--exec-stages]

``suite`` (what gpu_suite.sh runs) first installs the wheels of ``--wheels``, if given, into
``--site`` (``pip --no-index --no-deps --target``: for a node without internet access,
docs/offline-gpu.md), then runs ``STAGES`` in order, each in a fresh process (its own process
group) with its own time limit: forked from the suite after it imported torch and the project but
before anything started CUDA, so each stage starts its own CUDA context without paying torch's
import again (``--exec-stages``, or if a forked process cannot start CUDA: a new interpreter per
stage, ``gpu_suite.py stage NAME``). With ``--budget-s``, a stage runs only if its estimate fits in
what is left of the budget (else it is skipped, saying why), and is stopped at
``min(its limit, what is left)``; the JSON's ``plan`` names, from the start, the stages the budget
reaches if each takes its estimate (``plan``).
After every stage, ``DIR/gpu_suite.json`` is rewritten (atomically) and the stage's output is
appended to ``DIR/gpu_suite.log``: a run killed from outside still leaves what it measured. A
stage also saves its partial results as it goes, so a stage stopped at its limit keeps its
finished measurements. Each stage's entry carries its estimate and the basis of it
(``estimate_basis``). The JSON ends with ``projection``: the projected wall time of
configs/maze.yaml on this GPU under the config's defaults, held-out evaluation included, and the
measured speeds against the project's targets, each with the precision, forward mode and compile
it ran with. Exit status: 0 when no stage failed or timed out (skipped ones are fine).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the project's packages

from benchmarks.gpu_context import (  # noqa: E402
    CONFIG,
    JSON_NAME,
    LOG_NAME,
    MARGIN_S,
    ROOT,
    TAIL_CHARS,
    result_path,
    write_json,
)
from benchmarks.gpu_stages import BY_NAME, STAGES, Stage, run_stage_here  # noqa: E402

# ---- the suite ------------------------------------------------------------------------------------
# Stages are forked from this process after it imported torch and the project (PRELOAD) but never
# touched CUDA: each stage is a fresh process that starts its own CUDA context, without paying
# torch's import again (several seconds on a small CPU). Should anything have started CUDA here,
# or with --exec-stages, each stage is a new interpreter instead (``gpu_suite.py stage NAME``).
PRELOAD = ["envs.procgen_vec", "torch", "torch._dynamo", "numpy", "procgen", "benchmarks.full_run", "launch.run",
           "training.population_learner", "training.explorer_learner", "envs.make", "pytest"]


def preload() -> dict[str, str]:
    """Import PRELOAD here, for the forked stages, and build (then close) one procgen batch: its
    first one in a process loads every game's assets (5 s on a 2-core CPU). What fails is left to
    the imports stage to report."""
    import importlib

    errors = {}
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001
            errors[name] = f"{type(e).__name__}: {e}"
    try:
        from envs.levels import get_split
        from envs.procgen_vec import ProcgenVecEnv

        ProcgenVecEnv("maze", 1, get_split("train")).close()  # its stepping thread ends with it
    except Exception as e:  # noqa: BLE001
        errors["procgen env"] = f"{type(e).__name__}: {e}"
    return errors


def cuda_started_here() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def fork_cannot_use_cuda() -> str | None:
    """Why a process forked from this one could not use CUDA (None: it can, or there is no GPU)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            import torch

            rc = 0 if not torch.cuda.is_available() or float(torch.ones(2, device="cuda").sum()) == 2.0 else 1
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            os._exit(rc)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            return None if rc == 0 else f"a forked process could not start CUDA (exit {rc})"
        time.sleep(0.05)
    stop_group(pid)
    return "a forked process did not start CUDA within 60 s"




def install_wheels(wheels: Path, site: Path, env: dict[str, str]) -> dict[str, Any]:
    """pip-install every wheel of ``wheels`` into ``site`` (no index, no dependencies: a node without
    internet access); this process and the stages then import from there first."""
    found = sorted(wheels.glob("*.whl"))  # main() refused a folder without any
    info: dict[str, Any] = {"folder": str(wheels), "wheels": [w.name for w in found], "target": str(site)}
    began = time.monotonic()
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--disable-pip-version-check", "--target", str(site), *map(str, found)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        ok, output = done.returncode == 0, (done.stdout + done.stderr)[-TAIL_CHARS:]
    except subprocess.TimeoutExpired:
        ok, output = False, "pip did not finish within 240 s"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]  # spawned grandchildren (full_run, side by side) too
    sys.path.insert(0, str(site))
    return {**info, "status": "ok" if ok else "failed", "seconds": round(time.monotonic() - began, 1),
            "pythonpath": env["PYTHONPATH"], **({} if ok else {"error": output})}


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.dry = args, args.dry_run
        self.out = Path(args.out).resolve()  # run() changes into the repository
        self.out.mkdir(parents=True, exist_ok=True)
        self.json, self.log = self.out / JSON_NAME, self.out / LOG_NAME
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
        self.started = args.started or time.time()
        self.deadline = self.started + (args.budget_s if args.budget_s is not None else float("inf"))
        self.limits = dict(parse_limit(x) for x in args.limit)
        self.only = [s for s in args.only.split(",") if s] if args.only else []
        unknown = [s for s in [*self.only, *self.limits] if s not in BY_NAME]
        if unknown:
            raise SystemExit(f"gpu_suite: unknown stage(s) {unknown}; stages: {', '.join(BY_NAME)}")
        # torch.cuda.is_available() through NVML: a check in this process must not start CUDA,
        # which forked stages could then not use.
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.fork = not args.exec_stages
        self.child: int | subprocess.Popen | None = None
        self.data: dict[str, Any] = {
            "suite": "benchmarks/gpu_suite.sh", "dry_run": self.dry, "out": str(self.out),
            "started_at": datetime.datetime.fromtimestamp(self.started).isoformat(timespec="seconds"),
            "budget_s": args.budget_s, "seconds_per_measurement": args.seconds, "config": str(CONFIG.relative_to(ROOT)),
            "learning_precision": args.precision,
            "commit": git_commit(), "python": sys.executable, "done": False, "elapsed_s": 0.0, "machine": None,
            "install": None, "preload": None, "summary": {},
            "plan": plan(args.budget_s, self.dry, self.limits, self.only),
            "stages": [{"name": s.name, "what": s.what, "status": "pending", "estimate_s": s.estimate(self.dry),
                        "estimate_basis": "a dry run on a CPU" if self.dry else s.basis,
                        "limit_s": self.limits.get(s.name, s.limit(self.dry))} for s in STAGES],
        }

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.started, 1)
        summary: dict[str, Any] = {}
        for s in self.data["stages"]:
            summary.update((s.get("result") or {}).get("summary") or {})
        self.data["summary"] = summary
        # The JSON ends with the projection stage's result: configs/maze.yaml's wall time on this GPU.
        self.data.pop("projection", None)
        self.data["projection"] = next((s.get("result") for s in self.data["stages"] if s["name"] == "projection"), None)
        write_json(self.json, self.data)

    def say(self, line: str) -> None:
        print(f"[gpu_suite {time.time() - self.started:6.1f} s] {line}", flush=True)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        os.chdir(ROOT)
        self.write()
        if self.args.budget_s is not None:
            later = [s.name for s in STAGES if s.name not in self.data["plan"] and (not self.only or s.name in self.only)]
            self.say(f"within {self.args.budget_s:.0f} s, if each stage takes its estimate: {', '.join(self.data['plan'])}"
                     + (f"; not expected to fit: {', '.join(later)}" if later else ""))
        if self.args.wheels:
            wheels = Path(self.args.wheels)  # absolute: main() resolved them before run() changed folder
            site = Path(self.args.site) if self.args.site else self.scratch / "site"
            self.data["install"] = install_wheels(wheels, site, self.env)
            self.say(f"wheels: {self.data['install']['status']} ({len(self.data['install']['wheels'])} in {wheels})")
        else:
            self.data["install"] = {"status": "none", "reason": "no --wheels given"}
        self.write()
        with self.log.open("w") as log:
            log.write(f"gpu_suite {'dry run ' if self.dry else ''}started {self.data['started_at']}\n"
                      f"install: {json.dumps(self.data['install'])}\n")
        for stage, entry in zip(STAGES, self.data["stages"]):
            self.run_stage(stage, entry)
            self.write()
        self.data["done"] = True
        self.write()
        shutil.rmtree(self.scratch, ignore_errors=True)
        bad = [s["name"] for s in self.data["stages"] if s["status"] in ("failed", "timeout")]
        self.say(f"done in {self.data['elapsed_s']:.0f} s; " + (f"not passed: {', '.join(bad)}" if bad else "no stage failed")
                 + f"; {self.json}")
        return 1 if bad else 0

    def prepare_forking(self) -> None:
        """Once, before the first stage that runs: preload, then check that a forked process can
        start CUDA (else every stage is a new interpreter)."""
        if self.data["preload"] is not None:
            return
        if not self.fork:
            self.data["preload"] = {"stages": "new interpreters (--exec-stages)"}
            return
        began = time.monotonic()
        errors = preload()
        why = "CUDA was started while preloading" if cuda_started_here() else fork_cannot_use_cuda()
        self.fork = why is None
        self.data["preload"] = {"seconds": round(time.monotonic() - began, 1), "errors": errors,
                                "stages": "forked" if self.fork else f"new interpreters: {why}"}
        self.say(f"preloaded in {self.data['preload']['seconds']} s, stages {self.data['preload']['stages']}"
                 + (f"; failed: {errors}" if errors else ""))
        with self.log.open("a") as log:
            log.write(f"preload: {json.dumps(self.data['preload'])}\n")

    def skip_reason(self, stage: Stage, entry: dict[str, Any], left: float) -> str | None:
        status = {s["name"]: s["status"] for s in self.data["stages"]}
        estimate = min(stage.estimate(self.dry), entry["limit_s"])
        blocked = [n for n in stage.needs if status.get(n) in ("failed", "timeout")]
        blocked += [n for n in stage.requires if status.get(n) != "ok" and n not in blocked]
        if self.only and stage.name not in self.only:
            return f"not selected (--only {','.join(self.only)})"
        if blocked:
            return f"needs {', '.join(blocked)}, which did not pass"
        if left < estimate:
            return (f"would overrun: takes about {estimate:.0f} s, {max(left, 0.0):.0f} s of the "
                    f"{self.args.budget_s:.0f} s budget left (--budget-s)")
        return None

    def run_stage(self, stage: Stage, entry: dict[str, Any]) -> None:
        left = self.deadline - time.time() - MARGIN_S
        reason = self.skip_reason(stage, entry, left)
        if reason:
            entry.update(status="skipped", reason=reason)
            self.say(f"{stage.name}: skipped, {reason}")
            return
        self.prepare_forking()
        left = self.deadline - time.time() - MARGIN_S
        limit = max(0.1, min(entry["limit_s"], left))
        entry.update(status="running", limit_s=round(limit, 1))
        self.write()
        self.say(f"{stage.name}: {stage.what} (limit {limit:.0f} s)")
        stage_log = self.scratch / f"{stage.name}.log"
        began = time.monotonic()
        rc = self.fork_stage(stage, stage_log, limit) if self.fork else self.exec_stage(stage, stage_log, limit)
        entry["seconds"] = round(time.monotonic() - began, 1)
        text = stage_log.read_text(errors="replace") if stage_log.exists() else ""
        with self.log.open("a") as log:
            log.write(f"\n===== {stage.name}: {stage.what} =====\n{text}")
        path = result_path(self.scratch, stage.name)
        entry["result"] = json.loads(path.read_text()) if path.exists() else {}
        entry["tail"] = text[-TAIL_CHARS:]
        if rc is None:
            entry.update(status="timeout", reason=f"stopped at its {limit:.3g} s limit")
        elif rc == 0:
            entry["status"] = "ok"
        else:
            last = [ln for ln in text.splitlines() if ln.strip()][-1:] or [f"exit status {rc}"]
            entry.update(status="failed", reason=entry["result"].get("error") or last[0])
        if stage.name == "imports" and entry["result"].get("machine"):
            self.data["machine"] = entry["result"]["machine"]
        self.say(f"{stage.name}: {entry['status']} in {entry['seconds']:.1f} s"
                 + (f" ({entry['reason']})" if entry.get("reason") else ""))

    def fork_stage(self, stage: Stage, log: Path, limit: float) -> int | None:
        """The stage in a forked child that leads its own process group (``os.setsid``); its exit
        status, None if stopped at ``limit``."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the stage's process
            rc = 1
            try:
                os.setsid()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                rc = run_stage_here(stage.name, self.scratch, self.json, self.dry, self.args.seconds)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        self.child = pid
        end = time.monotonic() + limit
        rc: int | None = None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > end:
                stop_group(pid)
                break
            time.sleep(0.1)
        kill_group(pid)  # whatever the stage left behind (a multiprocessing manager, say)
        self.child = None
        return rc

    def exec_stage(self, stage: Stage, log: Path, limit: float) -> int | None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "stage", stage.name, "--scratch", str(self.scratch),
               "--suite-json", str(self.json), "--seconds", str(self.args.seconds)] + (["--dry-run"] if self.dry else [])
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.child = proc
            try:
                rc: int | None = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                stop_group(proc.pid)
                rc = None
            kill_group(proc.pid)
            self.child = None
        return rc

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.child is not None:
            stop_group(self.child if isinstance(self.child, int) else self.child.pid)
        for s in self.data["stages"]:
            if s["status"] == "running":
                s.update(status="timeout", reason=f"the suite was stopped (signal {signum})")
        self.write()
        self.say(f"stopped by signal {signum}; {self.json}")
        os._exit(128 + signum)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(pid: int) -> None:
    """End a stage's process group: SIGTERM, SIGKILL after 5 s; reap the stage."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)  # not yet its own group
            except ProcessLookupError:
                pass
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # already reaped (a Popen's wait)
                return
            if done:
                return
            time.sleep(0.1)


# The preload (torch, the project, one procgen batch) before the first stage: 9.5 s measured on a
# 2-core CPU; reckoned the same on a GPU node (torch's CUDA libraries are larger, its CPU faster).
PRELOAD_ESTIMATE_S = 10.0


def plan(budget_s: float | None, dry: bool, limits: dict[str, float], only: list[str]) -> list[str]:
    """The stages a run within ``budget_s`` seconds reaches if the preload and every stage take
    their estimates and pass, in order: each that fits in what is left (``MARGIN_S`` kept back),
    as ``Suite.skip_reason`` decides, and whose ``requires`` are among them. ``limits``:
    ``--limit``'s (a stage's estimate is at most its limit); ``only``: ``--only``'s (empty: all)."""
    left = (float("inf") if budget_s is None else budget_s) - MARGIN_S - PRELOAD_ESTIMATE_S
    chosen: list[str] = []
    for stage in STAGES:
        takes = min(stage.estimate(dry), limits.get(stage.name, stage.limit(dry)))
        if (only and stage.name not in only) or takes > left or not set(stage.requires) <= set(chosen):
            continue
        chosen.append(stage.name)
        left -= takes
    return chosen


def parse_limit(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    if not seconds:
        raise SystemExit(f"gpu_suite: --limit takes NAME=SECONDS, got {text!r}")
    return name, float(seconds)


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    suite = sub.add_parser("suite", help="run every stage (what gpu_suite.sh does)")
    suite.add_argument("--out", required=True, help="where gpu_suite.json and gpu_suite.log go")
    suite.add_argument("--dry-run", action="store_true", help="every stage on the CPU at tiny sizes")
    suite.add_argument("--budget-s", type=float, help="seconds for the whole run, installs included: a stage "
                       "that would not fit in what is left is skipped (default: no limit but each stage's own)")
    suite.add_argument("--started", type=float, help="when the run began (epoch seconds; gpu_suite.sh passes it)")
    suite.add_argument("--seconds", type=float, help="timed window per measurement (5 on the GPU, 0.05 dry; "
                       "the members' update and GRU replay stages time 0.4 of it)")
    suite.add_argument("--only", help="comma-separated stages to run; the others are skipped")
    suite.add_argument("--precision", choices=("tf32", "bf16"),
                       help="what the learning check trains against fp32 (default: the one of the two whose "
                            "members' update was faster in members_update; bf16 if that stage did not run)")
    suite.add_argument("--limit", action="append", default=[], help="NAME=SECONDS: another time limit for a stage")
    suite.add_argument("--wheels", help="folder of wheels to install first, without an index (default: none)")
    suite.add_argument("--site", help="where they are installed (default: a temporary folder)")
    suite.add_argument("--exec-stages", action="store_true", help="each stage a new interpreter instead of a fork")
    one = sub.add_parser("stage", help="run one stage in this process (the suite's --exec-stages calls this)")
    one.add_argument("name", choices=list(BY_NAME))
    one.add_argument("--scratch", required=True)
    one.add_argument("--suite-json", default="")
    one.add_argument("--seconds", type=float, default=5.0)
    one.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "suite":
        if args.budget_s is not None and not args.budget_s > 0:
            parser.error(f"--budget-s must be a positive number of seconds, got {args.budget_s}")
        if args.site and not args.wheels:
            parser.error("--site names where --wheels are installed; give --wheels DIR too")
        if args.wheels and not any(Path(args.wheels).glob("*.whl")):
            parser.error(f"--wheels {args.wheels}: no .whl files there")
        args.wheels, args.site = (str(Path(p).resolve()) if p else None for p in (args.wheels, args.site))
    sys.path.insert(0, str(ROOT))
    if args.command == "stage":
        return run_stage_here(args.name, Path(args.scratch), Path(args.suite_json), args.dry_run, args.seconds)
    if args.seconds is None:
        args.seconds = 0.05 if args.dry_run else 5.0
    return Suite(args).run()


if __name__ == "__main__":
    sys.exit(main())
