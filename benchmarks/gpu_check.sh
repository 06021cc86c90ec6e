#!/usr/bin/env bash
# The GPU check in one call: STDiT2-XL/2 bf16 at 240x426 x {16, 64} frames (training steps eager and
# compiled, with and without gradient checkpointing; sampling steps with CFG) with MFU from counted FLOPs
# and peak memory, a ColossalAI zero2 + HybridAdam training step, and a 20-step tiny training whose loss
# must fall. One JSON line per case (benchmarks/gpu_check.py says what each holds). Under 8 minutes on one
# H100/H200; needs no network.
#
#   benchmarks/gpu_check.sh --dry-run --out dry.jsonl        # here, on CPU: every case at a tiny size, < 1 min
#   benchmarks/gpu_check.sh --pack .whl/gpu_site             # here: prepare what the GPU machine lacks
#   benchmarks/gpu_check.sh --site .whl/gpu_site --out "$OUT/gpu_check.jsonl"   # on the GPU machine
#
# What to carry. The GPU machine has python3 with torch, numpy, safetensors, tqdm, transformers, peft and
# accelerate, but not ColossalAI, nor galore_torch and bitsandbytes, which colossalai.nn.optimizer imports
# at import time. PyPI has ColossalAI 0.5.0 as an sdist only, and the bitsandbytes wheel (CUDA libraries
# for every CUDA version) alone would not fit the 64 MiB a device call carries, while HybridAdam never
# calls into bitsandbytes. So `--pack DIR` copies, from this project's .venv (`make install`), the
# installed colossalai and its `extensions` package (with the C++/CUDA sources HybridAdam's kernels are
# JIT-built from on first use, by ninja and nvcc, which the GPU image has), galore_torch, and the Python
# code of bitsandbytes without its native libraries (about 11 MB in all); a DIR inside the repo that
# .gitignore does not cover (/.whl/ it does) is added to the git exclude file, so it is never
# committed. Then name DIR in the device call's carry and pass `--site DIR`, which puts it on
# PYTHONPATH after src/:
#
#   run(command="benchmarks/gpu_check.sh --site .whl/gpu_site --out $OUT/gpu_check.jsonl",
#       carry=[".whl/gpu_site"], timeout_s=540)
#
# Without --site the zero2 case records the ImportError and the other cases still run.
# Environment: PYTHON (default .venv/bin/python when present, else python3); GPU_CHECK_TIMEOUT (seconds,
# default 470: the script is stopped with SIGINT then, and the case that was running is recorded).
# Any other argument goes to benchmarks/gpu_check.py (--list, --cases, --frames, --budget-s, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

pack() {
  local dest="$1" site
  site="$("$PY" -c 'import os, colossalai; print(os.path.dirname(os.path.dirname(colossalai.__file__)))')"
  mkdir -p "$dest"
  (cd "$site" && tar --exclude=__pycache__ -cf - colossalai extensions galore_torch \
      colossalai-*.dist-info galore_torch-*.dist-info) | tar -xf - -C "$dest"
  (cd "$site" && tar --exclude=__pycache__ --exclude='*.so' -cf - bitsandbytes bitsandbytes-*.dist-info) \
      | tar -xf - -C "$dest"
  # a folder inside the repo must never be committed: ignore it locally unless .gitignore already does
  if [ "${dest#/}" = "$dest" ] && git rev-parse --git-dir >/dev/null 2>&1 && ! git check-ignore -q "$dest"; then
    local exclude
    exclude="$(git rev-parse --git-path info/exclude)"
    mkdir -p "$(dirname "$exclude")"
    local ignore="/${dest#./}"
    echo "${ignore%/}/" >> "$exclude"
  fi
  du -sh "$dest"
}

SITE=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --pack) pack "${2:?--pack needs a folder}"; exit 0 ;;
    --site) SITE="$(cd "${2:?--site needs a folder}" && pwd)"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

export PYTHONPATH="$PWD/src${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"  # parallel JIT builds of ColossalAI's kernels
exec timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT:-470}" "$PY" benchmarks/gpu_check.py ${ARGS[@]+"${ARGS[@]}"}
