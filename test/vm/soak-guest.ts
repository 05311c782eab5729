/**
 * The soak test in the QEMU guest (not part of CI: it runs 10 minutes by default).
 *   bash test/vm/setup.sh && bun test/vm/soak-guest.ts [--seconds=600]
 */
import { cleanup, runInGuest } from "./run.ts";
import { TEST_CONFIG } from "./hw.ts";

const secondsArg = process.argv.find((a) => a.startsWith("--seconds="));
const seconds = secondsArg ? Number(secondsArg.split("=")[1]) : 600;
const r = await runInGuest(`bun bench/soak.ts --ctrl="$LIBNVM_TEST_CTRL" --ns=1 --seconds=${seconds}`, TEST_CONFIG, {
  timeoutSec: seconds + 300,
});
process.stderr.write(`soak-guest: exit ${r.code} after ${(r.durationMs / 1000).toFixed(0)} s\n`);
await cleanup(r);
process.exit(r.code);
