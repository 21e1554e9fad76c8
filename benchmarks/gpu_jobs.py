"""configs/maze.yaml's jobs measured by ``benchmarks/gpu_suite.sh``, through benchmarks/full_run.py
(``measure``: one job's steady-state steps/s and the phase breakdown of one iteration;
``together``: all jobs at once; ``project``: the wall time of the config's budgets), and the
projection that ends the suite's JSON.

Under the config's defaults (whatever configs/maze.yaml and core/sections.py say when the suite
runs: precision, TF32, forward mode, compile, acting, pipeline, held-out evaluation): the members
alone (``members``, a population of 10), the explorer alone (``explorer``), both side by side
with one held-out evaluation per job (``side_by_side``), and from those the projected wall time
against the project's targets (``projection``). Then, each against those measurements: IEEE fp32
(``fp32_reference``, the figures of the earlier GPU measurements), one member alone
(``members_pop1``), the other rollout schedule (``pipeline``), eager acting (``acting``) and a
bf16 trunk with IEEE fp32 elsewhere (``bf16``).
"""
from __future__ import annotations

from typing import Any

from benchmarks.gpu_context import CONFIG, ROOT, Context, StageFailed

# The keys that decide how fast a job runs, as the config's defaults set them (``settings``).
SPEED_KEYS = ("network.precision", "network.tf32", "network.acting", "env.pipeline", "population.forward_mode",
              "population.compile", "logging.eval_overlap")


def settings(cfg: Any) -> dict[str, Any]:
    """``SPEED_KEYS`` as ``cfg`` sets them."""
    out = {}
    for key in SPEED_KEYS:
        section, name = key.split(".")
        out[key] = getattr(getattr(cfg, section), name)
    return out


def config_defaults() -> dict[str, Any]:
    """``settings`` of configs/maze.yaml as it is (only its settings are read: no device is used)."""
    from core.config import load_config

    return settings(load_config(CONFIG, ["ray=false", "device=cpu"], name="gpu_suite"))


def measure_one(ctx: Context, label: str, members: int | None, overrides: list[str], breakdown: bool) -> dict[str, Any]:
    """One job of configs/maze.yaml alone in this process (full_run.measure): ``members`` reward
    agents (None: all of the config's), or the explorer (0), under the config's defaults changed by
    ``overrides`` (saved with the result, with the settings in force)."""
    import torch

    from benchmarks import full_run
    from launch.jobs import Job

    cfg = ctx.config(*overrides)
    if members == 0:
        job = Job("explorer")
    else:
        job = Job("members", tuple(range(members or cfg.ensemble.size)))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = full_run.measure(cfg, job, ctx.seconds, breakdown=breakdown)
    result.update(overrides=list(overrides), settings=settings(cfg))
    ctx.save(**{label: result})
    share = ""
    if "breakdown" in result:
        b = result["breakdown"]
        share = "; " + ", ".join(f"{p} {100 * b[p] / b['total']:.0f}%" for p in b if p != "total")
    mode = f", forward mode {result['forward_mode']}" if "forward_mode" in result else ""
    print(f"{label}: {result['job']} {result['sps']:,.0f} steps/s, {result['iteration_s']:.2f} s per iteration "
          f"({result['iterations']} timed, {result['slices']} slice(s), {result['runtime']}{mode}){share}", flush=True)
    return result


def shares(breakdown: dict[str, float]) -> dict[str, float]:
    """An iteration's phases (full_run.measure's breakdown) as fractions of its total."""
    return {p: seconds / breakdown["total"] for p, seconds in breakdown.items() if p != "total"}


def members(ctx: Context) -> None:
    """The members alone, the config's population of 10, under the config's defaults, with the
    breakdown of their iteration and the forward mode ``auto`` chose (and its times)."""
    r = measure_one(ctx, "members", None, [], breakdown=True)
    ctx.save(summary={"members_pop10_sps": r["sps"], "members_peak_gib": r.get("peak_gib"),
                      "members_iteration_share": shares(r["breakdown"]), "members_runtime": r["runtime"],
                      "members_forward_mode": r["forward_mode"], "members_forward_mode_times": r["forward_mode_times"]})


def explorer(ctx: Context) -> None:
    """The explorer alone under the config's defaults, with the breakdown of its iteration (env,
    inference, transfer, kNN reward, update, other)."""
    r = measure_one(ctx, "explorer", 0, [], breakdown=True)
    ctx.save(summary={"explorer_sps": r["sps"], "explorer_peak_gib": r.get("peak_gib"),
                      "explorer_iteration_share": shares(r["breakdown"]), "explorer_runtime": r["runtime"]})


def side_by_side(ctx: Context) -> None:
    """The config's jobs all at once on the device under its defaults (full_run.together, each in a
    fresh process), then one held-out evaluation per job (side by side too), and the projected
    wall time of configs/maze.yaml's budgets from these and the alone speeds (``members``,
    ``explorer``), without and with held-out evaluation (its logging.eval_interval, eval_episodes
    and eval_splits; a dry run plays 4 episodes on one split)."""
    from benchmarks import full_run
    from core.config import load_config
    from core.runtime import Runtime
    from launch.jobs import plan
    from launch.progress import duration

    # BASE turns held-out evaluation off for the measurements; its schedule is configs/maze.yaml's.
    maze_logging = load_config(CONFIG, ["ray=false", "device=cpu"], name="gpu_suite").logging
    schedule = [f"logging.eval_interval={maze_logging.eval_interval}"]
    if ctx.dry:
        schedule += ["logging.eval_episodes=4", "logging.eval_splits=[test]"]
    cfg = ctx.config(*schedule)
    jobs = plan(cfg)
    both = full_run.together(cfg, jobs, ctx.seconds, heldout=cfg.logging.eval_interval > 0)
    together = {r["job"]: r["sps"] for r in both}
    ctx.save(together=both, overrides=[], settings=settings(cfg))
    alone = {}
    for stage in ("members", "explorer"):
        for r in ctx.previous(stage).values():
            if isinstance(r, dict) and "job" in r and "sps" in r:
                alone[r["job"]] = r["sps"]
    for name, sps in together.items():
        print(f"together  {name:<14} {sps:>9,.0f} steps/s" +
              (f" ({sps / alone[name]:.2f}x alone)" if name in alone else ""), flush=True)
    costs = full_run.heldout_costs(cfg, jobs, {r["job"]: r["heldout"]["seconds"] for r in both if "heldout" in r})
    captured = Runtime.from_config(cfg).cudagraphs  # the jobs' acting (this process starts no CUDA)
    for job in jobs:
        costs[job.name]["overlapped"] = full_run.heldout_overlapped(cfg, job, captured)
    log = cfg.logging
    print(f"held-out evaluation of {CONFIG.name} (every {log.eval_interval} updates, {log.eval_episodes} episodes "
          f"per agent on {', '.join(log.eval_splits)}; one per job measured side by side):", flush=True)
    for name, c in costs.items():
        print(f"  {name:<14} {c['evaluations']:>5} x {c['seconds_each']:.1f} s = {duration(c['total_s'])} "
              f"({c['overlapped']} of them beside training: counted whole)", flush=True)
    heldout_h = {n: c["total_s"] / 3600 for n, c in costs.items()}
    heldout_each = {n: c["seconds_each"] for n, c in costs.items()}  # one evaluation per job, side by side
    budget = {j.name: full_run.job_budget(cfg, j) for j in jobs}
    if set(alone) >= set(budget):
        wall = full_run.project(budget, alone, together)
        with_heldout = full_run.project(budget, alone, together, {n: c["total_s"] for n, c in costs.items()})
        one_by_one = sum(budget[n] / alone[n] for n in budget)
        print(f"projected wall time of {CONFIG.name}: {duration(wall)} side by side ({wall / 3600:.2f} h); "
              f"{duration(one_by_one)} one job after another (training only); with held-out evaluation "
              f"{duration(with_heldout)} side by side ({with_heldout / 3600:.2f} h)", flush=True)
        ctx.save(budget=budget, alone=alone, heldout=costs, projected_wall_s=wall,
                 projected_wall_with_heldout_s=with_heldout, one_by_one_wall_s=one_by_one,
                 summary={"together_sps": together, "together_vs_alone": {n: together[n] / alone[n] for n in together},
                          "projected_wall_h": wall / 3600, "projected_wall_with_heldout_h": with_heldout / 3600,
                          "heldout_h": heldout_h, "heldout_each_s": heldout_each,
                          "one_by_one_wall_h": one_by_one / 3600})
    else:
        reason = f"no projection: alone speeds missing for {sorted(set(budget) - set(alone))}"
        print(reason)
        ctx.save(budget=budget, alone=alone, heldout=costs, projected_wall_s=None, reason=reason,
                 summary={"together_sps": together, "projected_wall_h": None, "heldout_h": heldout_h,
                          "heldout_each_s": heldout_each})


# What the project aims at on one GPU (configs/maze.yaml, population of 10, held-out evaluation included).
TARGETS = {"members_pop10_sps": 35_000.0, "explorer_sps": 12_000.0, "projected_wall_with_heldout_h": 3.0}
PROJECTION_FORMULA = (
    "full_run.project: every job trains side by side at its together speed (side_by_side) and "
    "spends its held-out seconds (evaluations x the seconds of one, measured side by side) spread evenly "
    "over its training, so job j alone would take T_j = budget_j / together_sps_j + heldout_s_j; when "
    "the first job ends, the other has the fraction 1 - t / T_j of its work left and finishes it at its "
    "alone speed (members, explorer): wall = t_first + (1 - t_first / T_other) x (budget_other / "
    "alone_sps_other + heldout_s_other); heldout_s_j = (1 + updates_j // logging.eval_interval + "
    "(1 if updates_j % logging.eval_interval else 0)) x seconds of one evaluation. Evaluations that "
    "training/loop.py runs beside training (logging.eval_overlap: all but the last) are counted "
    "whole too: for those the projection is an upper bound")


def figure_settings(result: dict[str, Any]) -> dict[str, Any]:
    """How one measurement ran: its overrides of the config, the runtime in force (device,
    precision, TF32, graphs), and for members the forward mode and ``population.compile``."""
    keys = ("overrides", "runtime", "forward_mode", "forward_mode_times", "compile")
    return {k: result[k] for k in keys if k in result}


def projection(ctx: Context) -> None:
    """The suite's headline: the projected wall time of configs/maze.yaml (10 x 25M member steps
    and 100M explorer steps, side by side on this one GPU, held-out evaluation included) from the
    jobs measured under the config's defaults (``under_config_defaults``: true when none of its
    inputs overrode a setting), how it was computed and from which measurements, and the measured
    speeds against the project's targets (``TARGETS``), each with the precision, forward mode and
    compile it ran with."""
    side = ctx.previous("side_by_side")
    if side.get("projected_wall_with_heldout_s") is None:
        raise StageFailed("side_by_side projected nothing: " + (side.get("reason") or "no held-out evaluation"))
    members_r = ctx.previous("members").get("members", {})
    explorer_r = ctx.previous("explorer").get("explorer", {})
    together = {r["job"]: r for r in side["together"]}
    inputs = {"members": members_r, "explorer": explorer_r,
              **{f"together/{job}": {**r, "overrides": side.get("overrides", [])} for job, r in together.items()}}
    measured_with = {name: figure_settings(r) for name, r in inputs.items()}
    under_defaults = all(r and not r.get("overrides") for r in inputs.values())
    wall_h = side["projected_wall_with_heldout_s"] / 3600
    measured = {"members_pop10_sps": members_r.get("sps"), "explorer_sps": explorer_r.get("sps"),
                "projected_wall_with_heldout_h": wall_h}
    figure_of = {"members_pop10_sps": ["members"], "explorer_sps": ["explorer"],
                 "projected_wall_with_heldout_h": list(inputs)}
    targets = {k: {"target": t, "measured": measured[k],
                   "met": None if measured[k] is None else
                   (measured[k] <= t if k.endswith("_h") else measured[k] >= t),
                   "measured_with": {name: measured_with[name] for name in figure_of[k]}}
               for k, t in TARGETS.items()}
    ctx.save(config=str(CONFIG.relative_to(ROOT)), config_defaults=config_defaults(),
             under_config_defaults=under_defaults, measured_with=measured_with, budget=side["budget"],
             alone_sps=side["alone"], together_sps=side["summary"]["together_sps"],
             heldout={n: {k: c[k] for k in ("evaluations", "overlapped", "seconds_each", "total_s")}
                      for n, c in side["heldout"].items()},
             formula=PROJECTION_FORMULA, targets=targets, dry_run=ctx.dry,
             projected_wall_s=side["projected_wall_s"], projected_wall_with_heldout_s=side["projected_wall_with_heldout_s"],
             projected_wall_with_heldout_h=wall_h)
    for k, t in targets.items():
        value = "not measured" if t["measured"] is None else f"{t['measured']:,.4g}"
        print(f"{k}: {value} against the target {t['target']:,g}: "
              f"{ {True: 'met', False: 'not met', None: 'unknown'}[t['met']] }", flush=True)
    print(f"projected wall time of {CONFIG.name} on this GPU, held-out evaluation included: {wall_h:.2f} h "
          f"({'under the config defaults' if under_defaults else 'NOT all under the config defaults'}: "
          f"{members_r.get('runtime')}, forward mode {members_r.get('forward_mode')}, "
          f"compile {members_r.get('compile')})", flush=True)
    ctx.save(summary={"targets_met": {k: t["met"] for k, t in targets.items()}, "under_config_defaults": under_defaults})


# ---- the same jobs under other settings, against the config's defaults -------------------------

def compare(ctx: Context, overrides: list[str], breakdown: bool) -> dict[str, Any]:
    """Members (the whole population) and the explorer measured under ``overrides``, each as a
    ratio to its measurement under the config's defaults (``members``, ``explorer``; None where
    that stage did not run)."""
    ratios = {}
    for kind, count in (("members", None), ("explorer", 0)):
        r = measure_one(ctx, kind, count, overrides, breakdown=breakdown)
        before = ctx.previous(kind).get(kind, {}).get("sps")
        ratios[kind] = r["sps"] / before if before else None
        ctx.save(ratios=ratios)
    return ratios


# IEEE fp32 everywhere: how the earlier GPU measurements (docs/performance.md) ran.
FP32 = ["network.precision=fp32", "network.tf32=false"]


def fp32_reference(ctx: Context) -> None:
    """Members (10) and explorer alone in IEEE fp32 (``FP32``), with their iterations' breakdown:
    the before of the config's defaults (``defaults_vs_fp32``: the defaults' steps/s over these)."""
    ratios = compare(ctx, FP32, breakdown=True)
    ctx.save(summary={"members_fp32_pop10_sps": ctx.result["members"]["sps"],
                      "explorer_fp32_sps": ctx.result["explorer"]["sps"],
                      "defaults_vs_fp32": {k: (1 / v if v else None) for k, v in ratios.items()}})


def members_pop1(ctx: Context) -> None:
    """One member alone under the config's defaults: the population of 10 against as many single
    runs one after another (``population_vs_single_runs``)."""
    r = measure_one(ctx, "members", 1, [], breakdown=False)
    whole = ctx.previous("members").get("members", {}).get("sps")
    gain = whole / r["sps"] if whole else None
    ctx.save(summary={"members_pop1_sps": r["sps"], "population_vs_single_runs": gain})


def pipeline(ctx: Context) -> None:
    """Rollouts serial against overlapped (env.pipeline): the defaults' stages ran the config's
    schedule (``auto``: serial); this stage measures the other one, so both are in the JSON."""
    ran = ctx.previous("members").get("members", {}).get("slices")
    other = "serial" if ran == 2 else "overlap"
    ratios = compare(ctx, [f"env.pipeline={other}"], breakdown=True)
    # overlap / serial, whichever of the two this stage measured
    speedup = {k: (None if v is None else (1 / v if other == "serial" else v)) for k, v in ratios.items()}
    ctx.save(measured=other, summary={"overlap_vs_serial": speedup})


def acting(ctx: Context) -> None:
    """Acting eager against captured as CUDA graphs (network.acting): the defaults' stages ran
    ``auto`` (captured on CUDA, eager on a CPU); this stage measures eager, so both are in the
    JSON. A CPU has no graphs: the dry run measures eager twice, through the same code."""
    ran = ctx.previous("members").get("members", {}).get("runtime", "")
    captured_before = "CUDA graphs" in ran
    ratios = compare(ctx, ["network.acting=eager"], breakdown=True)
    # captured / eager, where the defaults' stages were captured
    speedup = {k: (1 / v if v else None) for k, v in ratios.items()} if captured_before else None
    ctx.save(captured_before=captured_before, summary={"captured_vs_eager": speedup})


def bf16(ctx: Context) -> None:
    """The trunk in bf16 autocast with every other op IEEE fp32 (network.precision=bf16
    network.tf32=false) against the config's defaults (on a bf16 GPU: the same trunk, TF32 for the
    rest), so the ratio is what TF32 gives the ops outside the trunk."""
    ratios = compare(ctx, ["network.precision=bf16", "network.tf32=false"], breakdown=False)
    ctx.save(summary={"bf16_ieee_vs_defaults": ratios})
