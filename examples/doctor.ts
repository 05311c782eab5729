/**
 * Which ways of reaching a controller work on this machine, and for each that does not, why and
 * the commands that fix it. Changes nothing.
 *
 *   bun run examples/doctor.ts --ctrl=05:00.0 [--json]
 */
import { join } from "node:path";
import { diagnose } from "../lib/diagnose.ts";
import { diagnoseGpu } from "../lib/cuda/diagnose.ts";
import { SYSFS_PCI_DEVICES } from "../lib/pci.ts";
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
  const d = diagnose(args.ctrl);
  const f0 = d.facts;
  const gpu = args["skip-gpu"] || d.error
    ? undefined
    : diagnoseGpu(d.bdf ? join(SYSFS_PCI_DEVICES, d.bdf) : undefined, d.device?.driver ?? null, f0.iommuEnabled && !f0.iommuPassthrough, f0.capSysRawio);
  if (args.json) console.log(toJson({ ...d, ...(gpu ? { gpu } : {}) }));
  else {
    const f = d.facts;
    const sd = f.sisci.device;
    const dev = d.device
      ? `vendor ${d.device.vendor} device ${d.device.device}, class ${d.device.classCode}, bound to ${d.device.driver ?? "no driver"}`
      : sd
        ? "error" in sd
          ? `SmartIO device: ${sd.error}`
          : `SmartIO device lent by node ${sd.lenderNode}, reached through adapter ${sd.adapter}`
        : /^smartio:/i.test(d.ctrl)
          ? "SmartIO device (SISCI is not installed, so nothing is known of it)"
          : "not found";
    console.log(`libnvm doctor: ${d.bdf ?? d.ctrl}: ${d.error ?? dev}`);
    if (d.error) console.log(`  fix:    ${d.paths[0]!.fixes.join("; ")}`);
    for (const p of d.error ? [] : d.paths) {
      console.log(`  ${p.kind.padEnd(7)} ${p.possible ? "works now" : `not possible: ${p.problems.join("; ")}`}`);
      for (const w of p.warnings) console.log(`          warning: ${w}`);
      for (const fix of p.possible ? [] : p.fixes) console.log(`          fix: ${fix}`);
    }
    const ml = f.memlock === "unlimited" ? "unlimited" : `${f.memlock} bytes`;
    console.log(
      `  facts:  kernel ${f.kernel}; ${f.root ? "root" : "not root"}; CAP_SYS_ADMIN ${f.capSysAdmin ? "yes" : "no"}; CAP_SYS_RAWIO ${f.capSysRawio ? "yes" : "no"}; memlock ${ml}; ` +
        `hugepages ${f.hugepages.free}/${f.hugepages.total} free; IOMMU ${f.iommuEnabled ? (f.iommuPassthrough ? "passthrough" : "on") : "off"}` +
        `${f.iommuGroup !== null ? `, group ${f.iommuGroup}${f.groupMembers.length ? ` with ${f.groupMembers.map((m) => m.bdf).join(", ")}` : " (alone)"}` : ""}; ` +
        `vfio-pci ${f.vfioPciLoaded ? "loaded" : "not loaded"}; disnvm ${f.disnvmLoaded ? "loaded" : "not loaded"}${f.disnvmNode ? ` (${f.disnvmNode})` : ""}; ` +
        `SISCI ${f.sisci.installed ? `installed${f.sisci.localNode !== null ? `, node ${f.sisci.localNode}` : ""}${f.sisci.nvmeDevices.length ? `, NVMe devices ${f.sisci.nvmeDevices.join(", ")}` : ""}` : "not installed"}`,
    );
    if (gpu) {
      const g = gpu.devices.map((x) => `GPU ${x.ordinal} ${x.name} (${x.pciBusId}${x.dmaBufSupported ? ", exports dma-bufs" : ", no dma-buf export"})`);
      console.log(`  gpu     ${gpu.possible ? `works now: ${g.join("; ")}; the module imports dma-bufs` : `not possible: ${gpu.problems.join("; ")}`}`);
      for (const fix of gpu.possible ? [] : gpu.fixes) console.log(`          fix: ${fix}`);
      console.log(
        `  cuda:   ${gpu.driver.found ? `driver CUDA ${Math.floor(gpu.driver.version! / 1000)}.${(gpu.driver.version! % 1000) / 10}${gpu.driver.library ? ` (${gpu.driver.library})` : ""}; ${gpu.devices.length} GPU${gpu.devices.length === 1 ? "" : "s"}` : "no driver"}`,
      );
    }
    if (d.recommended) {
      const ctrl = d.recommended === "disnvm" ? d.facts.disnvmNode : d.recommended === "smartio" ? d.ctrl : d.bdf;
      console.log(`  use:    bun run examples/identify.ts --ctrl=${ctrl}   # ${d.recommended}`);
    }
  }
  if (!d.paths.some((p) => p.possible)) process.exitCode = 1;
});
