"""The checks of ``benchmarks/gpu_suite.sh``, its first two stages: every import the stages and the
CUDA tests need, CUDA and one procgen step (``check_imports``), then the CUDA tests of every test
file with CUDA cases (``run_device_tests``: DEVICE_TESTS, ``-k cuda``)."""
from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

from benchmarks.gpu_context import Context, StageFailed

# What the stages and tests/test_device.py import, what needs it, and the package that provides it
# (docs/offline-gpu.md lists how to bring them to a node without internet access).
REQUIRED = {
    "torch": "everything (the machine's own)",
    "numpy": "everything (the machine's own)",
    "procgen": "the envs (wheel procgen-mirror)",
    "gym3": "procgen (wheel gym3)",
    "gym": "procgen's registration (wheel gym)",
    "gym_notices": "gym, envs/procgen_vec.py (wheel gym-notices)",
    "cffi": "gym3 (wheel cffi)",
    "pycparser": "cffi (wheel pycparser)",
    "gymnasium": "envs/procgen_vec.py (wheel gymnasium)",
    "farama_notifications": "gymnasium (wheel farama-notifications)",
    "omegaconf": "core/config.py (wheel omegaconf)",
    "yaml": "omegaconf (pyyaml)",
    "cloudpickle": "gym, gymnasium (cloudpickle)",
    "imageio": "gym3 (imageio)",
    "tensorboard": "training curves: torch.utils.tensorboard (tensorboard)",
    "tqdm": "progress bars (tqdm)",
    "rich": "the job table (rich)",
    "pytest": "the tests stage (pytest)",
}
OPTIONAL = {
    "stable_baselines3": "engine=sb3 and tests/test_sb3_engine.py; not used by the suite",
    "ray": "ray=true and the Ray tests; the suite runs ray=false",
    "av": "eval.py --video (PyAV)",
    "matplotlib": "eval.py's results.png",
    "scipy": "eval.py's statistics",
}
PROJECT = ["train", "benchmarks.full_run", "tests.test_device"]  # the modules the stages run


def check_imports(ctx: Context) -> None:
    """Every module the stages and tests/test_device.py import, the project's own modules, CUDA, and
    one procgen step (procgen's wheels against this machine's numpy)."""
    import importlib
    import importlib.util
    from importlib import metadata

    try:
        import envs.procgen_vec  # noqa: F401  (first: it silences gym's import banner)
    except Exception:  # noqa: BLE001  (reported below)
        pass

    def probe(name: str) -> dict[str, Any]:
        try:
            module = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001  (a broken install raises anything)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        version = getattr(module, "__version__", None)
        if version is None:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                version = None
        return {"ok": True, "version": None if version is None else str(version),
                "path": str(getattr(module, "__file__", "") or "")}

    def present(name: str) -> dict[str, Any]:  # optional ones: found, not imported (Ray's import is slow)
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as e:
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        return {"ok": True, "path": spec.origin} if spec else {"ok": False, "error": "not installed"}

    required = {name: probe(name) for name in REQUIRED}
    optional = {name: present(name) for name in OPTIONAL}
    project = {name: probe(name) for name in PROJECT}
    missing = [f"{n} (needed by {REQUIRED[n]}): {r['error']}" for n, r in required.items() if not r["ok"]]
    missing += [f"project module {n}: {r['error']}" for n, r in project.items() if not r["ok"]]
    absent = [f"{n} ({OPTIONAL[n]})" for n, r in optional.items() if not r["ok"]]
    ctx.save(required=required, optional=optional, project=project, missing=missing, optional_missing=absent)
    for line in missing:
        print(f"MISSING {line}")
    for line in absent:
        print(f"absent (optional) {line}")
    import torch

    cuda: dict[str, Any] = {"available": torch.cuda.is_available(), "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda}
    if cuda["available"]:
        props = torch.cuda.get_device_properties(0)
        x = torch.randn(1024, 1024, device="cuda")
        torch.cuda.synchronize()
        cuda.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
                    matmul_ok=bool(torch.isfinite(x @ x).all()))
    cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p' | head -1"], capture_output=True,
                         text=True).stdout.strip() or platform.processor()
    machine = {"gpu": cuda.get("name"), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    ctx.save(cuda=cuda, machine=machine)
    print(f"python {machine['python']}, torch {cuda['torch']} (CUDA {cuda['torch_cuda']}), "
          f"GPU: {cuda.get('name', 'none')}, CPU: {cpu}, {machine['cores']} cores")
    if not missing:
        import numpy as np

        from envs.make import make_env

        cfg = ctx.config()
        env = make_env(cfg.env, 2, "train", rand_seed=0)
        try:
            obs = env.reset(seed=0)[0]
            obs = env.step(np.zeros(2, dtype=np.int64))[0]
        finally:
            env.close()
        ctx.save(procgen_step={"ok": True, "obs": list(obs.shape), "numpy": np.__version__})
    ctx.save(summary={"missing": missing, "gpu": cuda.get("name")})
    if missing:
        raise StageFailed("missing: " + "; ".join(missing))
    if not ctx.dry and not cuda["available"]:
        raise StageFailed("torch sees no CUDA device")


class TestRecorder:
    """A pytest plugin that saves every test's outcome as it is reported."""

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.outcomes = ctx, {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or report.outcome != "passed":  # a skip or error in setup or teardown
            outcome = "error" if report.failed and report.when != "call" else report.outcome
            if report.nodeid not in sum(self.outcomes.values(), []):
                self.outcomes.setdefault(outcome, []).append(report.nodeid)
                self.ctx.save(outcomes=self.outcomes)


# Every test file with CUDA cases (selected by ``-k cuda``: their names or parameters say cuda).
# None of them imports Ray or SB3, so the suite runs where neither is installed.
DEVICE_TESTS = ["tests/test_device.py", "tests/test_precision.py", "tests/test_recurrent.py", "tests/test_explorer.py",
                "tests/test_episodes.py", "tests/test_members_update.py", "tests/test_heldout.py"]


def run_device_tests(ctx: Context) -> None:
    """DEVICE_TESTS in this process: on the GPU their CUDA tests (``-k cuda``); in a dry run one CPU
    test and the CUDA ones (skipped without CUDA, but collected). Saved test by test."""
    import pytest

    select = "cuda or (cpu and knn)" if ctx.dry else "cuda"
    args = [*DEVICE_TESTS, "-v", "-p", "no:cacheprovider", "-k", select]
    ctx.save(command="pytest " + " ".join(args), outcomes={})
    recorder = TestRecorder(ctx)
    rc = int(pytest.main(args, plugins=[recorder]))
    counts = {k: len(v) for k, v in recorder.outcomes.items()}
    failed = recorder.outcomes.get("failed", []) + recorder.outcomes.get("error", [])
    ctx.save(rc=rc, counts=counts, failed=failed, summary={"tests": counts, "tests_failed": failed})
    if rc != 0 or not counts.get("passed"):
        hint = "" if counts.get("passed") or failed else " (nothing passed: does torch see the GPU?)"
        raise StageFailed(f"pytest exited {rc} with {counts}{hint}" + (f"; failed: {', '.join(failed)}" if failed else ""))
