#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one command, for a GPU machine lent for a few minutes:
#
#   OUT=/tmp/gpu [NANOGPT_DIR=path] bash scripts/gpu_checks.sh [tests|bench|sidebyside|generation|suite|notebook|all]...
#
# - tests:    tests/test_cuda.py and the CUDA test of test_loading.py (skipped on CPUs)
# - bench:    bench/gpu.py --save (GPT-2 small, compile off and on), copies its section
# - sidebyside: bench/gpu.py --nanogpt "$NANOGPT_DIR" --save (nanoGPT's own train.py and our
#             CLI on the same tokens, defaults and eager), when NANOGPT_DIR names a checkout
# - generation: bench/generation.py --device cuda --save (ours vs HF generate, bf16)
# - suite:    the rest of the test suite with the GPU visible (device "auto" = CUDA),
#             notebook files excluded unless jupyter's packages are importable
# - notebook: the notebook tests (papermill), when jupyter's packages are importable
# Logs and results go to $OUT (one file per part). Uses the machine's python3 and its torch;
# GPT-2's BPE comes from .cache/tiktoken (make install writes it). Each part has a time
# limit so that one stuck part cannot eat the others' time.
set -u
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TIKTOKEN_CACHE_DIR="$PWD/.cache/tiktoken"
PY=${PYTHON:-python3}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(all)

want() { [[ " ${parts[*]} " == *" $1 "* || " ${parts[*]} " == *" all "* ]]; }
has_jupyter() { $PY -c "import papermill, nbclient, ipykernel" 2>/dev/null; }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import sys, torch, transformers, tiktoken; print(sys.version.split()[0], 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, \
'tiktoken', tiktoken.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if want tests; then
  timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    "tests/test_loading.py::test_loads_onto_cuda_and_moves_an_existing_model" \
    > "$OUT/tests.txt" 2>&1
  echo "tests: exit $?"; tail -15 "$OUT/tests.txt"
fi

if want bench; then
  timeout 300 $PY bench/gpu.py --save > "$OUT/bench.txt" 2>&1
  echo "bench: exit $?"; tail -14 "$OUT/bench.txt"
  cp bench/results/gpu.md "$OUT/" 2>/dev/null
fi

if want sidebyside; then
  if [ -n "${NANOGPT_DIR:-}" ]; then
    timeout 480 $PY bench/gpu.py --nanogpt "$NANOGPT_DIR" --rounds 1 --save \
      > "$OUT/sidebyside.txt" 2>&1
    echo "sidebyside: exit $?"; tail -12 "$OUT/sidebyside.txt"
    cp bench/results/gpu_nanogpt.md "$OUT/" 2>/dev/null
  else
    echo "sidebyside: skipped (set NANOGPT_DIR to a karpathy/nanoGPT checkout)"
  fi
fi

if want generation; then
  timeout 180 $PY bench/generation.py --device cuda --save > "$OUT/generation.txt" 2>&1
  echo "generation: exit $?"; tail -12 "$OUT/generation.txt"
  cp bench/results/generation_gpu.md "$OUT/" 2>/dev/null
fi

if want suite; then
  ignore=(--ignore=tests/test_cuda.py)
  if ! has_jupyter; then
    for f in tests/test_notebook*.py tests/test_widgets.py tests/test_examples.py; do
      ignore+=(--ignore="$f")
    done
  fi
  workers=$($PY -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
  timeout 300 $PY -m pytest -q -p no:cacheprovider $workers "${ignore[@]}" tests \
    > "$OUT/suite.txt" 2>&1
  echo "suite: exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/suite.txt" | tail -25
fi

if want notebook && has_jupyter; then
  timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_notebook.py \
    tests/test_notebook_runs.py > "$OUT/notebook.txt" 2>&1
  echo "notebook: exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/notebook.txt" | tail -15
fi
