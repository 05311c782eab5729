#!/usr/bin/env bash
# Pack libnvm, install the tarball into an empty project with `bun add`, and import it there:
# the native library must load with no manual step (prebuilt .so in the tarball, lifecycle
# scripts of dependencies blocked as bun does by default). Then run the `libnvm` command it
# installs with bunx: --help, list (and list -o json), a usage error.
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
import { parseBdf, native, PCI_CLASS_NVME, cuda, CudaError, cudaLibraryPath, Controller, SmartIoError, createGpuQueues, kernelImageCandidates } from "libnvm";
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
// SmartIO: the shim's source ships, but nothing built it here (no SISCI): a typed error that says so.
try {
  Controller.open("smartio:80000");
  throw new Error("Controller.open(smartio:80000) without SISCI did not throw");
} catch (e) {
  if (!(e instanceof SmartIoError) || e.reason !== "not-installed" || !e.message.includes("libnvm-sisci.so")) throw e;
}
if (typeof createGpuQueues !== "function") throw new Error("createGpuQueues is not exported");
// The kernels ship beside the .so when they were built (nvcc there at pack time).
const kernels = kernelImageCandidates().find((p) => existsSync(p));
if (process.env.EXPECT_KERNELS === "1" && !kernels?.includes("/prebuilds/")) throw new Error(`no prebuilt nvm_queue.fatbin found by lib/gpu (looked at ${kernelImageCandidates().join(", ")})`);
console.log(`package: libnvm imported, native ABI ${abi}, NVMe class 0x${PCI_CLASS_NVME.toString(16)}, cuda layer lazy, SmartIO says SISCI is not installed, GPU kernels ${kernels ? "shipped" : "not built (no nvcc when packed)"}`);
TS
expect_kernels=0
[ -f "$repo/c/build/nvm_queue.fatbin" ] && expect_kernels=1
EXPECT_KERNELS=$expect_kernels LIBNVM_LIBCUDA=/nonexistent/libcuda.so.1 bun main.ts
test -f node_modules/libnvm/prebuilds/linux-x64/libnvm-native.so
test -f node_modules/libnvm/c/cuda/nvm_queue.cu
test -f node_modules/libnvm/c/include/nvm_queue_core.h
test -f node_modules/libnvm/lib/cuda/driver.ts
# The SmartIO shim ships as source (built only where SISCI is installed), never prebuilt.
test -f node_modules/libnvm/c/src/sisci.c
test -f node_modules/libnvm/c/include/nvm_sisci.h
if [ -e node_modules/libnvm/prebuilds/linux-x64/libnvm-sisci.so ]; then
  echo "package: a prebuilt libnvm-sisci.so was packed; it must be built against the cluster's SISCI"
  exit 1
fi
# Tests, the mock libcuda and the fake SISCI among them, stay out of the package.
if [ -e node_modules/libnvm/test ]; then
  echo "package: test/ was packed (the mock libcuda with it); keep it out of \"files\""
  exit 1
fi
echo "package: library imports"

# The `libnvm` command the package installs (package.json "bin"), run as users run it.
help="$(bunx libnvm --help)"
grep -q '^Usage: libnvm <command>' <<<"$help" || { echo "package: bunx libnvm --help printed no usage: $help"; exit 1; }
for c in list id-ctrl id-ns format read write perf completion; do
  grep -q "^  $c " <<<"$help" || { echo "package: bunx libnvm --help does not list $c"; exit 1; }
done
echo "package: bunx libnvm --help lists the subcommands"
# Every NVMe controller on this machine (none is fine: it says so, exit 0); the driver loads from the package.
list="$(bunx libnvm list)" || { echo "package: bunx libnvm list exited $?"; exit 1; }
echo "$list" | sed 's/^/package: list: /'
json="$(bunx libnvm list -o json)"
bun -e 'const j = JSON.parse(process.argv[1]); if (!Array.isArray(j.Devices) || !Array.isArray(j.Controllers)) throw new Error("no Devices/Controllers arrays")' "$json"
if bunx libnvm id-ctrl 2>/dev/null; then echo "package: bunx libnvm id-ctrl without a controller exited 0"; exit 1; else rc=$?; fi
[ "$rc" -eq 2 ] || { echo "package: usage error exited $rc, not 2"; exit 1; }
echo "package: bunx libnvm list, list -o json, usage error exit 2"
echo "package: 4 passed, 0 failed"
