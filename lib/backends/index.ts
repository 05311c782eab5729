/**
 * Which way to reach a controller: one `--ctrl` value (a PCI address, a device node, or a SmartIO
 * fabric device id) and an optional explicit choice become a backend. A BDF bound to vfio-pci goes
 * through VFIO, one bound to disnvm through its node, an unbound one through raw sysfs;
 * /dev/disnvmN is the module; smartio:<fdid> a controller borrowed across a Dolphin cluster.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { DeviceError, InvalidArgumentError } from "../errors.ts";
import { findPciDevice, parseBdf } from "../pci.ts";
import { DisnvmBackend } from "./disnvm.ts";
import { parseSmartIoAddress, SmartIoBackend, smartIoName } from "./smartio.ts";
import { SysfsBackend } from "./sysfs.ts";
import type { Backend, BackendKind } from "./types.ts";
import { VfioBackend } from "./vfio.ts";

export type BackendChoice = BackendKind | "auto";

export interface ResolvedController {
  readonly kind: BackendKind;
  /** PCI address, when known (always for sysfs and VFIO; from sysfs for a disnvm node). */
  readonly bdf: string | undefined;
  /** Device node for disnvm. */
  readonly path: string | undefined;
  /** Fabric device id for smartio. */
  readonly fdid?: number;
}

/** The name the owner lock and messages use for a resolved controller: its BDF, node or smartio:<fdid>. */
export function controllerName(r: ResolvedController): string {
  return r.bdf ?? r.path ?? smartIoName(r.fdid ?? 0);
}

/** The disnvm node of a controller bound to the module: /sys/bus/pci/devices/<bdf>/misc/disnvmN. */
function disnvmNode(devicePath: string): string | undefined {
  try {
    const names = readdirSync(join(devicePath, "misc")).filter((n) => n.startsWith("disnvm"));
    return names.length > 0 ? `/dev/${names[0]}` : undefined;
  } catch {
    return undefined;
  }
}

/** The PCI address behind a disnvm node, from its sysfs class entry. */
function nodeBdf(path: string): string | undefined {
  try {
    const uevent = readFileSync(join("/sys/class/misc", basename(path), "device", "uevent"), "utf8");
    return /^PCI_SLOT_NAME=(.+)$/m.exec(uevent)?.[1];
  } catch {
    return undefined;
  }
}

/** Decide the backend for `ctrl` without opening anything. */
export function resolveController(ctrl: string, choice: BackendChoice = "auto"): ResolvedController {
  if (/^smartio:/i.test(ctrl)) {
    if (choice !== "auto" && choice !== "smartio") {
      throw new InvalidArgumentError(`${ctrl} is a SmartIO fabric device id, which only the smartio backend opens; for ${choice}, give the PCI address on the host that has the controller`);
    }
    return { kind: "smartio", bdf: undefined, path: undefined, fdid: parseSmartIoAddress(ctrl) };
  }
  if (choice === "smartio") {
    throw new InvalidArgumentError(
      `--backend=smartio takes --ctrl=smartio:<fdid> (the fabric device id in hex, from \`smartio_tool list\`), not ${ctrl}; to lend a local controller to the cluster: smartio_tool add <BDF>; smartio_tool available <BDF>`,
    );
  }
  if (ctrl.startsWith("/")) {
    if (choice !== "auto" && choice !== "disnvm") {
      throw new InvalidArgumentError(`${ctrl} is a device node, which only the disnvm backend opens; for ${choice}, give the PCI address`);
    }
    return { kind: "disnvm", bdf: nodeBdf(ctrl), path: ctrl };
  }
  const bdf = parseBdf(ctrl);
  if (choice === "sysfs" || choice === "vfio") return { kind: choice, bdf, path: undefined };
  const dev = findPciDevice(bdf);
  if (choice === "disnvm" || dev.driver === "disnvm") {
    const node = disnvmNode(dev.path);
    if (!node) {
      throw new DeviceError(
        `${bdf} is not bound to the disnvm module: load it and bind the device (echo disnvm > /sys/bus/pci/devices/${bdf}/driver_override; echo ${bdf} > /sys/bus/pci/drivers_probe)`,
      );
    }
    return { kind: "disnvm", bdf, path: node };
  }
  if (dev.driver === "vfio-pci") return { kind: "vfio", bdf, path: undefined };
  // Unbound, or bound to a kernel driver: sysfs says which and how to unbind.
  return { kind: "sysfs", bdf, path: undefined };
}

export function createBackend(r: ResolvedController): Backend {
  switch (r.kind) {
    case "disnvm":
      return new DisnvmBackend(r.path!);
    case "vfio":
      return new VfioBackend(r.bdf!);
    case "sysfs":
      return new SysfsBackend(r.bdf!);
    case "smartio":
      return new SmartIoBackend(r.fdid!);
  }
}

/** True when the disnvm driver is registered (the module is loaded). */
export function disnvmLoaded(): boolean {
  return existsSync("/sys/bus/pci/drivers/disnvm");
}
