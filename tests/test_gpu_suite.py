"""benchmarks/gpu_suite.sh on the CPU: its dry run goes through every stage's code at tiny sizes (so
the suite cannot fail on a GPU machine for a reason this CPU could have shown), measures the jobs
under the config's defaults and says so, writes every stage's status and numbers to its JSON
(ending with the projection), skips the stages that would overrun --budget-s, stops a stage at its
time limit, installs a wheels folder without an index or dependencies, names what is missing when
an import fails, picks the learning check's precision, and counts the held-out evaluations that
run beside training as training/loop.py schedules them."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from benchmarks import full_run, gpu_context, gpu_jobs, gpu_stages, gpu_suite, gpu_update
from core.config import load_config
from core.runtime import resolve_bf16
from launch.jobs import Job

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
NAMES = [s.name for s in gpu_stages.STAGES]
# The config's precision (auto) on this CPU: a bf16 trunk only where it multiplies bf16 natively.
DEFAULT_RUNTIME = f"cpu ({'bf16 trunk' if resolve_bf16('auto', torch.device('cpu')) else 'fp32'})"


def run_suite(*args: str, env: dict[str, str] | None = None, out: Path | None = None, cwd: Path | None = None):
    """gpu_suite.sh with this interpreter; its completed process and the JSON it wrote (in ``out``,
    else in the folder it says it made)."""
    environ = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    argv = ["bash", str(SUITE), *args] + (["--out", str(out)] if out else [])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=environ, cwd=cwd)
    said = re.search(r"^gpu_suite: .*, results in (.+)$", done.stdout, re.MULTILINE)
    assert said, done.stdout[-3000:] + done.stderr[-3000:]
    folder = Path(said.group(1))
    assert out is None or folder == ((cwd or Path.cwd()) / out).resolve()
    data = json.loads((folder / gpu_context.JSON_NAME).read_text())
    return done, data


def stages(data: dict) -> dict[str, dict]:
    assert [s["name"] for s in data["stages"]] == NAMES  # every stage, in priority order
    return {s["name"]: s for s in data["stages"]}


@pytest.mark.slow
def test_dry_run_goes_through_every_stage_and_records_its_numbers(tmp_path: Path) -> None:
    done, data = run_suite("--dry-run", out=tmp_path / "out")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    by = stages(data)
    assert data["done"] and data["dry_run"] and data["budget_s"] is None and data["elapsed_s"] > 0
    for s in by.values():
        assert s["status"] == "ok", s
        assert 0 < s["seconds"] <= s["limit_s"] and s["result"], s["name"]
    assert data["preload"]["stages"] == "forked" and not data["preload"]["errors"]
    assert data["machine"]["cores"] >= 1 and data["install"] == {"status": "none", "reason": "no --wheels given"}

    imports = by["imports"]["result"]
    assert imports["missing"] == [] and all(r["ok"] for r in imports["required"].values())
    assert all(r["ok"] for r in imports["project"].values())
    assert imports["procgen_step"]["obs"] == [2, 64, 64, 3] and imports["cuda"]["available"] is False

    tests = by["tests"]["result"]  # one CPU test ran; the CUDA half was collected (and skipped here)
    assert tests["rc"] == 0 and tests["failed"] == [] and tests["counts"]["passed"] >= 1
    assert tests["counts"]["skipped"] >= 10 and all("cuda" in t for t in tests["outcomes"]["skipped"])

    defaults = gpu_jobs.config_defaults()  # configs/maze.yaml's settings, as the stages measured them
    for name, key, agents in (("members", "members", 2), ("members_pop1", "members", 1), ("explorer", "explorer", 1)):
        r = by[name]["result"][key]
        assert r["sps"] > 0 and r["agents"] == agents and r["runtime"] == DEFAULT_RUNTIME, name
        assert r["overrides"] == [] and r["settings"] == defaults, name
    members = by["members"]["result"]["members"]
    assert members["breakdown"]["total"] > 0 and members["compile"] is defaults["population.compile"]
    # forward_mode=auto measures both modes on CUDA only: on a CPU it stays auto (loop), untimed
    assert members["forward_mode"] == "auto" and members["forward_mode_times"] == {}
    assert by["explorer"]["result"]["explorer"]["breakdown"]["reward"] > 0
    assert "forward_mode" not in by["explorer"]["result"]["explorer"]

    side = by["side_by_side"]["result"]
    assert {r["job"] for r in side["together"]} == {"members_0-1", "explorer"}
    assert all(r["sps"] > 0 and r["runtime"] == DEFAULT_RUNTIME for r in side["together"])
    assert side["projected_wall_s"] > 0 and side["overrides"] == [] and side["settings"]["network.precision"] == "auto"
    assert side["budget"] == {"members_0-1": 2 * 25_000_000, "explorer": 100_000_000}  # configs/maze.yaml's

    reference = by["fp32_reference"]["result"]  # the before: IEEE fp32 against the defaults
    assert reference["members"]["runtime"] == reference["explorer"]["runtime"] == "cpu (fp32)"
    assert reference["members"]["overrides"] == ["network.precision=fp32", "network.tf32=false"]
    bf16 = by["bf16"]["result"]
    assert bf16["members"]["runtime"] == bf16["explorer"]["runtime"] == "cpu (bf16 trunk)"
    pipeline = by["pipeline"]["result"]  # auto is serial on a CPU: this stage measured the overlap
    assert pipeline["measured"] == "overlap" and pipeline["members"]["slices"] == 2

    summary = data["summary"]
    for key in ("members_pop10_sps", "members_pop1_sps", "population_vs_single_runs", "explorer_sps",
                "members_fp32_pop10_sps", "explorer_fp32_sps", "projected_wall_h"):
        assert summary[key] > 0, key
    for key in ("defaults_vs_fp32", "bf16_ieee_vs_defaults", "overlap_vs_serial"):
        assert set(summary[key]) == {"members", "explorer"} and all(v > 0 for v in summary[key].values()), key
    assert summary["defaults_vs_fp32"]["members"] == pytest.approx(
        by["members"]["result"]["members"]["sps"] / reference["members"]["sps"])
    acting = by["acting"]["result"]  # a CPU has no CUDA graphs: eager acting through the same code
    assert acting["captured_before"] is False and summary["captured_vs_eager"] is None
    assert all(v > 0 for v in acting["ratios"].values())
    check_update_replay_learning_and_projection(by, data)
    log = (tmp_path / "out" / gpu_context.LOG_NAME).read_text()
    assert all(f"===== {name}:" in log for name in NAMES)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [gpu_context.JSON_NAME, gpu_context.LOG_NAME]


def small_cnn_flop_per_frame(actions: int = 15) -> int:
    """Forward and backward FLOP per frame of network.kind=small (agents/networks.py:small_trunk and
    the two heads), from its layer shapes: 2 FLOP per multiply-add; the backward pass computes the
    weight gradient of every layer and the input gradient of all but the first (the frames need none)."""
    macs = [16 * 15 * 15 * (3 * 8 * 8),  # conv 3 -> 16, 8x8 stride 4: 64 -> 15
            32 * 6 * 6 * (16 * 4 * 4),  # conv 16 -> 32, 4x4 stride 2: 15 -> 6
            (32 * 6 * 6) * 256, 256 * actions, 256 * 1]  # linear to 256, actor, critic
    return 2 * (3 * sum(macs) - macs[0])


def check_update_replay_learning_and_projection(by: dict[str, dict], data: dict) -> None:
    """The dry run's members_update, members_compile, gru_replay, learning_check and projection
    (DRY's sizes: 2 members, small CNN, 4 envs x 16 steps, 1 epoch of 2 minibatches)."""
    update = by["members_update"]["result"]
    assert update["flop_per_frame"] == small_cnn_flop_per_frame()
    assert update["flop_per_update"] == small_cnn_flop_per_frame() * 2 * (4 * 16) * 1
    assert list(update["updates"]) == [f"{m}/{p}" for m in ("vmap", "loop") for p in ("fp32", "tf32", "bf16")]
    for key, r in update["updates"].items():
        assert r["update_s"] > 0 and r["updates"] == len(r["update_s_each"]) >= 1, key
        assert r["tflops"] * 1e12 * r["update_s"] == pytest.approx(update["flop_per_update"]), key
        assert f"population.forward_mode={r['forward_mode']}" in r["overrides"]
        assert r["runtime"] == ("cpu (bf16 trunk)" if r["precision"] == "bf16" else "cpu (fp32)"), key  # no TF32 on a CPU
    # each precision's learner built with forward_mode=auto: measured on CUDA only, so here untimed
    assert update["forward_mode_auto"] == {p: {"times": {}, "chosen": "auto"} for p in ("fp32", "tf32", "bf16")}
    fastest = min(update["updates"], key=lambda k: update["updates"][k]["update_s"])
    assert update["fastest"] == fastest == data["summary"]["members_update_fastest"]

    compiled = by["members_compile"]["result"]  # population.compile=true at the fastest combination
    eager = update["updates"][fastest]
    assert compiled["combination"] == fastest and compiled["overrides"] == [*eager["overrides"], "population.compile=true"]
    assert compiled["compile_s"] > 0 and compiled["update_s"] > 0 and compiled["graph_breaks"] == 0
    assert compiled["eager_update_s"] == eager["update_s"]
    assert compiled["compiled_vs_eager"] == pytest.approx(eager["update_s"] / compiled["update_s"])

    replay = by["gru_replay"]["result"]  # T = ppo.num_steps; 4 envs in 2 minibatches of whole sequences
    assert (replay["steps"], replay["sequences"], replay["replays_per_update"]) == (16, 2, 2)
    assert set(replay["replay_s"]) == {"gru_sequence", "torch_gru", "network"}
    assert all(v > 0 for v in replay["replay_s"].values())
    assert replay["gru_per_update_s"] == pytest.approx(2 * replay["replay_s"]["gru_sequence"])

    learning = by["learning_check"]["result"]
    chosen = learning["precision"]
    assert chosen in ("tf32", "bf16") and learning["seeds"] == [0, 1] and learning["start"] == "forked"
    assert learning["runs"] == {p: {"wall_s": learning["runs"][p]["wall_s"], "steps": [256, 256]} for p in ("fp32", chosen)}
    for split in ("train", "test"):  # held-out at updates 0, 2 and 4 of 4 envs x 16 steps
        rows = learning["curves"][split]
        assert [r["step"] for r in rows] == [0, 128, 256], split
        for r in rows:
            for p in ("fp32", chosen):
                assert len(r[f"{p}_members"]) == 2 and all(0 <= v <= 10 for v in r[f"{p}_members"])  # maze pays 10
                assert r[p] == pytest.approx(sum(r[f"{p}_members"]) / 2)
            paired = [b - a for a, b in zip(r["fp32_members"], r[f"{chosen}_members"])]
            assert r["difference"] == pytest.approx(sum(paired) / 2)
            assert r["difference_sd"] == pytest.approx(abs(paired[0] - paired[1]) / 2 ** 0.5)
    assert data["summary"]["learning_check"]["final"]["test"]["step"] == 256

    side, projection = by["side_by_side"]["result"], data["projection"]
    assert list(data)[-1] == "projection" and projection == by["projection"]["result"]  # the JSON ends with it
    assert projection["projected_wall_with_heldout_s"] == side["projected_wall_with_heldout_s"] > 0
    assert projection["projected_wall_with_heldout_h"] == pytest.approx(side["projected_wall_with_heldout_s"] / 3600)
    assert projection["budget"] == side["budget"] and projection["formula"].startswith("full_run.project")
    assert set(projection["targets"]) == {"members_pop10_sps", "explorer_sps", "projected_wall_with_heldout_h"}
    members = by["members"]["result"]["members"]
    target = projection["targets"]["members_pop10_sps"]
    assert {k: target[k] for k in ("target", "measured", "met")} == {"target": 35_000, "measured": members["sps"],
                                                                       "met": members["sps"] >= 35_000}
    assert target["measured_with"] == {"members": {"overrides": [], "runtime": DEFAULT_RUNTIME, "forward_mode": "auto",
                                                   "forward_mode_times": {}, "compile": False}}
    assert set(projection["targets"]["projected_wall_with_heldout_h"]["measured_with"]) == {
        "members", "explorer", "together/members_0-1", "together/explorer"}
    # every input measured under configs/maze.yaml's own settings (paper.yaml: precision auto, TF32 on)
    assert projection["under_config_defaults"] is True and data["summary"]["under_config_defaults"] is True
    assert projection["config_defaults"]["network.precision"] == "auto" and projection["config_defaults"]["network.tf32"]
    # the dry run's schedule (an evaluation every 20 updates): all but the last one beside training
    overlap, heldout = projection["config_defaults"]["logging.eval_overlap"], projection["heldout"]["members_0-1"]
    assert heldout["overlapped"] == (heldout["evaluations"] - 1 if overlap else 0)


def test_one_budgeted_gpu_call_of_540_s_reaches_the_priority_stages() -> None:
    """By the stages' GPU estimates, a run with --budget-s 540 reaches the checks, the jobs under the
    config's defaults, the projection, the update matrix, the GRU replay and the learning check, in
    that order (what one budgeted call on an H100 or H200 must deliver); what runs after them only
    fits where time remains; a stage that reads another is planned only after it."""
    priority = ["imports", "tests", "members", "explorer", "side_by_side", "projection", "members_update",
                "gru_replay", "learning_check"]
    planned = gpu_suite.plan(540, dry=False, limits={}, only=[])
    assert planned[:len(priority)] == priority and NAMES[:len(priority)] == priority
    assert gpu_suite.plan(None, dry=False, limits={}, only=[]) == NAMES  # no budget: every stage
    assert gpu_suite.plan(540, dry=False, limits={}, only=["members_compile"]) == []  # members_update not run
    # a --limit caps a stage's estimate: the tests at 20 s leave the compiled update room to run
    assert "members_compile" not in planned and "members_compile" in gpu_suite.plan(540, False, {"tests": 20}, [])


def test_the_learning_check_compares_the_faster_precision_unless_told() -> None:
    """Which precision the learning check trains against fp32: --precision if given, else the one
    of tf32 and bf16 with the faster members' update over the forward modes, else bf16."""
    def choose(suite: dict) -> tuple[str, str]:
        return gpu_update.chosen_precision(gpu_context.Context("learning_check", Path("."), suite, True, 0.05))

    updates = {"vmap/fp32": ("fp32", 1.0), "vmap/tf32": ("tf32", 0.8), "vmap/bf16": ("bf16", 0.9),
               "loop/fp32": ("fp32", 0.5), "loop/tf32": ("tf32", 0.85), "loop/bf16": ("bf16", 0.7)}
    suite = {"stages": [{"name": "members_update",
                         "result": {"updates": {k: {"precision": p, "update_s": s} for k, (p, s) in updates.items()}}}]}
    assert choose(suite) == ("bf16", "the faster members' update in members_update (tf32 0.800 s, bf16 0.700 s)")
    assert choose({**suite, "learning_precision": "tf32"}) == ("tf32", "--precision")
    assert choose({"stages": []}) == ("bf16", "the default: members_update measured nothing")


@pytest.mark.slow
def test_stages_that_would_overrun_the_budget_are_skipped_saying_why(tmp_path: Path) -> None:
    """No stage fits in --budget-s 2: each is skipped (nothing started, nothing preloaded), and the
    projection and the compiled update, which read what side_by_side and members_update measured,
    for want of it. Without --out the results go to a new folder under $TMPDIR, which the suite names."""
    done, data = run_suite("--dry-run", "--budget-s", "2", env={"TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr  # skipping is not failing
    assert Path(data["out"]).parent == tmp_path and Path(data["out"]).name.startswith("gpu_suite.")
    for s in stages(data).values():
        assert s["status"] == "skipped" and "result" not in s, s
        reads = {"projection": "side_by_side", "members_compile": "members_update"}.get(s["name"])
        if reads:  # skipped for want of the numbers it reads
            assert s["reason"] == f"needs {reads}, which did not pass"
            continue
        assert s["reason"].startswith("would overrun: takes about")
        assert s["reason"].endswith("of the 2 s budget left (--budget-s)"), s["reason"]
    assert data["projection"] is None and data["plan"] == []  # nothing was expected to fit
    assert data["done"] and data["preload"] is None and data["budget_s"] == 2


@pytest.mark.slow
def test_folders_are_taken_relative_to_the_callers_folder_and_bad_options_refused(tmp_path: Path) -> None:
    """--out given relative to where the suite is called from (it runs from the repository root);
    a budget that is not positive, --site without --wheels, or a wheels folder without wheels is
    refused before any stage."""
    done, data = run_suite("--dry-run", "--budget-s", "2", out=Path("rel_out"), cwd=tmp_path)
    assert done.returncode == 0 and Path(data["out"]) == tmp_path / "rel_out"
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad, says in ((["--budget-s", "0"], "--budget-s must be a positive number of seconds, got 0.0"),
                      (["--site", "s"], "--site names where --wheels are installed; give --wheels DIR too"),
                      (["--wheels", str(empty)], f"--wheels {empty}: no .whl files there"),
                      (["--precision", "fp32"], "--precision: invalid choice: 'fp32'")):
        done = subprocess.run(["bash", str(SUITE), "--dry-run", "--out", str(tmp_path / "bad"), *bad],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
        assert done.returncode == 2 and says in done.stderr, done.stderr
        assert not (tmp_path / "bad" / gpu_context.JSON_NAME).exists()


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_missing_module_is_named_and_the_stages_that_need_it_do_not_run(tmp_path: Path) -> None:
    """gym3 (a package procgen needs) planted as broken: the imports stage fails naming it
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


def test_the_projection_counts_the_evaluations_that_overlap_training() -> None:
    """Which held-out evaluations training runs beside (logging.eval_overlap), as training/loop.py
    schedules them: 13 updates, an evaluation at 0, 4, 8, 12 and after the last (13). One due with
    a checkpoint starts after it, so whatever the checkpoint interval, those of 0 (before
    training), 4, 8 and 12 overlap training and the last one is waited for at once (the final
    checkpoint holds it); with captured acting the update-0 evaluation plays inline, before the
    learner captures its graphs."""
    def overlapped(*overrides: str, captured: bool = False) -> int:
        cfg = load_config(gpu_context.CONFIG, ["ray=false", "device=cpu", *gpu_context.DRY,
                                               f"ppo.total_steps={13 * 64}", "logging.eval_interval=4", *overrides],
                          name="overlap")
        assert cfg.num_updates() == 13 and full_run.heldout_evaluations(cfg, Job("members", (0,))) == 5
        return full_run.heldout_overlapped(cfg, Job("members", (0,)), captured)

    assert overlapped("logging.checkpoint_interval=6", "logging.eval_overlap=true") == 4
    assert overlapped("logging.checkpoint_interval=6", "logging.eval_overlap=true", captured=True) == 3  # 4, 8, 12
    assert overlapped("logging.checkpoint_interval=4", "logging.eval_overlap=true") == 4  # checkpoints do not wait
    assert overlapped("logging.checkpoint_interval=6", "logging.eval_overlap=false") == 0  # inline: none


def test_the_cuda_tests_the_suite_runs_are_every_test_file_with_cuda_cases() -> None:
    """The suite's ``tests`` stage runs DEVICE_TESTS with ``-k cuda``: every test file that asks
    whether CUDA is there has CUDA cases and must be in it (a new one left out would never run on
    a GPU)."""
    from benchmarks import gpu_checks

    root = Path(__file__).resolve().parents[1]
    files = [p for p in (root / "tests").glob("test_*.py") if p.name != Path(__file__).name]  # not this one's search
    with_cuda = {f"tests/{p.name}" for p in files if "cuda.is_available" in p.read_text()}
    assert with_cuda == set(gpu_checks.DEVICE_TESTS)
