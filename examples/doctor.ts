/**
 * Which ways of reaching a controller work on this machine, and for each that does not, why and
 * the commands that fix it; then the GPU side. Changes nothing. (`libnvm doctor` prints the same.)
 *
 *   bun run examples/doctor.ts --ctrl=05:00.0 [--json] [--skip-gpu]
 */
import { doctorReport, doctorText } from "../cli/commands/tools.ts";
import { parse, run, toJson } from "./common.ts";

const usage = `usage: bun run examples/doctor.ts --ctrl=BDF|/dev/disnvmN|smartio:<fdid> [--json] [--skip-gpu]
  Checks the raw sysfs, VFIO, disnvm and SmartIO paths to the controller: bound driver, IOMMU group
  and its members, /dev/vfio permissions, memlock limit, CAP_SYS_ADMIN, CAP_SYS_RAWIO, hugepages, the
  module; for SmartIO (a controller borrowed across a Dolphin PCIe cluster) whether SISCI is installed
  and libnvm's shim built against it, and what SISCI knows of the device (nothing is borrowed).
  Then the GPU side (NVMe DMA into GPU memory): the CUDA driver, its GPUs and their dma-buf export,
  the module's dma-buf import, the IOMMU. --skip-gpu leaves the CUDA driver unloaded.
  Exit 0 when at least one path to the controller works now, 1 when none does.
`;

await run(() => {
  const args = parse(usage, { "skip-gpu": { type: "boolean", default: false } });
  const r = doctorReport(args.ctrl, args["skip-gpu"] === true);
  process.stdout.write(args.json ? toJson(r) + "\n" : doctorText(r));
  if (!r.paths.some((p) => p.possible)) process.exitCode = 1;
});
