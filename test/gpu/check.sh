#!/usr/bin/env bash
# The GPU check on a machine with an NVIDIA GPU and its driver; no NVMe, no network. Two parts:
# the CUDA layer (lib/cuda, issue 11: test/gpu/check.ts) and GPU threads running the queue core
# against the fake controller thread over pinned host memory (issue 12: test/gpu/queue-check.ts).
# Uses this checkout and Bun from node_modules; builds the C library (and, when nvcc is there, the
# kernels) with CMake if they are not built yet; without nvcc, bring c/build/nvm_queue.fatbin
# along (or set LIBNVM_KERNELS). gcc builds the fake controller. Under 5 minutes (each stage has a
# timeout). Prints read-only facts, then one line per check ("gpu: ok <check> ..." / "gpu: FAIL
# <check> ..."), then "gpu: N passed, M failed". No driver or no GPU fails; nothing is skipped.
# Usage: bash test/gpu/check.sh [results-dir]
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
bun="$repo/node_modules/.bin/bun"

main() {
  if [ ! -x "$bun" ]; then
    echo "gpu: FAIL setup no Bun at $bun: run npm ci (or copy node_modules) into this checkout first"
    echo "gpu: 0 passed, 1 failed"
    return 1
  fi

  # Facts (read only; nothing about the GPU is changed).
  echo "gpu: info kernel $(uname -r); cmdline: $(cat /proc/cmdline)"
  echo "gpu: info driver: $(head -n1 /proc/driver/nvidia/version 2>/dev/null || echo 'no /proc/driver/nvidia/version')"
  if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 20 nvidia-smi --query-gpu=index,name,pci.bus_id,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: info nvidia-smi: /'
  else
    echo "gpu: info nvidia-smi not installed"
  fi
  for f in /dev/udmabuf /dev/iommu /dev/dma_heap; do
    [ -e "$f" ] && echo "gpu: info $f present" || echo "gpu: info $f absent"
  done

  if [ ! -f c/build/libnvm-native.so ] || { [ ! -f c/build/nvm_queue.fatbin ] && [ -z "${LIBNVM_KERNELS:-}" ] && command -v nvcc >/dev/null 2>&1; }; then
    if ! timeout 150 bash -c 'cmake -S c -B c/build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build c/build >/dev/null'; then
      echo "gpu: FAIL setup could not build c/build (needs cmake and gcc; nvcc for the kernels)"
      echo "gpu: 0 passed, 1 failed"
      return 1
    fi
  fi
  echo "gpu: info kernels: ${LIBNVM_KERNELS:-$( [ -f c/build/nvm_queue.fatbin ] && echo "c/build/nvm_queue.fatbin ($(stat -c %s c/build/nvm_queue.fatbin) bytes)" || echo "none built (no nvcc 12.8+): the queue checks will fail")}"
  command -v nvcc >/dev/null 2>&1 && echo "gpu: info nvcc: $(nvcc --version | tail -n1)" || echo "gpu: info nvcc not installed"


  # Not a GPU check: where the kernel has udmabuf, the mock libcuda's dma-buf export is a real one,
  # which CI machines cannot run. Reported for the record, not counted, and before the checks so
  # that their count stays the last line.
  if [ -e /dev/udmabuf ] && command -v cc >/dev/null 2>&1; then
    if timeout 60 "$bun" test test/unit/cuda.test.ts >/dev/null 2>&1; then
      echo "gpu: note mock libcuda dma-buf export through /dev/udmabuf: unit tests pass"
    else
      echo "gpu: note mock libcuda dma-buf export through /dev/udmabuf: unit tests FAIL (bun test test/unit/cuda.test.ts)"
    fi
  fi

  # The checks themselves; a hang is a failure too, and the closing count then includes it.
  local out rc=0 r
  out="$(mktemp)"
  timeout -k 5 150 "$bun" test/gpu/check.ts 2>&1 | tee -a "$out"
  r=${PIPESTATUS[0]}
  if [ "$r" -eq 124 ] || [ "$r" -eq 137 ]; then echo "gpu: FAIL timeout test/gpu/check.ts ran past 150 s" | tee -a "$out"; fi
  [ "$r" -eq 0 ] || rc=1
  # LIBNVM_GPU_CHECK_QUICK=1 (the unit test against the mock libcuda): 1 s per configuration.
  timeout -k 5 150 "$bun" test/gpu/queue-check.ts ${LIBNVM_GPU_CHECK_QUICK:+--quick} 2>&1 | tee -a "$out"
  r=${PIPESTATUS[0]}
  if [ "$r" -eq 124 ] || [ "$r" -eq 137 ]; then echo "gpu: FAIL timeout test/gpu/queue-check.ts ran past 150 s" | tee -a "$out"; fi
  [ "$r" -eq 0 ] || rc=1
  # compute-sanitizer memcheck on one small queue configuration (gpu.md section 8, step 6).
  if command -v compute-sanitizer >/dev/null 2>&1; then
    if timeout -k 5 90 compute-sanitizer --tool memcheck --error-exitcode 42 "$bun" test/gpu/queue-check.ts --only q64-1x32 --quick >"$out.cs" 2>&1; then
      echo "gpu: ok memcheck compute-sanitizer memcheck on queue-q64-1x32: $(grep -m1 'ERROR SUMMARY' "$out.cs" || echo 'no summary')" | tee -a "$out"
    else
      echo "gpu: FAIL memcheck compute-sanitizer memcheck on queue-q64-1x32: $(grep -m1 -E 'ERROR SUMMARY|Invalid|FAIL' "$out.cs" || tail -n1 "$out.cs")" | tee -a "$out"
      rc=1
    fi
    rm -f "$out.cs"
  else
    echo "gpu: FAIL memcheck compute-sanitizer is not installed (CUDA toolkit): the GPU memory check did not run" | tee -a "$out"
    rc=1
  fi
  echo "gpu: $(grep -c '^gpu: ok ' "$out") passed, $(grep -c '^gpu: FAIL ' "$out") failed"
  rm -f "$out"
  return "$rc"
}

if [ -n "${1:-}" ]; then
  mkdir -p "$1"
  main 2>&1 | tee "$1/gpu-check.log"
  exit "${PIPESTATUS[0]}"
fi
main
