#!/usr/bin/env bash
# One call on a lent GPU machine (no Ray, no registry): install the wheels of .whl/ when present,
# check imports, run tests/test_device.py on CUDA, then measure in priority order (members fp32
# alone, population of 10 and 1; the explorer alone; both side by side and the projected time of
# configs/maze.yaml; bf16; pipeline serial vs overlap; captured vs eager acting), each stage in a fresh process with its own
# time limit, skipped if it would overrun the budget (8 minutes, installs included). DIR/gpu_suite.json
# is rewritten after every stage, DIR/gpu_suite.log collects the stages' output.
#
#   bash benchmarks/gpu_suite.sh [--dry-run] [--out DIR] [--budget SECONDS] [--seconds S]
#                                [--only STAGE,...] [--limit STAGE=SECONDS] [--wheels DIR] [--site DIR]
#                                [--exec-stages] [--debs DIR]
#
# --debs DIR (default .gl/): Debian packages of the shared libraries procgen's prebuilt libenv.so
# links (libGL, GLX, glib, X11; README Status says which): a headless GPU image may lack them. They
# are unpacked into a temporary folder, and the libraries this machine lacks go on LD_LIBRARY_PATH
# (the machine's own are never shadowed).
# DIR: --out, else $OUT when set, else a new temporary folder. --dry-run runs every stage on the
# CPU at tiny sizes (tests/test_gpu_suite.py does). The Python that runs it: $PYTHON, else
# .venv/bin/python when there is one, else python3. Stages: benchmarks/gpu_stages.py; options: benchmarks/gpu_suite.py.
set -uo pipefail
started=$(date +%s.%N)
cd "$(dirname "$0")/.." || exit 2

out=""
debs=.gl
args=()
while (($#)); do
    case "$1" in
        --out) out=${2:?--out needs a folder}; shift 2 ;;
        --out=*) out=${1#--out=}; shift ;;
        --debs) debs=${2:?--debs needs a folder}; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
if [[ -z $out ]]; then
    out=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite.XXXXXX")}
fi
mkdir -p "$out" || exit 2

if compgen -G "$debs/*.deb" >/dev/null; then
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
echo "gpu_suite: $python, results in $out"
exec "$python" benchmarks/gpu_suite.py suite --out "$out" --started "$started" ${args[@]+"${args[@]}"}
