#!/usr/bin/env bash
# The GPU check and benchmark of this project, for any CUDA machine, in priority order so that a
# run capped by --budget-s still delivers the most important figures: check the imports, run the CUDA tests
# (tests/test_device.py and the other files with CUDA cases), then measure configs/maze.yaml's
# jobs with ray=false under the config's defaults (precision auto, TF32, forward mode auto, ...):
# the members alone (population of 10) and the explorer alone, each with its iteration's breakdown;
# both side by side with one held-out evaluation per job; at once the projected wall time of
# configs/maze.yaml, held-out evaluation included, against the targets (the JSON's last key, with
# the settings each figure ran with); the members' update per forward mode x precision with its
# TFLOP/s and auto's choice; one GRU replay of the explorer's update at T=512; a short learning
# check of the chosen precision against fp32. Then, if the budget leaves time: the update with
# population.compile=true at its fastest combination, the jobs in IEEE fp32 (the before), one
# member alone, the other env.pipeline schedule, eager acting, a bf16 trunk with IEEE fp32
# elsewhere. Each stage is a fresh process with its own time limit. DIR/gpu_suite.json is
# rewritten after every stage and DIR/gpu_suite.log collects the stages' output, so a run stopped
# early keeps what it measured. docs/performance.md explains the results.
#
#   bash benchmarks/gpu_suite.sh [--out DIR] [--budget-s SECONDS] [--dry-run] [--seconds S]
#                                [--only STAGE,...] [--limit STAGE=SECONDS] [--precision tf32|bf16]
#                                [--wheels DIR] [--site DIR] [--debs DIR] [--exec-stages]
#
# --out DIR        where the results go (default: a new folder under $TMPDIR or /tmp, printed).
# --budget-s S     a time limit for the whole run, installs included: a stage that would not fit
#                  in what is left is skipped, saying why (default: none; every stage still stops
#                  at its own limit). The stages' GPU estimates (benchmarks/gpu_stages.py, each
#                  with its basis; most are reckoned from one H200's earlier times, not measured)
#                  add up to about 8 minutes through the learning check and 14 in all, so
#                  --budget-s 540 runs the checks, the defaults' jobs, the projection, the update
#                  matrix, the GRU replay and the learning check.
# --seconds S      the timed window of one measurement (default 5 on the GPU: one or two
#                  iterations after a warm-up one; the update and replay stages time 0.4 of it).
# --precision P    what the learning check trains against fp32: tf32 or bf16 (default: the one
#                  whose members' update was faster in this run).
# --dry-run        every stage on the CPU at tiny sizes (tests/test_gpu_suite.py runs it).
# --wheels DIR     install this folder's wheels first, without an index or dependencies, into
#                  --site (default: a temporary folder), for a node without internet access
#                  (docs/offline-gpu.md).
# --debs DIR       Debian packages of the shared libraries procgen's prebuilt libenv.so links
#                  (libGL, GLX, glib, X11), for an image that lacks them (docs/offline-gpu.md):
#                  they are unpacked into a temporary folder, and only the libraries this machine
#                  lacks go on LD_LIBRARY_PATH (the machine's own are never shadowed).
# The Python that runs it: $PYTHON, else .venv/bin/python when there is one, else python3.
# Stages: benchmarks/gpu_stages.py (the order and estimates; the stages by concern in gpu_checks.py,
# gpu_jobs.py and gpu_update.py); the runner and the other options: benchmarks/gpu_suite.py.
set -uo pipefail
started=$(date +%s.%N)

absolute() { [[ $1 == /* ]] && echo "$1" || echo "$PWD/$1"; }  # folders as the caller named them
results=""
debs=""
args=()
while (($#)); do
    case "$1" in
        --out) results=$(absolute "${2:?--out needs a folder}"); shift 2 ;;
        --debs) debs=$(absolute "${2:?--debs needs a folder}"); shift 2 ;;
        --wheels|--site) args+=("$1" "$(absolute "${2:?$1 needs a folder}")"); shift 2 ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;  # this header
        *) args+=("$1"); shift ;;
    esac
done
if [[ -n $debs ]] && ! compgen -G "$debs/*.deb" >/dev/null; then
    echo "gpu_suite: --debs $debs: no .deb files there" >&2
    exit 2
fi
cd "$(dirname "$0")/.." || exit 2
if [[ -z $results ]]; then
    results=$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite.XXXXXX") || exit 2
fi
mkdir -p "$results" || exit 2

if [[ -n $debs ]]; then
    unpacked=$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite_libs.XXXXXX")
    mkdir -p "$unpacked/lib"
    for deb in "$debs"/*.deb; do dpkg -x "$deb" "$unpacked/root" || exit 2; done
    added=()
    for lib in "$unpacked"/root/usr/lib/x86_64-linux-gnu/*.so.* "$unpacked"/root/lib/x86_64-linux-gnu/*.so.*; do
        [[ -L $lib ]] || continue  # the soname links (libGL.so.1 -> libGL.so.1.7.0): what the loader asks for
        name=$(basename "$lib")
        if ! ldconfig -p | grep -q "^[[:space:]]$name "; then
            cp -L "$lib" "$unpacked/lib/" && added+=("$name")
        fi
    done
    export LD_LIBRARY_PATH="$unpacked/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "gpu_suite: libraries from $debs this machine lacks: ${added[*]:-none}"
fi

python=${PYTHON:-}
if [[ -z $python ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
echo "gpu_suite: $python, results in $results"
exec "$python" benchmarks/gpu_suite.py suite --out "$results" --started "$started" ${args[@]+"${args[@]}"}
