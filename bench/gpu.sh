#!/usr/bin/env bash
# Goals 1-2 of issue 7 on CUDA (eager and CUDA-graphed steps, plus the cheap no-sort curve): prints the card,
# then the NAME RATIO lines.
#
#   bash bench/gpu.sh            # the first of .venv/bin/python, python3 whose torch sees CUDA (override: PY=...)
#
# Exits 3 with a message when there is no usable CUDA device. Bounded to under 5 minutes
# (timeout 280 s for the benchmarks; on CUDA each interleaving waits at most 5 s for quiet CPU cores).
# Add the printed numbers to bench/RESULTS.md, labelled with the card.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then  # .venv holds the CPU build of torch on the development machines: try python3 too
    for candidate in .venv/bin/python "$(command -v python3 || true)"; do
        if [ -x "$candidate" ] && "$candidate" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
            PY="$candidate"
            break
        fi
    done
    PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
fi

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
    echo "bench/gpu.sh: nvidia-smi not found"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu.sh: no CUDA device visible to torch ($("$PY" -c 'import torch; print(torch.__version__)' 2>&1)); nothing to run" >&2
    exit 3
fi
"$PY" -c "import torch; print('card:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| cuda', torch.version.cuda)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout 280 "$PY" -m bench --device cuda --only step_time,step_graph,grad_path,no_sort "$@"
