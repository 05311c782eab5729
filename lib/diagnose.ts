/**
 * What stands between this machine and each way of reaching a controller: the facts (bound driver,
 * IOMMU group and its members, /dev/vfio permissions, memlock, CAP_SYS_ADMIN, CAP_SYS_RAWIO, hugepages,
 * module),
 * and for each backend whether it can work now and, if not, the commands that fix it. Reads only;
 * changes nothing.
 */
import { accessSync, constants, existsSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { basename, join } from "node:path";
import { NvmeError } from "./errors.ts";
import { native, scratch } from "./native.ts";
import { findPciDevice, hasCapSysAdmin, hasCapSysRawio, parseBdf, SYSFS_PCI_DEVICES, type PciDevice } from "./pci.ts";
import { disnvmIsolation } from "./backends/disnvm.ts";
import type { BackendKind } from "./backends/types.ts";

export interface PathReport {
  readonly kind: BackendKind;
  readonly possible: boolean;
  /** Why not (empty when possible); warnings may be present either way. */
  readonly problems: string[];
  readonly warnings: string[];
  /** Shell commands that fix the problems, in order. */
  readonly fixes: string[];
}

export interface Diagnosis {
  readonly ctrl: string;
  readonly bdf: string | undefined;
  /** Set when the address itself is wrong: nothing else could be checked. */
  readonly error: string | undefined;
  readonly device: { vendor: string; device: string; classCode: string; driver: string | null } | undefined;
  readonly facts: {
    readonly root: boolean;
    readonly capSysAdmin: boolean;
    /** What the disnvm module asks for when no IOMMU isolates the controller. */
    readonly capSysRawio: boolean;
    /** RLIMIT_MEMLOCK in bytes, or "unlimited". */
    readonly memlock: number | "unlimited";
    readonly hugepages: { total: number; free: number };
    readonly iommuEnabled: boolean;
    readonly iommuPassthrough: boolean;
    readonly iommuGroup: string | null;
    /** Other devices in the group and their drivers. */
    readonly groupMembers: { bdf: string; driver: string | null }[];
    readonly vfioPciLoaded: boolean;
    readonly disnvmLoaded: boolean;
    readonly disnvmNode: string | null;
    readonly kernel: string;
  };
  readonly paths: PathReport[];
  /** The backend `--backend=auto` would pick, when it can work. */
  readonly recommended: BackendKind | undefined;
}

const read = (p: string): string | undefined => {
  try {
    return readFileSync(p, "utf8").trim();
  } catch {
    return undefined;
  }
};

const link = (p: string): string | null => {
  try {
    return basename(readlinkSync(p));
  } catch {
    return null;
  }
};

function memlock(): number | "unlimited" {
  const s = scratch();
  if (native().nvm_memlock_limit(s.ptr) < 0) return 0;
  const lo = s.u32[0]!;
  const hi = s.u32[1]!;
  return lo === 0xffffffff && hi === 0xffffffff ? "unlimited" : hi * 0x1_0000_0000 + lo;
}

function accessible(path: string): boolean {
  try {
    accessSync(path, constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** Inspect `ctrl` (a BDF or /dev/disnvmN) and this machine. */
export function diagnose(ctrl: string, pciRoot = SYSFS_PCI_DEVICES): Diagnosis {
  let bdf: string | undefined;
  let dev: PciDevice | undefined;
  let error: string | undefined;
  let node: string | null = null;
  try {
    if (ctrl.startsWith("/")) {
      node = ctrl;
      const uevent = read(join("/sys/class/misc", basename(ctrl), "device", "uevent"));
      bdf = uevent ? /^PCI_SLOT_NAME=(.+)$/m.exec(uevent)?.[1] : undefined;
      if (!bdf) error = `${ctrl} is not a disnvm device node (no /sys/class/misc/${basename(ctrl)}/device)`;
    } else bdf = parseBdf(ctrl);
    if (bdf) dev = findPciDevice(bdf, pciRoot);
  } catch (e) {
    error = e instanceof NvmeError ? e.message : String(e);
  }
  if (dev && !node) {
    try {
      const m = readdirSync(join(dev.path, "misc")).find((n) => n.startsWith("disnvm"));
      if (m) node = `/dev/${m}`;
    } catch {
      // Not bound to disnvm.
    }
  }

  const groups = (() => {
    try {
      return readdirSync("/sys/kernel/iommu_groups");
    } catch {
      return [];
    }
  })();
  const cmdline = read("/proc/cmdline") ?? "";
  const group = dev ? link(join(dev.path, "iommu_group")) : null;
  const members =
    group === null
      ? []
      : (() => {
          try {
            return readdirSync(`/sys/kernel/iommu_groups/${group}/devices`)
              .filter((m) => m !== bdf)
              .map((m) => ({ bdf: m, driver: link(join(pciRoot, m, "driver")) }));
          } catch {
            return [];
          }
        })();
  const hp = {
    total: Number(read("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages") ?? 0),
    free: Number(read("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages") ?? 0),
  };
  const facts = {
    root: process.getuid?.() === 0,
    capSysAdmin: hasCapSysAdmin(),
    capSysRawio: hasCapSysRawio(),
    memlock: memlock(),
    hugepages: hp,
    iommuEnabled: groups.length > 0,
    iommuPassthrough: /\biommu=pt\b/.test(cmdline) || /\biommu\.passthrough=1\b/.test(cmdline),
    iommuGroup: group,
    groupMembers: members,
    vfioPciLoaded: existsSync("/sys/bus/pci/drivers/vfio-pci"),
    disnvmLoaded: existsSync("/sys/bus/pci/drivers/disnvm"),
    disnvmNode: node,
    kernel: read("/proc/sys/kernel/osrelease") ?? "unknown",
  };
  const driver = dev?.driver ?? null;
  const b = bdf ?? "<bdf>";
  const unbind = driver ? [`echo ${b} > /sys/bus/pci/drivers/${driver}/unbind`] : [];
  const bindTo = (drv: string) => [...unbind, `echo ${drv} > /sys/bus/pci/devices/${b}/driver_override`, `echo ${b} > /sys/bus/pci/drivers_probe`];
  const sudo = facts.root ? "" : "sudo ";

  const report = (kind: BackendKind, problems: string[], fixes: string[], warnings: string[] = []): PathReport => ({
    kind,
    possible: !error && problems.length === 0,
    problems: error ? [error] : problems,
    warnings,
    fixes: error ? [`lspci -D -d ::0108   # list NVMe controllers and their addresses`] : fixes,
  });

  // sysfs: unbound, root, physical addresses usable by the device.
  const sp: string[] = [];
  const sf: string[] = [];
  const sw: string[] = [];
  if (driver) {
    sp.push(`bound to ${driver}`);
    sf.push(...unbind);
  }
  if (!facts.capSysAdmin) {
    sp.push("needs root (CAP_SYS_ADMIN): /proc/self/pagemap hides physical addresses otherwise");
    sf.push(`${sudo}libnvm id-ctrl ${b}   # run as root`);
  }
  if (facts.iommuEnabled && !facts.iommuPassthrough) {
    sp.push("the IOMMU translates DMA: physical addresses fault (DMAR fault reason 0x06)");
    sf.push("use the VFIO backend instead, or boot with iommu=pt");
  }
  if (hp.free < 1 && !facts.root) {
    sw.push(`no free 2 MiB hugepage, and only root may reserve them: the sysfs backend's DMA memory is hugepages (echo 64 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)`);
  }
  const sysfs = report("sysfs", sp, sf, sw);

  // VFIO: IOMMU on, vfio-pci bound, group viable and accessible.
  const vp: string[] = [];
  const vf: string[] = [];
  const vw: string[] = [];
  if (!facts.iommuEnabled) {
    vp.push("no IOMMU groups: the IOMMU is off");
    vf.push("enable VT-d / AMD-Vi in the firmware and boot with intel_iommu=on (or amd_iommu=on)");
  } else {
    if (!facts.vfioPciLoaded) {
      vp.push("vfio-pci is not loaded");
      vf.push("modprobe vfio-pci");
    }
    if (driver !== "vfio-pci") {
      vp.push(driver ? `bound to ${driver}, not vfio-pci` : "not bound to vfio-pci");
      vf.push(...bindTo("vfio-pci"));
    }
    const blockers = members.filter((m) => m.driver !== null && m.driver !== "vfio-pci" && m.driver !== "pcieport");
    if (blockers.length > 0) {
      vp.push(`IOMMU group ${group} is not viable: ${blockers.map((m) => `${m.bdf} (${m.driver})`).join(", ")} must be bound to vfio-pci or unbound too`);
      for (const m of blockers) vf.push(`echo ${m.bdf} > /sys/bus/pci/drivers/${m.driver}/unbind`);
    }
    if (group !== null && driver === "vfio-pci" && !accessible(`/dev/vfio/${group}`)) {
      vp.push(`/dev/vfio/${group} is not readable and writable by this user`);
      vf.push(`${sudo}chown ${process.env.USER ?? "$USER"} /dev/vfio/${group}   # or a udev rule`);
    }
    if (!facts.root && facts.memlock !== "unlimited" && facts.memlock < 64 << 20) {
      vw.push(`memlock limit is ${facts.memlock} bytes: every DMA buffer counts against it (ulimit -l unlimited, or LimitMEMLOCK=infinity)`);
    }
  }
  const vfio = report("vfio", vp, vf, vw);

  // disnvm: module loaded and bound, node accessible, CAP_SYS_RAWIO unless an IOMMU isolates the controller.
  const dp: string[] = [];
  const df: string[] = [];
  const dw: string[] = [];
  if (!facts.disnvmLoaded) {
    dp.push("the disnvm module is not loaded");
    df.push(`${sudo}insmod module/build/${facts.kernel}/disnvm.ko   # build it with: bash test/vm/build-module.sh, or make -C module`);
  }
  if (driver !== "disnvm") {
    dp.push(driver ? `bound to ${driver}, not disnvm` : "not bound to disnvm");
    df.push(...bindTo("disnvm"));
  } else if (node && !accessible(node)) {
    dp.push(`${node} is not readable and writable by this user`);
    df.push(`${sudo}chown ${process.env.USER ?? "$USER"} ${node}   # or a udev rule for KERNEL=="disnvm*"`);
  }
  const isolation = bdf ? disnvmIsolation(bdf, pciRoot) : undefined;
  if (isolation && !isolation.isolated && !facts.capSysRawio) {
    dp.push(`needs CAP_SYS_RAWIO: ${isolation.why}, so the controller could reach any memory`);
    df.push(`${sudo}libnvm id-ctrl ${node ?? b}   # as root, or turn the IOMMU on (intel_iommu=on / amd_iommu=on, not iommu=pt)`);
  }
  if (!facts.root && facts.memlock !== "unlimited" && facts.memlock < 64 << 20) {
    dw.push(`memlock limit is ${facts.memlock} bytes: the module charges every DMA buffer to it (ulimit -l unlimited, or LimitMEMLOCK=infinity)`);
  }
  const disnvm = report("disnvm", dp, df, dw);

  const paths = [sysfs, vfio, disnvm];
  const preferred: BackendKind = driver === "vfio-pci" ? "vfio" : driver === "disnvm" ? "disnvm" : "sysfs";
  const recommended = paths.find((p) => p.kind === preferred && p.possible)?.kind;
  return {
    ctrl,
    bdf,
    error,
    device: dev
      ? {
          vendor: dev.vendor.toString(16).padStart(4, "0"),
          device: dev.device.toString(16).padStart(4, "0"),
          classCode: dev.classCode.toString(16).padStart(6, "0"),
          driver,
        }
      : undefined,
    facts,
    paths,
    recommended,
  };
}
