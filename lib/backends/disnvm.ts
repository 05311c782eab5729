/**
 * disnvm backend: the controller bound to libnvm's own kernel module (module/), reached through
 * its device node /dev/disnvmN. BAR0 is mmap'ed from the node (uncached); DMA memory is ordinary
 * memory that the module pins, charges to RLIMIT_MEMLOCK and maps through the kernel's DMA API (so
 * the IOMMU, on or off, is handled by the kernel), and whose bus addresses it hands back, one per
 * 4 KiB page. Who may open the node: with the IOMMU translating for the controller and the
 * controller alone in its IOMMU group, anyone with access to the node (no root, no capability);
 * otherwise only a process with CAP_SYS_RAWIO, since the controller could then reach any memory
 * (disnvmIsolation() says which case holds, and why).
 *
 * dma-bufs (importDmaBuf): the module attaches another driver's exported memory (a GPU's, udmabuf's)
 * to the controller and maps it, so the controller reaches it directly, through the IOMMU when one
 * translates. If the exporter revokes it, the module stops the controller first; takeRevokedDmaBufs()
 * then finds it, invalidates it and gives it back, and the owner resets the controller.
 *
 * Release: close() unmaps BAR0 and closes the node; the module's release then shuts the controller
 * down, disables it, clears bus mastering, unpins everything and detaches every import, and only
 * after that is the memory freed. If the process dies, SIGKILL included, the kernel runs the same
 * release. The uapi is c/include/disnvm_ioctl.h; the module's README is module/README.md.
 */
import type { Pointer } from "bun:ffi";
import { toArrayBuffer } from "bun:ffi";
import { existsSync, readdirSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { ControllerBusyError, DeviceError, DmaBufRevokedError, InvalidArgumentError, NativeError, PermissionError, UnsupportedError } from "../errors.ts";
import { check, checkPtr, cstr, errnoName, native } from "../native.ts";
import { findPciDevice, PCI_CLASS_NVME, SYSFS_PCI_DEVICES, type PciDevice } from "../pci.ts";
import { BAR0_MIN_SIZE } from "../spec/registers.ts";
import { allocHostPages, DMA_NOLOCK, freeLive, isContiguous, memlockError } from "./dma-common.ts";
import { dmaBufRange, inspectDmaBuf } from "./dmabuf.ts";
import { HugepageReservation } from "./hugepage-reserve.ts";
import { HOST_PAGE_SIZE, type Backend, type DmaMapping, type DmaOptions } from "./types.ts";

/** c/include/disnvm_ioctl.h */
const INFO_DWORDS = 32;
const DISNVM_ABI_VERSION = 3;
const INFO_CUDA = 1;
const INFO_DMA_64BIT = 2;
const INFO_ISOLATED = 4;
const INFO_DMABUF = 8;
const INFO_BAR_FD = 16;
/** DISNVM_MAX_MAP_SIZE: the largest single mapping or import. */
const MAX_MAP_SIZE = 1 << 30;
/** DISNVM_DMABUF_REVOKED */
const DMABUF_REVOKED = 1;

const TWO32 = 0x1_0000_0000;
const EPERM = 1;
const ENOENT = 2;
const EIO = 5;
const EBADF = 9;
const EAGAIN = 11;
const E2BIG = 7;
const ENOMEM = 12;
const EACCES = 13;
const EFAULT = 14;
const EBUSY = 16;
const EEXIST = 17;
const EXDEV = 18;
const ENODEV = 19;
const EINVAL = 22;
const ENOTTY = 25;
const ERANGE = 34;
const EOPNOTSUPP = 95;
const ESTALE = 116;

const ERRNO_NAMES: Record<number, string> = {
  [EPERM]: "EPERM",
  [ENOENT]: "ENOENT",
  [EIO]: "EIO",
  [EBADF]: "EBADF",
  [EAGAIN]: "EAGAIN",
  [ERANGE]: "ERANGE",
  [ESTALE]: "ESTALE",
  [E2BIG]: "E2BIG",
  [ENOMEM]: "ENOMEM",
  [EACCES]: "EACCES",
  [EFAULT]: "EFAULT",
  [EBUSY]: "EBUSY",
  [EEXIST]: "EEXIST",
  [EXDEV]: "EXDEV",
  [ENODEV]: "ENODEV",
  [EINVAL]: "EINVAL",
  [ENOTTY]: "ENOTTY",
  [EOPNOTSUPP]: "EOPNOTSUPP",
};
function errName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/** What DISNVM_IOC_INFO reports (struct disnvm_info). */
export interface DisnvmInfo {
  readonly abiVersion: number;
  readonly bar0Size: number;
  readonly vendor: number;
  readonly device: number;
  readonly classCode: number;
  /** DISNVM_IOC_MAP_DEVICE (CUDA memory) was compiled into the module. */
  readonly cuda: boolean;
  /** The controller got a 64-bit DMA mask (else 32-bit). */
  readonly dma64: boolean;
  /**
   * An IOMMU translates for the controller and it is alone in its IOMMU group: the module lets a
   * process without CAP_SYS_RAWIO hold it.
   */
  readonly isolated: boolean;
  /** 4 KiB pages pinned on this controller, by any open file. */
  readonly pinnedPages: number;
  /** 4 KiB pages pinned through this backend's file. */
  readonly filePinnedPages: number;
  /** Live DMA mappings of this backend's file, dma-buf imports included. */
  readonly fileMappings: number;
  /** DISNVM_IOC_MAP_DMABUF is there (the kernel has dma-buf support). */
  readonly dmaBuf: boolean;
  /** Live dma-buf imports of this backend's file. */
  readonly fileDmaBufs: number;
  /** 4 KiB pages imported through this backend's file (not counted in pinnedPages). */
  readonly fileDmaBufPages: number;
  /** Imports of this backend's file their exporter revoked and that are not unmapped yet. */
  readonly fileRevoked: number;
  /** Live dma-buf imports on this controller, by any open file. */
  readonly dmaBufs: number;
  /** DISNVM_IOC_BAR_FD is there (a module of this checkout, 4 KiB CPU pages). */
  readonly barFd: boolean;
  /** Live BAR descriptors made from this backend's file (DISNVM_IOC_BAR_FD), held by the processes it serves. */
  readonly fileBarFds: number;
}

interface Allocation extends DmaMapping {
  /** nvm_dma_alloc flags of host memory; 0 for an import. */
  readonly flags: number;
  /** The module's handle of a dma-buf import; 0 for host memory. */
  readonly handle: number;
  /** A revoked import already given back to the module: freeDma() only forgets it. */
  released?: boolean;
}

/** The PCI address behind /dev/disnvmN, from sysfs (/sys/class/misc/disnvmN/device), if bound. */
export function disnvmBdf(path: string): string | undefined {
  try {
    const uevent = readFileSync(join("/sys/class/misc", basename(path), "device", "uevent"), "utf8");
    return /^PCI_SLOT_NAME=(.+)$/m.exec(uevent)?.[1];
  } catch {
    return undefined;
  }
}

/** The PID of a process holding `path` open (from /proc/<pid>/fd), or 0. */
function ownerPid(path: string): number {
  let pids: string[];
  try {
    pids = readdirSync("/proc").filter((p) => /^\d+$/.test(p));
  } catch {
    return 0;
  }
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // gone, or not ours to look at
    }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`) === path) return Number(pid);
      } catch {
        // closed meanwhile
      }
    }
  }
  return 0;
}

/**
 * Whether an IOMMU confines the controller at `bdf`, as the disnvm module decides who may open it
 * (module/disnvm.c, disnvm_isolated()): its IOMMU domain translates (type DMA or DMA-FQ, not
 * identity) and no other device is in its IOMMU group. Read from sysfs; `why` says what holds or
 * what is missing, for messages.
 */
export function disnvmIsolation(bdf: string, pciRoot = SYSFS_PCI_DEVICES): { isolated: boolean; why: string } {
  const group = join(pciRoot, bdf, "iommu_group");
  let id: string;
  try {
    id = basename(readlinkSync(group));
  } catch {
    return { isolated: false, why: `no IOMMU translates for ${bdf} (it is in no IOMMU group: the IOMMU is off or absent)` };
  }
  let type = "unknown";
  try {
    type = readFileSync(join(group, "type"), "utf8").trim();
  } catch {
    // No type file (older kernels): not known to translate.
  }
  if (type !== "DMA" && type !== "DMA-FQ") {
    const pt = type === "identity" ? " (passthrough: iommu=pt, iommu.passthrough=1, or the group's type set to identity)" : "";
    return { isolated: false, why: `${bdf}'s IOMMU group ${id} has a "${type}" domain, which does not translate${pt}` };
  }
  let others: string[] = [];
  try {
    others = readdirSync(join(group, "devices")).filter((d) => d !== bdf);
  } catch {
    return { isolated: false, why: `the members of ${bdf}'s IOMMU group ${id} cannot be listed` };
  }
  if (others.length > 0) return { isolated: false, why: `${bdf}'s IOMMU group ${id} is shared with ${others.sort().join(", ")}` };
  return { isolated: true, why: `an IOMMU translates for ${bdf} (a ${type} domain) and it is alone in IOMMU group ${id}` };
}

/** What to do when the module wants CAP_SYS_RAWIO, for the PermissionErrors below. */
const RAWIO_FIX =
  "run as root with CAP_SYS_RAWIO (or grant it: AmbientCapabilities=CAP_SYS_RAWIO for a service), turn the IOMMU on " +
  "(intel_iommu=on or amd_iommu=on, without iommu=pt) with the controller alone in its IOMMU group, or use the VFIO backend";

/** The reason the module gave EPERM for lack of CAP_SYS_RAWIO at `path`, from sysfs. */
function rawioWhy(path: string, bdf: string | undefined): string {
  return bdf ? disnvmIsolation(bdf).why : `${path} has no PCI device in sysfs to look at`;
}

/** NVMe controllers (class 01:08:02) in sysfs and the driver each is bound to, for hints. */
function nvmeControllers(): PciDevice[] {
  const out: PciDevice[] = [];
  let names: string[];
  try {
    names = readdirSync(SYSFS_PCI_DEVICES);
  } catch {
    return out; // no sysfs: no hint
  }
  for (const bdf of names) {
    try {
      const d = findPciDevice(bdf);
      if (d.classCode === PCI_CLASS_NVME) out.push(d);
    } catch {
      // unreadable: skip it
    }
  }
  return out;
}

/** How to get /dev/disnvmN when it is missing: load the module if needed, then bind a controller. */
function bindHint(): string {
  const loaded = existsSync("/sys/bus/pci/drivers/disnvm");
  const ctrls = nvmeControllers().filter((c) => c.driver !== "disnvm");
  const bdf = ctrls.length === 1 ? ctrls[0]!.bdf : "<bdf>";
  const steps: string[] = [];
  if (!loaded) steps.push(`insmod module/build/$(uname -r)/disnvm.ko (build it: bash test/vm/build-module.sh, or make -C module)`);
  const bound = ctrls.length === 1 ? ctrls[0]!.driver : undefined;
  if (bound) steps.push(`echo ${bdf} > /sys/bus/pci/drivers/${bound}/unbind`);
  steps.push(`echo disnvm > /sys/bus/pci/devices/${bdf}/driver_override`, `echo ${bdf} > /sys/bus/pci/drivers_probe`);
  const list = ctrls.length > 1 ? ` (NVMe controllers here: ${ctrls.map((c) => c.bdf).join(", ")})` : "";
  return `load and bind the module: ${steps.join("; ")}${list}`;
}

export class DisnvmBackend implements Backend {
  readonly kind = "disnvm" as const;
  /** The device node, e.g. /dev/disnvm0. */
  readonly name: string;
  /** The controller's PCI address, when sysfs tells. */
  readonly bdf: string | undefined;
  readonly bar0: Pointer;
  readonly bar0Size: number;
  readonly #fd: number;
  readonly #live = new Set<Allocation>();
  /** Hugepages raised for contiguous ranges, given back on close. */
  readonly #reservation = new HugepageReservation();
  #closed = false;

  /** Open the node at `path` (/dev/disnvmN); throws DeviceError/PermissionError with the next step. */
  constructor(path: string) {
    this.name = path;
    let st;
    try {
      st = statSync(path);
    } catch {
      throw new DeviceError(`${path} does not exist: ${bindHint()}`);
    }
    if (!st.isCharacterDevice()) throw new DeviceError(`${path} is not a device node (expected /dev/disnvmN of the disnvm module)`);
    const n = native();
    const fd = n.nvm_disnvm_open(cstr(path));
    if (fd < 0) {
      const errno = -fd;
      if (errno === EACCES) {
        throw new PermissionError(`cannot open ${path}: permission denied; the node is root-only (mode 0600): run as root, or give your user access (chown, or a udev rule for KERNEL=="disnvm*")`);
      }
      if (errno === EPERM) {
        // The module's own refusal (the node's mode gives EACCES): no IOMMU confines the controller.
        throw new PermissionError(
          `cannot open ${path}: without CAP_SYS_RAWIO the disnvm module hands a controller only to a process whose DMA an IOMMU confines, ` +
            `and ${rawioWhy(path, disnvmBdf(path))}; the controller could read and write any memory: ${RAWIO_FIX}`,
        );
      }
      if (errno === EBUSY) {
        const pid = ownerPid(path);
        const msg =
          pid === process.pid
            ? `${path} is already open in this process (${pid}); disnvm allows one owner at a time: close the other DisnvmBackend or Controller first`
            : `${path} is open in ${pid ? `process ${pid} (see /proc/${pid}/cmdline)` : `another process (\`fuser -v ${path}\` names it)`}; disnvm allows one owner at a time: close it there first, or kill it`;
        throw new ControllerBusyError(msg, pid);
      }
      if (errno === ENODEV || errno === ENOENT || errno === 6 /* ENXIO */) {
        throw new DeviceError(`${path}: no controller behind it (${errName(errno)}): it was unbound; ${bindHint()}`);
      }
      throw new NativeError(`cannot open ${path}: ${errName(errno)}`, errno, "open", path);
    }
    this.#fd = fd;
    try {
      let info: DisnvmInfo;
      try {
        info = this.#readInfo();
      } catch (e) {
        if (e instanceof NativeError && (e.errno === ENOTTY || e.errno === EINVAL)) {
          throw new DeviceError(`${path} is not a disnvm device node (DISNVM_IOC_INFO: ${errName(e.errno)}); use /dev/disnvmN of the disnvm module`);
        }
        throw e;
      }
      if (info.abiVersion !== DISNVM_ABI_VERSION) {
        throw new DeviceError(`${path}: the loaded disnvm module speaks ABI ${info.abiVersion}, this libnvm ${DISNVM_ABI_VERSION}: load the module built from this checkout`);
      }
      if (info.bar0Size < BAR0_MIN_SIZE) {
        throw new DeviceError(`${path}: BAR0 is ${info.bar0Size} bytes, too small for NVMe registers (${BAR0_MIN_SIZE})`);
      }
      this.bar0Size = Math.min(info.bar0Size, 0xffff_f000);
      const p = n.nvm_disnvm_map_bar(fd, this.bar0Size);
      if (p === null) {
        const errno = n.nvm_last_error();
        throw new NativeError(`cannot mmap BAR0 of ${path}: ${errName(errno)}`, errno, "mmap", path);
      }
      this.bar0 = p;
    } catch (e) {
      n.nvm_disnvm_close(fd);
      throw e;
    }
    this.bdf = disnvmBdf(path);
  }

  /** The module's view of this controller and of this file (DISNVM_IOC_INFO). */
  info(): DisnvmInfo {
    if (this.#closed) throw new DeviceError(`${this.name} is closed`);
    return this.#readInfo();
  }

  #readInfo(): DisnvmInfo {
    const n = native();
    const out = checkPtr(n.nvm_host_alloc(INFO_DWORDS * 4), "nvm_host_alloc");
    try {
      check(n.nvm_disnvm_info(this.#fd, out), "DISNVM_IOC_INFO", this.name);
      const v = new Uint32Array(toArrayBuffer(out, 0, INFO_DWORDS * 4));
      const u64 = (i: number) => v[2 * i]! + v[2 * i + 1]! * TWO32;
      const flags = u64(5);
      return {
        abiVersion: u64(0),
        bar0Size: u64(1),
        vendor: u64(2),
        device: u64(3),
        classCode: u64(4),
        cuda: (flags & INFO_CUDA) !== 0,
        dma64: (flags & INFO_DMA_64BIT) !== 0,
        isolated: (flags & INFO_ISOLATED) !== 0,
        pinnedPages: u64(6),
        filePinnedPages: u64(7),
        fileMappings: u64(8),
        dmaBuf: (flags & INFO_DMABUF) !== 0,
        fileDmaBufs: u64(9),
        fileDmaBufPages: u64(10),
        fileRevoked: u64(11),
        dmaBufs: u64(12),
        barFd: (flags & INFO_BAR_FD) !== 0,
        fileBarFds: u64(13),
      };
    } finally {
      n.nvm_host_free(out);
    }
  }

  allocDma(size: number, opts: DmaOptions = {}): DmaMapping {
    if (this.#closed) throw new DeviceError(`${this.name} is closed`);
    const n = native();
    // The module maps whatever pages it is given; one bus range for a multi-page request still
    // needs physically contiguous memory when no IOMMU merges it: 2 MiB hugepages, as sysfs.ts.
    // Not mlocked: the module's pin charges RLIMIT_MEMLOCK, and an mlock would count it again.
    const { vaddr, pages, flags } = allocHostPages(size, opts.contiguous === true, "bus-contiguous", this.#reservation, DMA_NOLOCK);
    const bytes = pages * HOST_PAGE_SIZE;
    const out = checkPtr(n.nvm_host_alloc(pages * 8), "nvm_host_alloc");
    try {
      const rc = n.nvm_disnvm_map_host(this.#fd, vaddr, bytes, out);
      if (rc < 0) {
        n.nvm_dma_free(vaddr, size, flags);
        throw this.#mapError(-rc, bytes);
      }
      const iova = new Uint32Array(toArrayBuffer(out, 0, pages * 8).slice(0));
      const contiguous = isContiguous(iova);
      const a: Allocation = { vaddr, size: bytes, iova, contiguous, flags, handle: 0 };
      if (opts.contiguous && !contiguous) {
        this.#release(a);
        throw new DeviceError(`could not get ${size} bus-contiguous bytes`);
      }
      this.#live.add(a);
      return a;
    } finally {
      n.nvm_host_free(out);
    }
  }

  /** The typed error for DISNVM_IOC_MAP_HOST of `bytes` failing with `errno`. */
  #mapError(errno: number, bytes: number): Error {
    const call = `DISNVM_IOC_MAP_HOST: ${errName(errno)}`;
    if (errno === ENODEV) return new DeviceError(`${this.name}: the controller was unbound from disnvm; open it again after binding`);
    // The module charges the pinned pages to RLIMIT_MEMLOCK; ENOMEM is that limit (or no memory at all).
    if (errno === ENOMEM) return memlockError(bytes, call);
    if (errno === EXDEV) {
      return new DeviceError(
        `${this.name}: cannot map ${bytes} bytes for the controller's DMA (${call}): the kernel would bounce it through swiotlb buffers ` +
          `this process never sees (swiotlb=force, an SEV/TDX guest, or a 32-bit DMA mask without an IOMMU), or the device's DMA is not ` +
          `cache-coherent and would need cache maintenance a userspace driver cannot do (the kernel log says which). ` +
          `Use the VFIO backend with an IOMMU, or a machine without forced bouncing`,
      );
    }
    if (errno === EPERM) {
      const iso = this.bdf ? disnvmIsolation(this.bdf) : undefined;
      if (iso && !iso.isolated) {
        return new PermissionError(`${this.name}: the disnvm module no longer lets this process map memory without CAP_SYS_RAWIO (${call}): ${iso.why}; ${RAWIO_FIX}`);
      }
      return new PermissionError(`${this.name}: only the process that opened the node may map memory through it (${call}): open it in this process`);
    }
    return new NativeError(`${this.name}: DISNVM_IOC_MAP_HOST of ${bytes} bytes failed: ${errName(errno)}`, errno, "DISNVM_IOC_MAP_HOST", this.name);
  }

  /**
   * DISNVM_IOC_MAP_DMABUF: attach the dma-buf `fd` to the controller and map [offset, offset + size)
   * of it (to its end without `size`). The fd is checked first (open, a dma-buf, the range inside
   * it), so each mistake gets its own InvalidArgumentError; the module checks again.
   */
  importDmaBuf(fd: number, offset: number, size?: number): DmaMapping {
    if (this.#closed) throw new DeviceError(`${this.name} is closed`);
    const file = inspectDmaBuf(fd);
    const bytes = dmaBufRange(fd, file, offset, size, MAX_MAP_SIZE);
    const pages = bytes / HOST_PAGE_SIZE;
    const n = native();
    const addrs = checkPtr(n.nvm_host_alloc(pages * 8), "nvm_host_alloc");
    const out = checkPtr(n.nvm_host_alloc(16), "nvm_host_alloc");
    try {
      const rc = n.nvm_disnvm_map_dmabuf(this.#fd, fd, offset % TWO32, Math.floor(offset / TWO32), bytes, addrs, out);
      if (rc < 0) throw this.#importError(-rc, fd, file.exporter, offset, bytes);
      const o = new Uint32Array(toArrayBuffer(out, 0, 16));
      const handle = o[0]! + o[1]! * TWO32;
      const iova = new Uint32Array(toArrayBuffer(addrs, 0, pages * 8).slice(0));
      const a: Allocation = {
        vaddr: null,
        size: bytes,
        iova,
        contiguous: isContiguous(iova),
        flags: 0,
        handle,
        dmaBuf: { fd, offset, bufferSize: o[2]! + o[3]! * TWO32, exporter: file.exporter, handle },
      };
      this.#live.add(a);
      return a;
    } finally {
      n.nvm_host_free(out);
      n.nvm_host_free(addrs);
    }
  }

  /** The typed error for DISNVM_IOC_MAP_DMABUF of dma-buf `fd` failing with `errno`. */
  #importError(errno: number, fd: number, exporter: string, offset: number, bytes: number): Error {
    const call = `DISNVM_IOC_MAP_DMABUF: ${errName(errno)}`;
    const what = `dma-buf fd ${fd} (exporter ${exporter}, ${bytes} bytes at offset ${offset})`;
    switch (errno) {
      case EBADF:
        return new InvalidArgumentError(`fd ${fd} is not open in this process (${call}): pass the dma-buf's file descriptor`);
      case EINVAL:
        return new InvalidArgumentError(`${this.name} refused ${what} (${call}): fd ${fd} is not a dma-buf, or the range is not whole 4 KiB pages`);
      case ERANGE:
        return new InvalidArgumentError(`${what} runs past the end of the dma-buf (${call})`);
      case E2BIG:
        return new InvalidArgumentError(`${what}: over the largest import of ${MAX_MAP_SIZE} bytes (${call}): import it in parts`);
      case ENODEV:
        return new DeviceError(`${this.name}: the controller was unbound from disnvm; open it again after binding`);
      case EPERM: {
        const iso = this.bdf ? disnvmIsolation(this.bdf) : undefined;
        if (iso && !iso.isolated) {
          return new PermissionError(`${this.name}: the disnvm module no longer lets this process map memory without CAP_SYS_RAWIO (${call}): ${iso.why}; ${RAWIO_FIX}`);
        }
        return new PermissionError(`${this.name}: only the process that opened the node may import through it (${call}): open it in this process`);
      }
      case EXDEV:
        return new DeviceError(
          `${this.name}: cannot import ${what} (${call}): the exporter's mapping for the controller is bounced through swiotlb, not cache-coherent, ` +
            `or not in the controller's IOMMU domain (the kernel log says which); the controller could not reach that memory directly`,
        );
      case EIO:
        return new DeviceError(`${this.name}: cannot import ${what} (${call}): the exporter mapped it in pieces that are not whole 4 KiB pages`);
      case EAGAIN:
        return new DeviceError(`${this.name}: the exporter revoked ${what} while it was being imported (${call}): import it again`);
      case EBUSY:
        return new DeviceError(`${this.name}: the exporter cannot place ${what} where the controller reaches it (${call}): it refused the attachment`);
      case EOPNOTSUPP:
        return new DeviceError(`${this.name}: this kernel has no dma-buf support (CONFIG_DMA_SHARED_BUFFER), so the disnvm module cannot import ${what} (${call})`);
      case ENOMEM:
        return new NativeError(`${this.name}: out of kernel memory importing ${what} (${call})`, errno, "DISNVM_IOC_MAP_DMABUF", this.name);
      default:
        return new NativeError(`${this.name}: importing ${what} failed (${call})`, errno, "DISNVM_IOC_MAP_DMABUF", this.name);
    }
  }

  /**
   * Imports their exporter revoked (DISNVM_IOC_DMABUF_STATUS), each invalidated with a
   * DmaBufRevokedError and unmapped (DISNVM_IOC_UNMAP): the module stopped the controller (CC.EN = 0,
   * bus mastering cleared) before it let the exporter take the memory, and refuses to set bus
   * mastering again until every revoked import is unmapped. One DISNVM_IOC_INFO when none is.
   */
  takeRevokedDmaBufs(): DmaMapping[] {
    if (this.#closed) return [];
    let any = false;
    for (const a of this.#live) if (a.handle !== 0 && !a.released) any = true;
    if (!any || this.#readInfo().fileRevoked === 0) return [];
    const n = native();
    const out: Allocation[] = [];
    const flags = checkPtr(n.nvm_host_alloc(8), "nvm_host_alloc");
    try {
      for (const a of this.#live) {
        if (a.handle === 0 || a.released) continue;
        const lo = a.handle % TWO32;
        const hi = Math.floor(a.handle / TWO32);
        check(n.nvm_disnvm_dmabuf_status(this.#fd, lo, hi, flags), "DISNVM_IOC_DMABUF_STATUS", this.name);
        if ((new Uint32Array(toArrayBuffer(flags, 0, 8))[0]! & DMABUF_REVOKED) === 0) continue;
        a.released = true;
        check(n.nvm_disnvm_unmap_dmabuf(this.#fd, lo, hi), "DISNVM_IOC_UNMAP", this.name);
        const d = a.dmaBuf!;
        a.invalidate?.(
          new DmaBufRevokedError(
            `dma-buf fd ${d.fd} (exporter ${d.exporter}, ${a.size} bytes at offset ${d.offset}) was revoked by its exporter: the disnvm module stopped ` +
              `${this.name} before the memory moved, so commands on it ended without a result (their data may or may not have moved). Free this buffer; ` +
              `import the dma-buf again once its exporter has it back (the controller is reset, other buffers work)`,
          ),
        );
        out.push(a);
      }
    } finally {
      n.nvm_host_free(flags);
    }
    return out;
  }

  /**
   * Test hook: DISNVM_IOC_REVOKE_DMABUF makes the module revoke the import `handle` exactly as an
   * exporter's move_notify would (needs CAP_SYS_ADMIN): for exporters that never revoke (udmabuf).
   */
  revokeDmaBuf(handle: number): void {
    if (this.#closed) throw new DeviceError(`${this.name} is closed`);
    const rc = native().nvm_disnvm_revoke_dmabuf(this.#fd, handle % TWO32, Math.floor(handle / TWO32));
    if (rc === -EPERM) throw new PermissionError(`${this.name}: DISNVM_IOC_REVOKE_DMABUF is a test hook for root (CAP_SYS_ADMIN)`);
    if (rc < 0) throw new NativeError(`${this.name}: DISNVM_IOC_REVOKE_DMABUF of import ${handle} failed: ${errName(-rc)}`, -rc, "DISNVM_IOC_REVOKE_DMABUF", this.name);
  }

  freeDma(mapping: DmaMapping): void {
    freeLive(this.#live, mapping, (a) => this.#release(a));
  }

  /** DISNVM_IOC_UNMAP, then give the memory back. The memory goes even if the unmap failed. */
  #release(a: Allocation): void {
    const n = native();
    if (a.vaddr === null) {
      // An import: the exporter's memory, nothing of ours to free.
      if (a.released) return;
      const rc = n.nvm_disnvm_unmap_dmabuf(this.#fd, a.handle % TWO32, Math.floor(a.handle / TWO32));
      if (rc < 0 && -rc !== ENODEV) {
        throw new NativeError(`${this.name}: DISNVM_IOC_UNMAP of dma-buf import ${a.handle} failed: ${errName(-rc)}`, -rc, "DISNVM_IOC_UNMAP", this.name);
      }
      return;
    }
    const rc = n.nvm_disnvm_unmap(this.#fd, a.vaddr);
    check(n.nvm_dma_free(a.vaddr, a.size, a.flags), "nvm_dma_free");
    // ENODEV: the device was unbound and the module already released the mapping.
    if (rc < 0 && -rc !== ENODEV) {
      throw new NativeError(`${this.name}: DISNVM_IOC_UNMAP failed: ${errName(-rc)}`, -rc, "DISNVM_IOC_UNMAP", this.name);
    }
  }

  // ---- serving the controller to other processes (lib/share/server.ts) -----------------------

  /**
   * DISNVM_IOC_BAR_FD: a new descriptor that maps BAR0 and nothing else (its register page
   * read-only), for a process this one serves: it rings its own queues' doorbells with it, and can
   * map no memory for the controller. The caller owns it (pass it on, then close it). The module
   * revokes it when this backend's file is released, before it stops the controller.
   */
  barFd(): number {
    if (this.#closed) throw new DeviceError(`${this.name} is closed`);
    const fd = native().nvm_disnvm_bar_fd(this.#fd);
    if (fd >= 0) return fd;
    const errno = -fd;
    if (errno === ENOTTY || errno === EINVAL) {
      throw new UnsupportedError(`${this.name}: the loaded disnvm module cannot hand out BAR descriptors (DISNVM_IOC_BAR_FD: ${errName(errno)}): load the module built from this checkout (bash test/vm/build-module.sh)`);
    }
    if (errno === EOPNOTSUPP) throw new UnsupportedError(`${this.name}: this kernel's pages are larger than 4 KiB, so the doorbells share a page with the registers and cannot be handed out alone (DISNVM_IOC_BAR_FD: EOPNOTSUPP)`);
    if (errno === ENODEV) throw new DeviceError(`${this.name}: the controller was unbound from disnvm; open it again after binding`);
    throw new NativeError(`${this.name}: DISNVM_IOC_BAR_FD failed: ${errName(errno)}`, errno, "DISNVM_IOC_BAR_FD", this.name);
  }

  /**
   * Map `bytes` of another process's memory, the memfd `fd` (whose descriptor it handed over), for
   * the controller: mapped into this process, then pinned and DMA-mapped by the module through this
   * backend's file, so the pages stay the controller's to reach until release(), whatever happens
   * to that process (its SIGKILL included), and the module's release stops the controller before
   * it unpins them. Returns one bus address per 4 KiB page, (lo, hi) pairs.
   */
  mapForeign(fd: number, bytes: number): { pages: Uint32Array; release(): void } {
    if (this.#closed) throw new DeviceError(`${this.name} is closed`);
    if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % HOST_PAGE_SIZE !== 0 || bytes > MAX_MAP_SIZE) {
      throw new InvalidArgumentError(`foreign DMA memory of ${bytes} bytes: whole 4 KiB pages, at most ${MAX_MAP_SIZE} (one module mapping)`);
    }
    const n = native();
    const path = `/proc/self/fd/${fd}`;
    const vaddr = n.nvm_map_file(cstr(path), 0, bytes, null);
    if (vaddr === null) throw new NativeError(`cannot map the client's memory (${path}): ${errnoName(n.nvm_last_error())}`, n.nvm_last_error(), "mmap", path);
    const pages = bytes / HOST_PAGE_SIZE;
    const out = checkPtr(n.nvm_host_alloc(pages * 8), "nvm_host_alloc");
    let addrs: Uint32Array;
    try {
      const rc = n.nvm_disnvm_map_host(this.#fd, vaddr, bytes, out);
      if (rc < 0) {
        n.nvm_unmap(vaddr, bytes);
        throw this.#mapError(-rc, bytes);
      }
      addrs = new Uint32Array(toArrayBuffer(out, 0, pages * 8).slice(0));
    } finally {
      n.nvm_host_free(out);
    }
    let released = false;
    return {
      pages: addrs,
      release: () => {
        if (released || this.#closed) return;
        released = true;
        // Unpinned (and, with an IOMMU, unmapped and flushed) before our mapping of the pages goes.
        const rc = n.nvm_disnvm_unmap(this.#fd, vaddr);
        n.nvm_unmap(vaddr, bytes);
        if (rc < 0 && -rc !== ENODEV) throw new NativeError(`${this.name}: DISNVM_IOC_UNMAP of a client's ${bytes} bytes failed: ${errName(-rc)}`, -rc, "DISNVM_IOC_UNMAP", this.name);
      },
    };
  }

  /** DISNVM_IOC_BUS_MASTER: the module owns the device's config space while it is bound. */
  setBusMaster(enabled: boolean): void {
    if (this.#closed) throw new DeviceError(`${this.name} is closed`);
    const rc = native().nvm_disnvm_bus_master(this.#fd, enabled ? 1 : 0);
    if (rc === -ENODEV) throw new DeviceError(`${this.name}: the controller was unbound from disnvm; bus mastering went with it`);
    if (rc === -ESTALE) {
      throw new DeviceError(
        `${this.name}: the disnvm module keeps bus mastering off while an import its exporter revoked is still mapped (the controller may hold its old addresses): takeRevokedDmaBufs() or reset() gives it back first`,
      );
    }
    if (rc < 0) throw new NativeError(`${this.name}: DISNVM_IOC_BUS_MASTER ${enabled ? "set" : "clear"} failed: ${errName(-rc)}`, -rc, "DISNVM_IOC_BUS_MASTER", this.name);
  }

  /** The module keeps the pages pinned until the node is released (after it quiesced the controller). */
  abandonDma(): void {
    this.#live.clear();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const n = native();
    for (const a of this.#live) a.revoke?.();
    // BAR0 and the fd first: the module's release then disables the controller and unpins every
    // mapping before any of the memory goes back to the system.
    n.nvm_unmap(this.bar0, this.bar0Size);
    n.nvm_disnvm_close(this.#fd);
    // Imports are the exporters' memory: the release detached them, nothing to free here.
    for (const a of this.#live) if (a.vaddr !== null) n.nvm_dma_free(a.vaddr, a.size, a.flags);
    this.#live.clear();
    this.#reservation.release();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
