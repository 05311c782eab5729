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
import { parseBdf, native, PCI_CLASS_NVME } from "libnvm";
if (parseBdf("05:00.0") !== "0000:05:00.0") throw new Error("parseBdf");
const abi = native().nvm_abi_version();
console.log(`package: libnvm imported, native ABI ${abi}, NVMe class 0x${PCI_CLASS_NVME.toString(16)}`);
TS
bun main.ts
test -f node_modules/libnvm/prebuilds/linux-x64/libnvm-native.so
echo "package: 1 passed, 0 failed"
