#!/usr/bin/env bash
# Pack libnvm, install the tarball into an empty project with `bun add`, and import it there:
# the native library must load with no manual step (prebuilt .so in the tarball, lifecycle
# scripts of dependencies blocked as bun does by default).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$repo"
tgz="$(npm pack --silent --pack-destination "$work" | tail -n 1)"
echo "package: packed $tgz ($(du -h "$work/$tgz" | cut -f1))"
mkdir "$work/app" && cd "$work/app"
echo '{ "name": "app", "private": true, "type": "module" }' > package.json
bun add "$work/$tgz" >/dev/null
cat > main.ts <<'TS'
import { parseBdf, native, PCI_CLASS_NVME, cuda, CudaError, cudaLibraryPath, createGpuQueues, kernelImageCandidates } from "libnvm";
import { existsSync } from "node:fs";
if (parseBdf("05:00.0") !== "0000:05:00.0") throw new Error("parseBdf");
const abi = native().nvm_abi_version();
// The GPU layer ships, and loads no libcuda until used: here there is none to load.
if (cudaLibraryPath() !== undefined) throw new Error("libcuda loaded at import");
try {
  cuda.devices();
  throw new Error("cuda.devices() with LIBNVM_LIBCUDA pointing nowhere did not throw");
} catch (e) {
  if (!(e instanceof CudaError) || e.reason !== "no-driver") throw e;
}
if (typeof createGpuQueues !== "function") throw new Error("createGpuQueues is not exported");
// The kernels ship beside the .so when they were built (nvcc there at pack time).
const kernels = kernelImageCandidates().find((p) => existsSync(p));
if (process.env.EXPECT_KERNELS === "1" && !kernels?.includes("/prebuilds/")) throw new Error(`no prebuilt nvm_queue.fatbin found by lib/gpu (looked at ${kernelImageCandidates().join(", ")})`);
console.log(`package: libnvm imported, native ABI ${abi}, NVMe class 0x${PCI_CLASS_NVME.toString(16)}, cuda layer lazy, GPU kernels ${kernels ? "shipped" : "not built (no nvcc when packed)"}`);
TS
expect_kernels=0
[ -f "$repo/c/build/nvm_queue.fatbin" ] && expect_kernels=1
EXPECT_KERNELS=$expect_kernels LIBNVM_LIBCUDA=/nonexistent/libcuda.so.1 bun main.ts
test -f node_modules/libnvm/prebuilds/linux-x64/libnvm-native.so
test -f node_modules/libnvm/c/cuda/nvm_queue.cu
test -f node_modules/libnvm/c/include/nvm_queue_core.h
test -f node_modules/libnvm/lib/cuda/driver.ts
# Tests, the mock libcuda among them, stay out of the package.
if [ -e node_modules/libnvm/test ]; then
  echo "package: test/ was packed (the mock libcuda with it); keep it out of \"files\""
  exit 1
fi
echo "package: 1 passed, 0 failed"
