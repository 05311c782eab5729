/**
 * Demo: boots a guest whose controller differs from the test one (serial, MDTS, namespace layout) and
 * runs `libnvm list`, `libnvm id-ns` and the examples against it. Exits with the guest command's status.
 *
 *   bash test/vm/setup.sh && bun test/vm/demo.ts      (or: bun run demo)
 */
import { cleanup, runInGuest, type GuestConfig } from "./run.ts";

export const DEMO_CONFIG: GuestConfig = {
  serial: "LIBNVM-DEMO-01",
  mdts: 5,
  namespaces: [
    { nsid: 1, sizeBytes: 48 * 1024 * 1024, lbaSize: 4096 },
    { nsid: 2, sizeBytes: 16 * 1024 * 1024, lbaSize: 512 },
  ],
};

const script = [
  `set -e`,
  `echo "+ libnvm list"`,
  `bun bin/libnvm.ts list`,
  `echo "+ libnvm id-ns $LIBNVM_TEST_CTRL -n 1"`,
  `bun bin/libnvm.ts id-ns "$LIBNVM_TEST_CTRL" -n 1`,
  `echo "+ bun examples/identify.ts --ctrl=$LIBNVM_TEST_CTRL"`,
  `bun examples/identify.ts --ctrl="$LIBNVM_TEST_CTRL"`,
  // 32 blocks of 4 KiB: exactly MDTS (2^5 pages), through a PRP list.
  `echo "+ bun examples/roundtrip.ts --ctrl=$LIBNVM_TEST_CTRL --ns=1 --lba=100 --count=32"`,
  `bun examples/roundtrip.ts --ctrl="$LIBNVM_TEST_CTRL" --ns=1 --lba=100 --count=32`,
].join("\n");

if (import.meta.main) {
  try {
    const r = await runInGuest(script, DEMO_CONFIG, { timeoutSec: 600 });
    process.stderr.write(`demo: exit ${r.code} after ${(r.durationMs / 1000).toFixed(1)} s\n`);
    await cleanup(r);
    process.exit(r.code);
  } catch (e) {
    process.stderr.write(`demo: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(2);
  }
}
