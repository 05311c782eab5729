/**
 * list: every NVMe controller on the machine (PCI class 010802h), its driver, the backends that can
 * reach it, and, for those libnvm can open now, their namespaces as `nvme list` shows them.
 *
 * Opening a controller resets it, so list opens only controllers nobody else holds: not bound to
 * a kernel driver other than vfio-pci or disnvm, not owned by another libnvm process (the owner
 * lock), and with no other process mapping its registers (/proc/PID/maps). `--no-open` opens none.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { PCI_CLASS_NVME, SYSFS_PCI_DEVICES } from "../../lib/pci.ts";
import type { BackendChoice } from "../../lib/backends/index.ts";
import { OUTPUT_OPTIONS, type Command } from "../cli.ts";
import { printJson, type JsonValue } from "../json.ts";
import { listDeviceJson, type ListedNamespace } from "../nvme-cli.ts";
import { binaryBytesColumn, siBytesColumn } from "../units.ts";

interface ListedController {
  readonly address: string;
  readonly vendor: string;
  readonly device: string;
  readonly driver: string | null;
  /** Backends that can reach the controller from this process now (doctor's verdict). */
  readonly backends: string[];
  /** Why libnvm did not read it (bound to the kernel's driver, in use, no path, ...). */
  readonly note: string | undefined;
  readonly serial: string | undefined;
  readonly model: string | undefined;
  readonly firmware: string | undefined;
  readonly namespaces: ListedNamespace[];
}

const readText = (p: string): string | undefined => {
  try {
    return readFileSync(p, "utf8").trim();
  } catch {
    return undefined;
  }
};

/** PCI addresses of NVMe controllers, in address order. */
export function nvmeControllers(root = SYSFS_PCI_DEVICES): string[] {
  let names: string[];
  try {
    names = readdirSync(root);
  } catch {
    return [];
  }
  return names.filter((bdf) => Number.parseInt(readText(join(root, bdf, "class")) ?? "", 16) === PCI_CLASS_NVME).sort();
}

/** PIDs of other processes that map one of the device's BARs (its sysfs resource files). */
function barMappedBy(bdf: string): number[] {
  const pids: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return pids;
  }
  for (const e of entries) {
    const pid = Number(e);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    const maps = readText(`/proc/${pid}/maps`);
    if (maps?.includes(`/${bdf}/resource`)) pids.push(pid);
  }
  return pids;
}

/** What the kernel's nvme driver says about a controller it holds (sysfs attributes). */
function kernelIdentity(bdf: string): { serial?: string; model?: string; firmware?: string; name?: string } {
  try {
    const name = readdirSync(join(SYSFS_PCI_DEVICES, bdf, "nvme"))[0];
    if (!name) return {};
    const dir = join(SYSFS_PCI_DEVICES, bdf, "nvme", name);
    return { name, serial: readText(join(dir, "serial")), model: readText(join(dir, "model")), firmware: readText(join(dir, "firmware_rev")) };
  } catch {
    return {};
  }
}

async function inspect(bdf: string, open: boolean): Promise<ListedController> {
  // The driver is loaded only here, when there is a controller to look at.
  const { diagnose } = await import("../../lib/diagnose.ts");
  const d = diagnose(bdf);
  const driver = d.device?.driver ?? null;
  const backends = d.paths.filter((p) => p.possible).map((p) => p.kind);
  const base = { address: bdf, vendor: d.device?.vendor ?? "", device: d.device?.device ?? "", driver, backends };
  const empty = { serial: undefined, model: undefined, firmware: undefined, namespaces: [] };
  if (driver !== null && driver !== "vfio-pci" && driver !== "disnvm") {
    const k = kernelIdentity(bdf);
    const note = driver === "nvme" ? `bound to nvme${k.name ? ` as ${k.name}` : ""}: nvme-cli sees it; unbind it for libnvm` : `bound to ${driver}`;
    return { ...base, note, serial: k.serial, model: k.model, firmware: k.firmware, namespaces: [] };
  }
  if (!open) return { ...base, note: "not opened (--no-open)", ...empty };
  if (backends.length === 0) return { ...base, note: `no backend can reach it: ${d.paths.flatMap((p) => p.problems).slice(0, 1).join("")} (libnvm doctor ${bdf})`, ...empty };
  const mappers = barMappedBy(bdf);
  if (mappers.length > 0) return { ...base, note: `in use: its registers are mapped by process ${mappers.join(", ")}`, ...empty };
  const choice: BackendChoice = driver === "vfio-pci" ? "vfio" : driver === "disnvm" ? "disnvm" : "sysfs";
  const { Controller } = await import("../../lib/controller.ts");
  try {
    using ctrl = Controller.open(bdf, { backend: choice });
    const id = ctrl.info;
    const namespaces = ctrl.activeNamespaces().map((nsid) => ({
      nsid,
      devicePath: ctrl.name,
      firmware: id.fr,
      model: id.mn,
      serial: id.sn,
      info: ctrl.identifyNamespace(nsid),
    }));
    return { ...base, note: undefined, serial: id.sn, model: id.mn, firmware: id.fr, namespaces };
  } catch (e) {
    return { ...base, note: `not read: ${(e as Error).message.split("\n")[0]}`, ...empty };
  }
}

function controllerJson(c: ListedController): JsonValue {
  return {
    Address: c.address,
    Vendor: c.vendor,
    Device: c.device,
    Driver: c.driver,
    Backends: c.backends,
    ...(c.serial !== undefined ? { SerialNumber: c.serial } : {}),
    ...(c.model !== undefined ? { ModelNumber: c.model } : {}),
    ...(c.firmware !== undefined ? { Firmware: c.firmware } : {}),
    Namespaces: c.namespaces.map((n) => n.nsid),
    ...(c.note !== undefined ? { Note: c.note } : {}),
  };
}

/** The NVM subsystems an NVMe/TCP target offers (discovery), each opened for its namespaces. */
async function inspectTcp(ctx: Parameters<Command["run"]>[0]): Promise<ListedController[]> {
  const { runDiscovery } = await import("./discover.ts");
  const d = await runDiscovery(ctx);
  const { Controller } = await import("../../lib/controller.ts");
  const out: ListedController[] = [];
  for (const r of d.records) {
    if (r.subtype !== 2) continue; // referrals and the discovery subsystem itself have no namespaces
    const base = { address: r.uri, vendor: "", device: "", driver: "nvme+tcp", backends: ["tcp"] };
    if (ctx.values["no-open"] === true) {
      out.push({ ...base, note: "not opened (--no-open)", serial: undefined, model: undefined, firmware: undefined, namespaces: [] });
      continue;
    }
    try {
      using ctrl = Controller.open(r.uri, { handleSignals: false });
      const id = ctrl.info;
      const namespaces = ctrl.activeNamespaces().map((nsid) => ({ nsid, devicePath: r.uri, firmware: id.fr, model: id.mn, serial: id.sn, info: ctrl.identifyNamespace(nsid) }));
      out.push({ ...base, vendor: `0x${id.vid.toString(16).padStart(4, "0")}`, device: "", note: undefined, serial: id.sn, model: id.mn, firmware: id.fr, namespaces });
    } catch (e) {
      out.push({ ...base, note: `not read: ${(e as Error).message.split("\n")[0]}`, serial: undefined, model: undefined, firmware: undefined, namespaces: [] });
    }
  }
  return out;
}

export const list: Command = {
  name: "list",
  summary: "every NVMe controller: driver, reachable backends, namespaces; or an NVMe/TCP target's subsystems",
  description:
    "Lists the machine's NVMe controllers (PCI class 010802h) with their driver and the backends that can reach\n" +
    "them now, and the namespaces of those libnvm can open, in nvme list's layout. Opening a controller resets\n" +
    "it: list opens only controllers no driver but vfio-pci or disnvm holds, no libnvm process owns and no other\n" +
    "process maps. -o json prints nvme list's \"Devices\" array (DevicePath is the controller's address) and a\n" +
    "\"Controllers\" array of libnvm's own. With an NVMe/TCP target (nvme+tcp://HOST[:PORT]) it runs discovery\n" +
    "there and lists each subsystem offered, opened by its nvme+tcp:// address.",
  device: false,
  optionalDevice: true,
  options: { ...OUTPUT_OPTIONS, "no-open": { type: "boolean", help: "open no controller: driver and backends only" } },
  async run(ctx) {
    const ctrls: ListedController[] = [];
    if (ctx.device !== "") ctrls.push(...(await inspectTcp(ctx)));
    else for (const bdf of nvmeControllers()) ctrls.push(await inspect(bdf, ctx.values["no-open"] !== true));
    const devices = ctrls.flatMap((c) => c.namespaces);
    if (ctx.output === "json") {
      printJson({ Devices: devices.map(listDeviceJson), Controllers: ctrls.map(controllerJson) });
      return;
    }
    let out = "";
    if (devices.length > 0) {
      const nodeWidth = Math.max(21, ...devices.map((n) => n.devicePath.length));
      out += `${"Node".padEnd(nodeWidth)} ${"SN".padEnd(20)} ${"Model".padEnd(40)} ${"Namespace".padEnd(9)} ${"Usage".padEnd(26)} ${"Format".padEnd(16)} ${"FW Rev".padEnd(8)}\n`;
      out += `${"-".repeat(nodeWidth)} ${"-".repeat(20)} ${"-".repeat(40)} ${"-".repeat(9)} ${"-".repeat(26)} ${"-".repeat(16)} ${"-".repeat(8)}\n`;
      for (const n of devices) {
        const lba = BigInt(n.info.lbaSize);
        const usage = `${siBytesColumn(n.info.nuse * lba)} / ${siBytesColumn(n.info.nsze * lba)}`;
        const fmt = `${binaryBytesColumn(n.info.lbaSize)} + ${String(n.info.metadataSize).padStart(2)} B`;
        out += `${n.devicePath.padEnd(nodeWidth)} ${n.serial.padEnd(20)} ${n.model.padEnd(40)} ${String(n.nsid).padEnd(9)} ${usage.padEnd(26)} ${fmt.padEnd(16)} ${n.firmware.padEnd(8)}\n`;
      }
      out += "\n";
    }
    if (ctrls.length === 0) out += ctx.device !== "" ? `${ctx.device} offers no NVM subsystem to this host\n` : "no NVMe controller (PCI class 010802h) on this machine\n";
    else {
      const aw = Math.max(13, ...ctrls.map((c) => c.address.length));
      out += `${"Controller".padEnd(aw)} ${"ID".padEnd(9)} ${"Driver".padEnd(9)} Backends\n`;
      for (const c of ctrls) {
        out += `${c.address.padEnd(aw)} ${`${c.vendor.replace(/^0x/, "")}:${c.device.replace(/^0x/, "")}`.padEnd(9)} ${(c.driver ?? "none").padEnd(9)} ${c.backends.join(", ") || "none"}${c.note ? `  (${c.note})` : ""}\n`;
      }
    }
    process.stdout.write(out);
  },
};

