/**
 * Which ways of reaching a controller work on this machine, and for each that does not, why and
 * the commands that fix it. Changes nothing. (`libnvm doctor` prints the same.)
 *
 *   bun run examples/doctor.ts --ctrl=05:00.0 [--json]
 */
import { diagnose } from "../lib/diagnose.ts";
import { doctorText } from "../cli/commands/tools.ts";
import { parse, run, toJson } from "./common.ts";

const usage = `usage: bun run examples/doctor.ts --ctrl=BDF|/dev/disnvmN [--json]
  Checks the raw sysfs, VFIO and disnvm paths to the controller: bound driver, IOMMU group and
  its members, /dev/vfio permissions, memlock limit, CAP_SYS_ADMIN, CAP_SYS_RAWIO, hugepages, the module.
  Exit 0 when at least one path works now, 1 when none does.
`;

await run(() => {
  const args = parse(usage, {});
  const d = diagnose(args.ctrl);
  process.stdout.write(args.json ? toJson(d) + "\n" : doctorText(d));
  if (!d.paths.some((p) => p.possible)) process.exitCode = 1;
});
