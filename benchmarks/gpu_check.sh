#!/usr/bin/env bash
# Every GPU check of mxcomm in one run, with a compact summary at the end (for a machine with CUDA).
#
#   bash benchmarks/gpu_check.sh            # from anywhere; logs and JSON in $OUT (default /tmp/mxcomm-gpu-check)
#
# Steps, each under its own time limit (seconds, override by environment), most important first:
#   1. GPU_TESTS_S=240   pytest -m gpu tests/gpu: every collective over NCCL (bitwise equal to the gloo
#                        path), CUDA-graph capture + replay of compressed all-reduces and of the codec,
#                        the tiny TP Llama compiled by inductor on CUDA (one rank per GPU, at most 2)
#   2. THROUGHPUT_S=150  benchmarks/test_gpu_kernels.py at 64 and 256 MiB: encode / decode / decode_sum
#                        GB/s of every OCP format, as a fraction of copy_ and of the HBM peak
#                        (HBM_PEAK_GBPS=4800 for an H200 if torch does not report the memory clock)
#   3. TRITON_S=200      tests/kernels/test_triton.py + test_triton_rotation.py compiled on the GPU:
#                        the Triton kernels against the torch reference at atol=0 (stops at the first failure)
# A step that runs out of time is reported as such; the summary is printed either way.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-/tmp/mxcomm-gpu-check}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

python - <<'EOF' | tee -a "$SUMMARY"
import torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = "not installed"
n = torch.cuda.device_count()
names = sorted({torch.cuda.get_device_name(i) for i in range(n)})
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {tv}, NCCL "
      f"{'.'.join(map(str, torch.cuda.nccl.version())) if n else '-'}; {n} device(s): {', '.join(names) or 'none'}")
EOF

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log, one summary line
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$? verdict
    case $rc in
        0) verdict="ok" ;;
        5) verdict="nothing ran (skipped)" ;;
        124) verdict="TIMED OUT after ${limit}s" ;;
        *) verdict="FAILED (rc $rc)" ;;
    esac
    local last
    last=$(grep -E "passed|failed|skipped|error" "$OUT/$name.log" | tail -1)
    printf '%-16s %-24s %4ss  %s\n' "$name" "$verdict" "$((SECONDS - t0))" "$last" | tee -a "$SUMMARY"
}

step gpu-tests "${GPU_TESTS_S:-240}" python -m pytest -m gpu -q -rs -p no:cacheprovider tests/gpu
step throughput "${THROUGHPUT_S:-150}" python -m pytest -q -p no:cacheprovider benchmarks/test_gpu_kernels.py \
    -k "64 or 256" --benchmark-json "$OUT/throughput.json"
step triton-kernels "${TRITON_S:-200}" python -m pytest -q -x -p no:cacheprovider tests/kernels/test_triton.py \
    tests/kernels/test_triton_rotation.py

python - "$OUT/throughput.json" <<'EOF' | tee -a "$SUMMARY"
import json, os, sys
try:
    benches = json.load(open(sys.argv[1]))["benchmarks"]
except (OSError, ValueError, KeyError) as exc:
    sys.exit(f"throughput: no results ({exc})")
peak_env = float(os.environ.get("HBM_PEAK_GBPS", "0")) or None
print("codec throughput (bf16 activations, hidden 8192): GB/s moved, fraction of copy_, fraction of HBM peak")
print(f"{'op':<11}{'format':<12}{'MiB':>5}{'GB/s':>9}{'copy':>7}{'peak':>7}")
for b in sorted(benches, key=lambda b: (b["extra_info"]["op"], b["extra_info"]["format"], b["extra_info"]["mib"])):
    i = b["extra_info"]
    peak = i.get("peak_gbps") or peak_env
    frac = f"{i['gbps'] / peak:.0%}" if peak else "-"
    print(f"{i['op']:<11}{i['format']:<12}{i['mib']:>5}{i['gbps']:>9.0f}{i['fraction_of_copy']:>7.0%}{frac:>7}")
EOF
echo "logs and JSON in $OUT; this summary in $SUMMARY"
