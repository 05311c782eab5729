#!/usr/bin/env bash
# The GPU check of lib/cuda (issue 11) on a machine with an NVIDIA GPU and its driver; no NVMe, no
# network. Uses this checkout and Bun from node_modules; builds the C library with CMake if it is
# not built yet. Under 5 minutes (each stage has a timeout). Prints read-only facts, then one line
# per check ("gpu: ok <check> ..." / "gpu: FAIL <check> ..."), then "gpu: N passed, M failed".
# No driver or no GPU fails; nothing is skipped. Usage: bash test/gpu/check.sh [results-dir]
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

  if [ ! -f c/build/libnvm-native.so ]; then
    if ! timeout 120 bash -c 'cmake -S c -B c/build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build c/build >/dev/null'; then
      echo "gpu: FAIL setup could not build c/build/libnvm-native.so (needs cmake and gcc)"
      echo "gpu: 0 passed, 1 failed"
      return 1
    fi
  fi

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
  local out rc
  out="$(mktemp)"
  timeout -k 5 180 "$bun" test/gpu/check.ts 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "gpu: FAIL timeout test/gpu/check.ts ran past 180 s"
    echo "gpu: $(grep -c '^gpu: ok ' "$out") passed, $(( $(grep -c '^gpu: FAIL ' "$out") + 1 )) failed"
  fi
  rm -f "$out"
  return "$rc"
}

if [ -n "${1:-}" ]; then
  mkdir -p "$1"
  main 2>&1 | tee "$1/gpu-check.log"
  exit "${PIPESTATUS[0]}"
fi
main
