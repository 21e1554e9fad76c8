"""benchmarks/gpu_suite.sh on the CPU: its dry run goes through every stage's code at tiny sizes (so
the suite cannot fail on a GPU machine for a reason this CPU could have shown), writes every
stage's status and numbers to its JSON, skips the stages that would overrun the budget, stops a
stage at its time limit, installs a wheels folder without an index or dependencies, and names
what is missing when an import fails."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from benchmarks import gpu_stages

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
NAMES = [s.name for s in gpu_stages.STAGES]


def run_suite(*args: str, env: dict[str, str] | None = None, out: Path | None = None):
    """gpu_suite.sh with this interpreter; its completed process and the JSON it wrote."""
    environ = {k: v for k, v in os.environ.items() if k != "OUT"}  # $OUT only where a test sets it
    environ.update(PYTHON=sys.executable, **(env or {}))
    argv = ["bash", str(SUITE), *args] + (["--out", str(out)] if out else [])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=environ)
    folder = out or Path(environ["OUT"])
    data = json.loads((folder / gpu_stages.JSON_NAME).read_text())
    return done, data


def stages(data: dict) -> dict[str, dict]:
    assert [s["name"] for s in data["stages"]] == NAMES  # every stage, in priority order
    return {s["name"]: s for s in data["stages"]}


def test_dry_run_goes_through_every_stage_and_records_its_numbers(tmp_path: Path) -> None:
    # No wheels (a developer's .whl/ holds the GPU machine's cp312 builds, which need not install here).
    done, data = run_suite("--dry-run", "--wheels", str(tmp_path / "no_wheels"), out=tmp_path / "out")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    by = stages(data)
    assert data["done"] and data["dry_run"] and data["elapsed_s"] < data["budget_s"]
    for s in by.values():
        assert s["status"] == "ok", s
        assert 0 < s["seconds"] <= s["limit_s"] and s["result"], s["name"]
    assert data["preload"]["stages"] == "forked" and not data["preload"]["errors"]
    assert data["machine"]["cores"] >= 1 and data["install"]["status"] == "none"

    imports = by["imports"]["result"]
    assert imports["missing"] == [] and all(r["ok"] for r in imports["required"].values())
    assert all(r["ok"] for r in imports["project"].values())
    assert imports["procgen_step"]["obs"] == [2, 64, 64, 3] and imports["cuda"]["available"] is False

    tests = by["tests"]["result"]  # one CPU test ran; the CUDA half was collected (and skipped here)
    assert tests["rc"] == 0 and tests["failed"] == [] and tests["counts"]["passed"] >= 1
    assert tests["counts"]["skipped"] >= 10 and all("cuda" in t for t in tests["outcomes"]["skipped"])

    for name, key, agents in (("members_fp32_pop10", "members", 2), ("members_fp32_pop1", "members", 1),
                              ("explorer_fp32", "explorer", 1)):
        r = by[name]["result"][key]
        assert r["sps"] > 0 and r["agents"] == agents and r["runtime"] == "cpu (fp32)", name
    assert by["members_fp32_pop10"]["result"]["members"]["breakdown"]["total"] > 0
    assert by["explorer_fp32"]["result"]["explorer"]["breakdown"]["reward"] > 0

    side = by["side_by_side_fp32"]["result"]
    assert {r["job"] for r in side["together"]} == {"members_0-1", "explorer"}
    assert all(r["sps"] > 0 for r in side["together"]) and side["projected_wall_s"] > 0
    assert side["budget"] == {"members_0-1": 2 * 25_000_000, "explorer": 100_000_000}  # configs/maze.yaml's

    bf16 = by["bf16"]["result"]
    assert bf16["members"]["runtime"] == bf16["explorer"]["runtime"] == "cpu (bf16 trunk)"
    pipeline = by["pipeline"]["result"]  # auto is serial on a CPU: this stage measured the overlap
    assert pipeline["measured"] == "overlap" and pipeline["members"]["slices"] == 2

    summary = data["summary"]
    for key in ("members_fp32_pop10_sps", "members_fp32_pop1_sps", "population_vs_single_runs",
                "explorer_fp32_sps", "projected_wall_h"):
        assert summary[key] > 0, key
    assert all(v > 0 for v in [*summary["bf16_vs_fp32"].values(), *summary["overlap_vs_serial"].values()])
    acting = by["acting"]["result"]  # a CPU has no CUDA graphs: eager acting through the same code
    assert acting["captured_before"] is False and summary["captured_vs_eager"] is None
    assert all(v > 0 for v in acting["ratios"].values())
    log = (tmp_path / "out" / gpu_stages.LOG_NAME).read_text()
    assert all(f"===== {name}:" in log for name in NAMES)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [gpu_stages.JSON_NAME, gpu_stages.LOG_NAME]


def test_stages_that_would_overrun_the_budget_are_skipped_saying_why(tmp_path: Path) -> None:
    """No stage fits in 2 seconds: each is skipped (nothing started, nothing preloaded), and the
    JSON goes to $OUT, the GPU machine's folder, when --out is not given."""
    out = tmp_path / "device_out"
    done, data = run_suite("--dry-run", "--budget", "2", env={"OUT": str(out)})
    assert done.returncode == 0, done.stderr  # skipping is not failing
    for s in stages(data).values():
        assert s["status"] == "skipped" and "result" not in s, s
        assert s["reason"].startswith("would overrun: takes about") and "of the 2 s budget left" in s["reason"]
    assert data["done"] and data["preload"] is None


def test_wheels_are_installed_first_and_a_stage_is_stopped_at_its_limit(tmp_path: Path) -> None:
    """The wheels folder installs with --no-index --no-deps (this wheel names a dependency that
    exists nowhere); then the tests stage, limited to 0.3 s, is stopped and reported, and the
    stages not selected say so."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "gpu_suite_probe-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr("gpu_suite_probe.py", "VALUE = 7\n")
        whl.writestr("gpu_suite_probe-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: gpu-suite-probe\n"
                     "Version: 1.0\nRequires-Dist: no-such-package-anywhere\n")
        whl.writestr("gpu_suite_probe-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                     "Root-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr("gpu_suite_probe-1.0.dist-info/RECORD", "")
    done, data = run_suite("--dry-run", "--wheels", str(wheels), "--site", str(site), "--only", "tests",
                           "--limit", "tests=0.3", out=tmp_path / "out")
    assert done.returncode == 1  # a stage timed out
    install = data["install"]
    assert install["status"] == "ok", install
    assert install["wheels"] == ["gpu_suite_probe-1.0-py3-none-any.whl"] and (site / "gpu_suite_probe.py").exists()
    assert install["pythonpath"].split(os.pathsep)[0] == str(site)
    by = stages(data)
    assert by["tests"]["status"] == "timeout" and by["tests"]["reason"] == "stopped at its 0.3 s limit"
    assert by["tests"]["seconds"] < 10
    assert all(s["status"] == "skipped" and s["reason"] == "not selected (--only tests)"
               for name, s in by.items() if name != "tests")


def test_a_missing_module_is_named_and_the_stages_that_need_it_do_not_run(tmp_path: Path) -> None:
    """gym3 (a wheel the GPU machines need) planted as broken: the imports stage fails naming it
    and what needs it, and the later stages are skipped because imports did not pass. Stages as
    new interpreters (--exec-stages: the fallback where a forked process could not start CUDA)."""
    planted = tmp_path / "planted" / "gym3"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text("raise ImportError('planted: no gym3 here')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(planted.parent), os.environ.get("PYTHONPATH", "")])}
    done, data = run_suite("--dry-run", "--only", "imports,tests", "--exec-stages", env=env, out=tmp_path / "out")
    assert done.returncode == 1 and data["preload"]["stages"].startswith("new interpreters")
    by = stages(data)
    imports = by["imports"]
    assert imports["status"] == "failed"
    assert "gym3 (needed by procgen (wheel gym3)): ImportError: planted: no gym3 here" in imports["reason"]
    assert imports["result"]["required"]["gym3"]["ok"] is False
    assert by["tests"]["status"] == "skipped" and by["tests"]["reason"] == "needs imports, which did not pass"
