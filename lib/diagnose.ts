/**
 * What stands between this machine and each way of reaching a controller: the facts (bound driver,
 * IOMMU group and its members, /dev/vfio permissions, memlock, CAP_SYS_ADMIN, CAP_SYS_RAWIO, hugepages,
 * module, Dolphin's SISCI for SmartIO),
 * and for each backend whether it can work now and, if not, the commands that fix it. Reads only;
 * changes nothing (SmartIO: SISCI is asked about the device, which is not borrowed).
 */
import { accessSync, constants, existsSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { basename, join } from "node:path";
import { NvmeError } from "./errors.ts";
import { native, scratch } from "./native.ts";
import { findPciDevice, hasCapSysAdmin, hasCapSysRawio, parseBdf, SYSFS_PCI_DEVICES, type PciDevice } from "./pci.ts";
import { disnvmIsolation } from "./backends/disnvm.ts";
import { parseSmartIoAddress, smartIoName } from "./backends/smartio.ts";
import { sisciAvailable, sisciError, sisciScratch, sisciShim } from "./sisci.ts";
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
    /** Dolphin's SISCI through libnvm's shim (SmartIO). */
    readonly sisci: SisciFacts;
  };
  readonly paths: PathReport[];
  /** The backend `--backend=auto` would pick, when it can work. */
  readonly recommended: BackendKind | undefined;
}

export interface SisciFacts {
  /** The shim (libnvm-sisci.so) loads here: eXpressWare was installed when libnvm's C was built. */
  readonly installed: boolean;
  /** Where the shim came from, or why it is missing (where CMake and libnvm looked). */
  readonly detail: string;
  /** This node's id on adapter 0, when SISCI answered. */
  readonly localNode: number | null;
  /** Fabric device ids of the NVMe controllers SISCI lists (hex, as smartio_tool prints them). */
  readonly nvmeDevices: string[];
  /** For --ctrl=smartio:<fdid>: what SISCI says about it (adapter, lender node), or why not. */
  readonly device: { fdid: string; adapter: number; lenderNode: number } | { fdid: string; error: string } | null;
}

const NVME_CLASS = 0x010802;

/** Ask SISCI, without borrowing anything, about this node and `fdid`. */
function sisciFacts(fdid: number | undefined): SisciFacts {
  const avail = sisciAvailable();
  if (!avail.installed) return { installed: false, detail: avail.detail, localNode: null, nvmeDevices: [], device: null };
  const shim = sisciShim();
  const s = sisciScratch();
  let localNode: number | null = null;
  let nvme: string[] = [];
  let device: SisciFacts["device"] = null;
  if (shim.nvm_sisci_init() < 0) {
    const e = sisciError("SmartIO: initialising SISCI");
    return { installed: true, detail: `${avail.detail}; ${e.message}`, localNode, nvmeDevices: nvme, device: fdid === undefined ? null : { fdid: smartIoName(fdid), error: e.message } };
  }
  try {
    if (shim.nvm_sisci_local_node(0, s.ptr) === 0) localNode = s.u32[0]!;
    const n = shim.nvm_sisci_device_list(NVME_CLASS, s.ptr, 64);
    if (n > 0) nvme = [...s.u32.subarray(0, Math.min(n, 64))].map((f) => f.toString(16));
    if (fdid !== undefined) {
      device =
        shim.nvm_sisci_device_query(fdid, s.ptr) === 0
          ? { fdid: smartIoName(fdid), adapter: s.u32[1]!, lenderNode: s.u32[2]! }
          : { fdid: smartIoName(fdid), error: sisciError(`SmartIO: asking about ${smartIoName(fdid)}`).message };
    }
  } finally {
    shim.nvm_sisci_fini();
  }
  return { installed: true, detail: avail.detail, localNode, nvmeDevices: nvme, device };
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
  let fdid: number | undefined;
  try {
    if (/^smartio:/i.test(ctrl)) fdid = parseSmartIoAddress(ctrl);
    else if (ctrl.startsWith("/")) {
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
    sisci: sisciFacts(fdid),
  };
  const driver = dev?.driver ?? null;
  const b = bdf ?? "<bdf>";
  const unbind = driver ? [`echo ${b} > /sys/bus/pci/drivers/${driver}/unbind`] : [];
  const bindTo = (drv: string) => [...unbind, `echo ${drv} > /sys/bus/pci/devices/${b}/driver_override`, `echo ${b} > /sys/bus/pci/drivers_probe`];
  const sudo = facts.root ? "" : "sudo ";

  // A SmartIO device has no local PCI address: the local backends cannot reach it from here.
  const remote = (kind: BackendKind) =>
    fdid !== undefined && kind !== "smartio" ? `${ctrl} is a controller borrowed through SmartIO: the ${kind} backend needs its PCI address, on the host that has it` : undefined;
  const report = (kind: BackendKind, problems: string[], fixes: string[], warnings: string[] = []): PathReport => {
    const far = remote(kind);
    return {
      kind,
      possible: !error && far === undefined && problems.length === 0,
      problems: error ? [error] : far !== undefined ? [far] : problems,
      warnings: far !== undefined ? [] : warnings,
      fixes: error
        ? [`lspci -D -d ::0108   # list NVMe controllers and their addresses`]
        : far !== undefined
          ? [`bun run examples/doctor.ts --ctrl=<BDF>   # on the host that has the controller`]
          : fixes,
    };
  };

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

  // SmartIO: SISCI installed (libnvm's shim built against it), the device lent and known to SISCI.
  const mp: string[] = [];
  const mf: string[] = [];
  const mw: string[] = fdid !== undefined ? ["SmartIO in libnvm is tested against a simulated SISCI only; it has not run on Dolphin hardware"] : [];
  const lend = [
    `smartio_tool add ${bdf ?? "<BDF>"}; smartio_tool available ${bdf ?? "<BDF>"}   # on the host that has the controller: lend it (Dolphin's /opt/DIS/sbin)`,
    "smartio_tool list   # on the borrowing host: the controller's fabric device id (fdid, hex)",
    "bun run examples/identify.ts --ctrl=smartio:<fdid>",
  ];
  const si = facts.sisci;
  if (!si.installed) {
    mp.push(`Dolphin's SISCI is not installed here: ${si.detail}`);
    mf.push(
      "install Dolphin eXpressWare with SmartIO on every node (its installer: --install-node --enable-smartio), on PXH/MXH NTB adapters",
      "cmake -S c -B c/build -DDIS=/opt/DIS && cmake --build c/build   # in libnvm's package: builds the SmartIO shim (c/build/sisci-status.txt says what CMake found)",
      ...lend,
    );
  } else if (fdid === undefined) {
    mp.push(`${bdf ?? ctrl} is a local PCI address: SmartIO borrows a controller by its fabric device id${si.nvmeDevices.length ? ` (NVMe devices SISCI lists: ${si.nvmeDevices.join(", ")})` : ""}`);
    mf.push(...lend);
  } else if (si.device && "error" in si.device) {
    mp.push(si.device.error);
    mf.push("smartio_tool list   # the fabric device ids lent in the cluster", ...lend.slice(0, 1));
  }
  const smartio = report("smartio", mp, mf, mw);

  const paths = [sysfs, vfio, disnvm, smartio];
  const preferred: BackendKind = fdid !== undefined ? "smartio" : driver === "vfio-pci" ? "vfio" : driver === "disnvm" ? "disnvm" : "sysfs";
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
