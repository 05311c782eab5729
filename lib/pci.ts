/**
 * PCI device lookup through sysfs: BDF parsing, identity, bound driver, and the bus master bit.
 * Configuration space goes through the native layer so each access has exactly the register's width.
 */
import { existsSync, readFileSync, readlinkSync } from "node:fs";
import { basename, join } from "node:path";
import { DeviceError, InvalidArgumentError } from "./errors.ts";
import { check, cstr, native, scratch } from "./native.ts";

export const SYSFS_PCI_DEVICES = "/sys/bus/pci/devices";

/** PCI class code of an NVM Express controller: mass storage (01h), non-volatile memory (08h), NVMe (02h). */
export const PCI_CLASS_NVME = 0x010802;

/** Configuration space COMMAND register (offset 04h) bits. */
export const PCI_COMMAND = 0x04;
export const PCI_COMMAND_MEMORY = 1 << 1;
export const PCI_COMMAND_MASTER = 1 << 2;

const BDF_RE = /^(?:([0-9a-fA-F]{1,4}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$/;

/** Normalise "05:00.0" or "0000:05:00.0" to "0000:05:00.0"; anything else is an InvalidArgumentError. */
export function parseBdf(text: string): string {
  const m = BDF_RE.exec(text.trim());
  if (!m) {
    throw new InvalidArgumentError(
      `"${text}" is not a PCI address: expected bus:device.function like 05:00.0 or 0000:05:00.0 (see lspci -D -d ::0108)`,
    );
  }
  const [, dom = "0", bus = "0", dev = "0", fn = "0"] = m;
  const d = parseInt(dev, 16);
  if (d > 0x1f) throw new InvalidArgumentError(`"${text}": device number 0x${dev} is over 0x1f`);
  return `${dom.toLowerCase().padStart(4, "0")}:${bus.toLowerCase().padStart(2, "0")}:${dev.toLowerCase().padStart(2, "0")}.${fn}`;
}

export interface PciDevice {
  readonly bdf: string;
  readonly path: string;
  readonly vendor: number;
  readonly device: number;
  readonly subsystemVendor: number;
  readonly subsystemDevice: number;
  readonly classCode: number;
  /** Name of the bound kernel driver, or undefined. */
  readonly driver: string | undefined;
  readonly iommuGroup: string | undefined;
}

function readHex(path: string): number {
  return parseInt(readFileSync(path, "utf8").trim(), 16);
}

function linkName(path: string): string | undefined {
  try {
    return basename(readlinkSync(path));
  } catch {
    return undefined;
  }
}

/** Look a device up in sysfs; DeviceError when absent or not an NVMe controller. */
export function findPciDevice(bdf: string, root = SYSFS_PCI_DEVICES): PciDevice {
  const path = join(root, bdf);
  if (!existsSync(path)) {
    throw new DeviceError(`no PCI device ${bdf}: list NVMe controllers with \`lspci -D -d ::0108\``);
  }
  const dev: PciDevice = {
    bdf,
    path,
    vendor: readHex(join(path, "vendor")),
    device: readHex(join(path, "device")),
    subsystemVendor: readHex(join(path, "subsystem_vendor")),
    subsystemDevice: readHex(join(path, "subsystem_device")),
    classCode: readHex(join(path, "class")),
    driver: linkName(join(path, "driver")),
    iommuGroup: linkName(join(path, "iommu_group")),
  };
  if (dev.classCode !== PCI_CLASS_NVME) {
    throw new DeviceError(
      `${bdf} is not an NVMe controller (class 0x${dev.classCode.toString(16).padStart(6, "0")}, NVMe is 0x010802): check the address with \`lspci -D -d ::0108\``,
    );
  }
  return dev;
}

export function configRead(dev: PciDevice, offset: number, width: 1 | 2 | 4): number {
  const s = scratch();
  const path = join(dev.path, "config");
  check(native().nvm_config_read(cstr(path), offset, width, s.ptr), "read config space", path);
  return s.u32[0]!;
}

export function configWrite(dev: PciDevice, offset: number, width: 1 | 2 | 4, value: number): void {
  const path = join(dev.path, "config");
  check(native().nvm_config_write(cstr(path), offset, width, value >>> 0), "write config space", path);
}

/** Set Memory Space Enable and Bus Master Enable; returns the COMMAND value before, to restore on close. */
export function enableBusMaster(dev: PciDevice): number {
  const before = configRead(dev, PCI_COMMAND, 2);
  const want = before | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
  if (want !== before) configWrite(dev, PCI_COMMAND, 2, want);
  return before;
}

/** Is capability number `cap` (linux/capability.h) in this process's effective set (CapEff)? */
function hasCapability(cap: number): boolean {
  try {
    const m = /^CapEff:\s*([0-9a-fA-F]+)$/m.exec(readFileSync("/proc/self/status", "utf8"));
    return m ? (BigInt("0x" + m[1]) & (1n << BigInt(cap))) !== 0n : false;
  } catch {
    return false;
  }
}

/** Does this process have CAP_SYS_ADMIN (21)? Without it pagemap hides PFNs. */
export function hasCapSysAdmin(): boolean {
  return hasCapability(21);
}

/** Does this process have CAP_SYS_RAWIO (17)? The disnvm module wants it where no IOMMU isolates the controller. */
export function hasCapSysRawio(): boolean {
  return hasCapability(17);
}
