/** doctor, reset, perf: the machine's paths to a controller, a controller reset, the load generator. */
import { join } from "node:path";
import { diagnose, type Diagnosis } from "../../lib/diagnose.ts";
import { diagnoseGpu, type GpuDiagnosis } from "../../lib/cuda/diagnose.ts";
import { SYSFS_PCI_DEVICES } from "../../lib/pci.ts";
import { unixPath } from "../../lib/share/link.ts";
import { sisciRpcFdid } from "../../lib/share/sisci-link.ts";
import { isTcpTarget } from "../../lib/transports/tcp/uri.ts";
import { DEVICE_OPTIONS, OUTPUT_OPTIONS, type Command } from "../cli.ts";
import { toJson } from "../common.ts";
import { printJson } from "../json.ts";

/** doctor's findings: the paths to the controller, and (unless skipped) the GPU side. */
export type DoctorReport = Diagnosis & { readonly gpu?: GpuDiagnosis };

/** Diagnose `ctrl` and, unless `skipGpu` (which leaves the CUDA driver unloaded), the GPU path to it. */
export function doctorReport(ctrl: string, skipGpu: boolean): DoctorReport {
  const d = diagnose(ctrl);
  if (skipGpu || d.error) return d;
  const f = d.facts;
  const gpu = diagnoseGpu(d.bdf ? join(SYSFS_PCI_DEVICES, d.bdf) : undefined, d.device?.driver ?? null, f.iommuEnabled && !f.iommuPassthrough, f.capSysRawio);
  return { ...d, gpu };
}

/** doctor's report as text: each backend, why not, the commands that fix it, the facts, the GPU side. */
export function doctorText(d: DoctorReport): string {
  const f = d.facts;
  const out: string[] = [];
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
  out.push(`libnvm doctor: ${d.bdf ?? d.ctrl}: ${d.error ?? dev}`);
  if (d.error) out.push(`  fix:    ${d.paths[0]!.fixes.join("; ")}`);
  for (const p of d.error ? [] : d.paths) {
    out.push(`  ${p.kind.padEnd(7)} ${p.possible ? "works now" : `not possible: ${p.problems.join("; ")}`}`);
    for (const w of p.warnings) out.push(`          warning: ${w}`);
    for (const fix of p.possible ? [] : p.fixes) out.push(`          fix: ${fix}`);
  }
  const ml = f.memlock === "unlimited" ? "unlimited" : `${f.memlock} bytes`;
  out.push(
    `  facts:  kernel ${f.kernel}; ${f.root ? "root" : "not root"}; CAP_SYS_ADMIN ${f.capSysAdmin ? "yes" : "no"}; CAP_SYS_RAWIO ${f.capSysRawio ? "yes" : "no"}; memlock ${ml}; ` +
      `hugepages ${f.hugepages.free}/${f.hugepages.total} free; IOMMU ${f.iommuEnabled ? (f.iommuPassthrough ? "passthrough" : "on") : "off"}` +
      `${f.iommuGroup !== null ? `, group ${f.iommuGroup}${f.groupMembers.length ? ` with ${f.groupMembers.map((m) => m.bdf).join(", ")}` : " (alone)"}` : ""}; ` +
      `vfio-pci ${f.vfioPciLoaded ? "loaded" : "not loaded"}; disnvm ${f.disnvmLoaded ? "loaded" : "not loaded"}${f.disnvmNode ? ` (${f.disnvmNode})` : ""}; ` +
      `SISCI ${f.sisci.installed ? `installed${f.sisci.localNode !== null ? `, node ${f.sisci.localNode}` : ""}${f.sisci.nvmeDevices.length ? `, NVMe devices ${f.sisci.nvmeDevices.join(", ")}` : ""}` : "not installed"}`,
  );
  const gpu = d.gpu;
  if (gpu) {
    const g = gpu.devices.map((x) => `GPU ${x.ordinal} ${x.name} (${x.pciBusId}${x.dmaBufSupported ? ", exports dma-bufs" : ", no dma-buf export"})`);
    out.push(`  gpu     ${gpu.possible ? `works now: ${g.join("; ")}; the module imports dma-bufs` : `not possible: ${gpu.problems.join("; ")}`}`);
    for (const fix of gpu.possible ? [] : gpu.fixes) out.push(`          fix: ${fix}`);
    const v = gpu.driver.version;
    out.push(
      `  cuda:   ${gpu.driver.found && v !== undefined ? `driver CUDA ${Math.floor(v / 1000)}.${(v % 1000) / 10}${gpu.driver.library ? ` (${gpu.driver.library})` : ""}; ${gpu.devices.length} GPU${gpu.devices.length === 1 ? "" : "s"}` : "no driver"}`,
    );
  }
  if (d.recommended) {
    const ctrl = d.recommended === "disnvm" ? d.facts.disnvmNode : d.recommended === "smartio" ? d.ctrl : d.bdf;
    out.push(`  use:    libnvm id-ctrl ${ctrl}   # ${d.recommended}`);
  }
  return out.join("\n") + "\n";
}

export const doctor: Command = {
  name: "doctor",
  summary: "which backends can reach a controller here, and the commands that fix the others",
  description:
    "Checks the raw sysfs, VFIO, disnvm and SmartIO paths to the controller: bound driver, IOMMU group and its\n" +
    "members, /dev/vfio permissions, memlock limit, CAP_SYS_ADMIN, CAP_SYS_RAWIO, hugepages, the module; for SmartIO\n" +
    "(a controller borrowed across a Dolphin PCIe cluster) whether SISCI is installed and what it knows of the device.\n" +
    "Changes nothing.\n" +
    "Then the GPU side (NVMe DMA into GPU memory): the CUDA driver, its GPUs and their dma-buf export, the module's\n" +
    "dma-buf import, the IOMMU; --skip-gpu leaves the CUDA driver unloaded.\n" +
    "For nvme+tcp://..., unix:PATH or smartio-rpc:<fdid> it opens the controller once through the target or the\n" +
    "sharing server and" +
    " says what answered, or why not.\n" +
    "Exit 0 when at least one path works now, 3 when none does.",
  device: true,
  options: { ...OUTPUT_OPTIONS, "skip-gpu": { type: "boolean", help: "do not load the CUDA driver (no GPU section)" } },
  async run(ctx) {
    if (isTcpTarget(ctx.device) || unixPath(ctx.device) !== undefined || sisciRpcFdid(ctx.device) !== undefined) return remoteDoctor(ctx);
    const d = doctorReport(ctx.device, ctx.values["skip-gpu"] === true);
    if (ctx.output === "json") process.stdout.write(toJson(d) + "\n");
    else process.stdout.write(doctorText(d));
    if (!d.paths.some((p) => p.possible)) process.exitCode = 3;
  },
};

/**
 * doctor for a controller reached through another party (an NVMe/TCP target, a sharing server):
 * no local path to check, so open it once and say what answered, or the typed error and its next step.
 */
async function remoteDoctor(ctx: Parameters<Command["run"]>[0]): Promise<void> {
  const via = unixPath(ctx.device) !== undefined ? "unix" : sisciRpcFdid(ctx.device) !== undefined ? "sisci" : "tcp";
  const what = via === "unix" ? "sharing server" : via === "sisci" ? "sharing server across the SmartIO cluster" : "NVMe/TCP target";
  let report: { ctrl: string; via: string; reachable: boolean; transport?: string; model?: string; sn?: string; namespaces?: number; error?: { name: string; message: string } };
  try {
    using ctrl = await ctx.open();
    const info = ctrl.info;
    report = { ctrl: ctx.device, via, reachable: true, transport: ctrl.transport, model: info.mn.trim(), sn: info.sn.trim(), namespaces: info.nn };
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    report = { ctrl: ctx.device, via, reachable: false, error: { name: err.name, message: err.message } };
  }
  if (ctx.output === "json") printJson(report);
  else if (report.reachable) {
    process.stdout.write(`libnvm doctor: ${report.ctrl}: the ${what} answered: ${report.model} (sn ${report.sn}), ${report.namespaces} namespace ids, reached over ${report.transport}\n  use:    libnvm id-ctrl ${report.ctrl}\n`);
  } else {
    process.stdout.write(`libnvm doctor: ${report.ctrl}: the ${what} did not answer: ${report.error!.name}: ${report.error!.message}\n`);
  }
  if (!report.reachable) process.exitCode = 3;
}

export const reset: Command = {
  name: "reset",
  summary: "Controller reset: CC.EN to 0 and back to 1, queues re-created",
  description:
    "Opens the controller (which itself disables and enables it) and resets it once more the way recovery does:\n" +
    "disable (CC.EN = 0, CSTS.RDY = 0 within CAP.TO), enable, admin queue re-created, Identify again.",
  device: true,
  options: { ...OUTPUT_OPTIONS, ...DEVICE_OPTIONS },
  async run(ctx) {
    using ctrl = await ctx.open();
    const t0 = performance.now();
    ctrl.reset();
    const ms = performance.now() - t0;
    const regs = ctrl.registers();
    const sn = ctrl.identifyController().sn;
    if (ctx.output === "json") printJson({ controller: ctrl.name, resets: ctrl.resets, cc: regs.cc, csts: regs.csts, milliseconds: Number(ms.toFixed(3)), sn });
    else process.stdout.write(`reset: ${ctrl.name} (sn ${sn}): disabled and enabled again in ${ms.toFixed(1)} ms; CSTS 0x${regs.csts.toString(16)}\n`);
  },
};

export const perf: Command = {
  name: "perf",
  summary: "I/O load: IOPS, bandwidth and latency percentiles at a queue depth (writes overwrite)",
  description: "examples/perf.ts, with the controller as its first argument.",
  // Loaded only when asked for: it brings Workers, the histogram and the SVG plot with it.
  async help() {
    const { PERF_USAGE } = await import("../../examples/perf.ts");
    const lines = PERF_USAGE.split("\n").slice(1).filter((l) => !l.startsWith("  --ctrl=CTRL"));
    return `Usage: libnvm perf <device> [OPTIONS]\n\n<device> is the controller: its PCI address (0000:05:00.0 or 05:00.0), /dev/disnvmN, or nvme+tcp://HOST:PORT/SUBNQN.\n${lines.join("\n")}`;
  },
  device: true,
  passThrough: true,
  options: {},
  async run(ctx) {
    const { perf: perfMain } = await import("../../examples/perf.ts");
    await perfMain([`--ctrl=${ctx.device}`, ...ctx.argv]);
  },
};

export const gpuRead: Command = {
  name: "gpu-read",
  summary: "read blocks by DMA straight into GPU memory (disnvm, CUDA), copy back, rate; --verify compares",
  description: "examples/gpu-read.ts, with the controller as its first argument.",
  // Loaded only when asked for: the CUDA layer comes with it (it loads the driver on first use).
  async help() {
    const { GPU_READ_USAGE } = await import("../../examples/gpu-read.ts");
    const lines = GPU_READ_USAGE.split("\n").slice(1).filter((l) => !l.startsWith("  --ctrl=DEV"));
    return `Usage: libnvm gpu-read <device> [OPTIONS]\n\n<device> is the controller: /dev/disnvmN or the PCI address of one bound to disnvm.\n${lines.join("\n")}`;
  },
  device: true,
  passThrough: true,
  options: {},
  async run(ctx) {
    const { gpuRead: main } = await import("../../examples/gpu-read.ts");
    await main([`--ctrl=${ctx.device}`, ...ctx.argv]);
  },
};
