/**
 * VFIO backend: the controller bound to vfio-pci, reached through a type1 IOMMU container.
 * BAR0 is mmap'ed through the device fd, bus mastering goes through the config region, and DMA
 * memory is ordinary locked memory mapped into the device's I/O address space with
 * VFIO_IOMMU_MAP_DMA at IOVAs from our own allocator (lib/iova.ts). The IOMMU makes every mapping
 * one contiguous range on the bus whatever the physical pages, so no hugepages are needed, and the
 * controller can reach nothing else: a DMA to any other address faults in the IOMMU.
 *
 * Release: close() unmaps and frees everything. If the process dies (even by SIGKILL) the kernel
 * closes the fds; vfio-pci disables and resets the function on the device fd's last close, and
 * type1 unmaps and unpins every mapping when the container loses its last group.
 * Linux Documentation/driver-api/vfio.rst; include/uapi/linux/vfio.h.
 */
import type { Pointer } from "bun:ffi";
import { toArrayBuffer } from "bun:ffi";
import { existsSync, readdirSync, readlinkSync } from "node:fs";
import { basename, join } from "node:path";
import { DeviceError, InvalidArgumentError, NativeError, PermissionError } from "../errors.ts";
import { IovaAllocator, iovaGranule, join64, type IovaRange } from "../iova.ts";
import { check, checkPtr, cstr, errnoName, native } from "../native.ts";
import { findPciDevice, parseBdf, PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, type PciDevice } from "../pci.ts";
import { BAR0_MIN_SIZE, CSTS_RDY, REG_ALL_ONES, REG_CSTS } from "../spec/registers.ts";
import { DMA_NOLOCK, dmaAllocError, freeLive } from "./dma-common.ts";
import { dmaBufUnsupported } from "./dmabuf.ts";
import { HOST_PAGE_SIZE, type Backend, type DmaMapping, type DmaOptions } from "./types.ts";

// c/include/nvm_native.h
const STEP = {
  NONE: 0,
  CONTAINER: 1,
  API_VERSION: 2,
  EXTENSION: 3,
  GROUP: 4,
  GROUP_STATUS: 5,
  SET_CONTAINER: 6,
  SET_IOMMU: 7,
  DEVICE: 8,
} as const;
const INFO_HDR_DWORDS = 8;
/** IOVA ranges read from the capability chain; real IOMMUs report a handful. */
const MAX_RANGES = 64;
const REGION_MMAP = 4;
const MAP_READ = 1;
const MAP_WRITE = 2;

/** vfio-pci region indexes (enum VFIO_PCI_*_REGION_INDEX). */
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
/** VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU. */
export const VFIO_TYPE1_IOMMU = 1;
export const VFIO_TYPE1v2_IOMMU = 3;

const TWO32 = 0x1_0000_0000;
const EPERM = 1;
const ENOENT = 2;
const ENOMEM = 12;
const EACCES = 13;
const EBUSY = 16;
const ENODEV = 19;
const ENOSPC = 28;
const EPROTO = 71;

export interface VfioBackendOptions {
  /** Lowest IOVA handed out (never 0). Defaults to 0x1000_0000 (IOVA_DEFAULT_BASE). */
  readonly iovaBase?: number;
}

/** What the IOMMU reported for the container (VFIO_IOMMU_GET_INFO). */
export interface IommuInfo {
  /** VFIO_TYPE1v2_IOMMU (3) or VFIO_TYPE1_IOMMU (1). */
  readonly type: number;
  /** iova_pgsizes: bitmap of supported IOMMU page sizes. */
  readonly pgsizes: bigint;
  /** Allocation unit: the smallest page size, at least 4096. */
  readonly granule: number;
  /** Valid IOVA ranges, `end` inclusive (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE); a kernel without the capability: everything. */
  readonly ranges: readonly IovaRange[];
  /** DMA mappings the container may still create (VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL), when reported. */
  readonly dmaAvailable: number | undefined;
}

interface Region {
  readonly flags: number;
  readonly size: number;
  /** Offset of the region in the device fd. */
  readonly offset: number;
}

interface Allocation extends DmaMapping {
  readonly vaddr: Pointer;
  /** First IOVA of the mapping; one range of `size` bytes. */
  readonly iovaStart: number;
}

const hex = (v: number) => "0x" + v.toString(16);

/** The command lines that bind `bdf` to vfio-pci (`driver`: what it is bound to now). */
export function vfioBindCommands(bdf: string, driver: string | undefined): string {
  return [
    "modprobe vfio-pci",
    `echo vfio-pci > /sys/bus/pci/devices/${bdf}/driver_override`,
    ...(driver ? [`echo ${bdf} > /sys/bus/pci/devices/${bdf}/driver/unbind`] : []),
    `echo ${bdf} > /sys/bus/pci/drivers_probe`,
  ].join("; ");
}

export class VfioBackend implements Backend {
  readonly kind = "vfio" as const;
  readonly name: string;
  readonly device: PciDevice;
  /** IOMMU group number (/dev/vfio/<group>). */
  readonly group: string;
  readonly bar0: Pointer;
  readonly bar0Size: number;
  readonly iommu: IommuInfo;
  /** COMMAND register as found at open, restored by close(). */
  readonly commandBefore: number;
  /** Where BAR0 lies in the device file (the VFIO region offset), for a process handed the device fd. */
  readonly bar0Offset: number;
  readonly #fds: { container: number; group: number; device: number };
  readonly #config: Region;
  readonly #iova: IovaAllocator;
  readonly #live = new Set<Allocation>();
  /** A scratch dword C may write into (never a JS-allocated array: bun#32054). */
  readonly #out: { ptr: Pointer; u32: Uint32Array; size: number };
  #closed = false;

  /** Open the controller at `bdf` bound to vfio-pci; DeviceError/PermissionError say what to do otherwise. */
  constructor(bdf: string, opts: VfioBackendOptions = {}) {
    this.name = parseBdf(bdf);
    this.device = findPciDevice(this.name);
    if (this.device.driver !== "vfio-pci") {
      const now = this.device.driver ? `bound to ${this.device.driver}` : "not bound to any driver";
      throw new DeviceError(`${this.name} is ${now}, not vfio-pci; bind it (as root): ${vfioBindCommands(this.name, this.device.driver)}`);
    }
    const group = this.device.iommuGroup;
    if (group === undefined) {
      throw new DeviceError(
        `${this.name} has no IOMMU group: the IOMMU is off. VFIO needs one: boot with intel_iommu=on (Intel) or amd_iommu=on (AMD) and enable VT-d/AMD-Vi in the firmware; or use the sysfs backend (unbind from vfio-pci)`,
      );
    }
    this.group = group;
    const groupPath = `/dev/vfio/${group}`;
    if (!existsSync(groupPath)) {
      throw new DeviceError(`${groupPath} does not exist although ${this.name} is bound to vfio-pci: is the vfio module loaded (modprobe vfio-pci)? Check udev (ls -l /dev/vfio)`);
    }

    const n = native();
    const outSize = (INFO_HDR_DWORDS + 4 * MAX_RANGES) * 4;
    const outPtr = checkPtr(n.nvm_host_alloc(outSize), "nvm_host_alloc");
    this.#out = { ptr: outPtr, u32: new Uint32Array(toArrayBuffer(outPtr, 0, outSize)), size: outSize };
    const out = this.#out.u32;

    let rc = n.nvm_vfio_open(cstr(groupPath), cstr(this.name), outPtr);
    // EBUSY with no process holding the group: the previous owner is still exiting (its files are
    // released after /proc stops listing them). Retry briefly instead of blaming a ghost.
    for (let i = 0; i < 20 && rc === -EBUSY && out[4] === STEP.GROUP && holdersOf(groupPath).length === 0; i++) {
      Bun.sleepSync(50);
      rc = n.nvm_vfio_open(cstr(groupPath), cstr(this.name), outPtr);
    }
    if (rc < 0) {
      const step = out[4]!;
      const detail = out[5]!;
      n.nvm_host_free(outPtr);
      throw this.#openError(groupPath, -rc, step, detail);
    }
    this.#fds = { container: out[0]!, group: out[1]!, device: out[2]! };
    const type = out[3]!;

    let bar0: Pointer | undefined;
    let bar0Size = 0;
    try {
      // IOMMU geometry: page sizes and the IOVA apertures (the rest is reserved, e.g. the MSI window).
      check(n.nvm_vfio_iommu_info(this.#fds.container, outPtr, MAX_RANGES), "VFIO_IOMMU_GET_INFO", groupPath);
      const pgLo = out[1]!;
      const pgHi = out[2]!;
      const reported = out[3]!;
      const avail = out[4]!;
      const ranges: IovaRange[] = [];
      for (let i = 0; i < Math.min(reported, MAX_RANGES); i++) {
        const o = INFO_HDR_DWORDS + 4 * i;
        ranges.push({ start: join64(out[o]!, out[o + 1]!), end: join64(out[o + 2]!, out[o + 3]!) });
      }
      // Without the capability (kernels before 5.4) every IOVA is valid as far as VFIO says.
      if (reported === 0) ranges.push({ start: 0, end: Infinity });
      const granule = iovaGranule(pgLo, pgHi);
      this.iommu = {
        type,
        pgsizes: (BigInt(pgHi) << 32n) | BigInt(pgLo),
        granule,
        ranges,
        dmaAvailable: avail === 0xffffffff ? undefined : avail,
      };
      this.#iova = new IovaAllocator(ranges, { granule, ...(opts.iovaBase !== undefined ? { base: opts.iovaBase } : {}) });

      const bar = this.#region(VFIO_PCI_BAR0_REGION_INDEX);
      if (bar.size < BAR0_MIN_SIZE) {
        throw new DeviceError(`${this.name}: BAR0 is ${bar.size} bytes, too small for NVMe registers (${BAR0_MIN_SIZE})`);
      }
      if ((bar.flags & REGION_MMAP) === 0) {
        throw new DeviceError(`${this.name}: vfio-pci does not allow mapping BAR0 (region flags ${hex(bar.flags)})`);
      }
      bar0Size = Math.min(bar.size, 0x8000_0000);
      bar0 = n.nvm_vfio_map_region(this.#fds.device, bar.offset % TWO32, Math.floor(bar.offset / TWO32), bar0Size) ?? undefined;
      if (bar0 === undefined) {
        const errno = n.nvm_last_error();
        throw new NativeError(`cannot mmap BAR0 of ${this.name} through VFIO: ${errnoName(errno)}`, errno, "mmap", groupPath);
      }
      this.bar0 = bar0;
      this.bar0Size = bar0Size;
      this.bar0Offset = bar.offset;

      this.#config = this.#region(VFIO_PCI_CONFIG_REGION_INDEX);
      // Memory Space Enable for BAR0, Bus Master Enable for DMA (through VFIO's virtualised COMMAND register).
      this.commandBefore = this.configRead(PCI_COMMAND, 2);
      const want = this.commandBefore | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
      if (want !== this.commandBefore) this.configWrite(PCI_COMMAND, 2, want);
    } catch (e) {
      if (bar0) n.nvm_unmap(bar0, bar0Size);
      n.nvm_vfio_close(this.#fds.container, this.#fds.group, this.#fds.device);
      n.nvm_host_free(outPtr);
      throw e;
    }
  }

  #openError(groupPath: string, errno: number, step: number, detail: number): Error {
    const g = this.group;
    const fail = (what: string) => new NativeError(`${what} failed for ${this.name}: ${errnoName(errno)}`, errno, what, groupPath);
    switch (step) {
      case STEP.CONTAINER:
        if (errno === ENOENT) return new DeviceError("/dev/vfio/vfio does not exist: load VFIO with `modprobe vfio-pci`");
        if (errno === EACCES || errno === EPERM) return new PermissionError("cannot open /dev/vfio/vfio: permission denied; run as root or give your user access");
        return fail("open /dev/vfio/vfio");
      case STEP.API_VERSION:
        return new DeviceError(`the kernel's VFIO API version is ${detail}, libnvm speaks version 0 (errno ${errno === EPROTO ? "EPROTO" : errno})`);
      case STEP.EXTENSION:
        return new DeviceError("the kernel's VFIO has no type1 IOMMU backend: `modprobe vfio_iommu_type1`, and check the IOMMU is on (intel_iommu=on / amd_iommu=on)");
      case STEP.GROUP:
        if (errno === EACCES || errno === EPERM) {
          return new PermissionError(
            `cannot open ${groupPath}: permission denied. Run as root, or give your user the group: \`chown $USER ${groupPath}\` (until reboot), ` +
              `or a udev rule: SUBSYSTEM=="vfio", KERNEL=="${g}", OWNER="<user>" in /etc/udev/rules.d/99-vfio.rules; a non-root user also needs \`ulimit -l\` at least the DMA memory it maps`,
          );
        }
        if (errno === EBUSY) {
          const pids = holdersOf(groupPath);
          const others = pids.filter((p) => p !== process.pid);
          const who =
            others.length > 0
              ? `process${others.length > 1 ? "es" : ""} ${others.join(", ")} (see /proc/<pid>/cmdline)`
              : pids.length > 0
                ? `this process (${process.pid}): a VfioBackend or controller opened earlier is still open`
                : "another process (none has it open now: if one just exited, try again)";
          return new DeviceError(`${groupPath} (IOMMU group of ${this.name}) is held by ${who}: VFIO allows one owner; close the controller there first`);
        }
        if (errno === ENOENT || errno === ENODEV) return new DeviceError(`${groupPath} went away: is ${this.name} still bound to vfio-pci?`);
        return fail(`open ${groupPath}`);
      case STEP.GROUP_STATUS:
        if (errno === EBUSY) return this.#notViable();
        return fail("VFIO_GROUP_GET_STATUS");
      case STEP.SET_CONTAINER:
        // 6.1 claims the group's DMA ownership here: EBUSY when a member is bound to a kernel driver.
        if (errno === EBUSY) return this.#notViable();
        return fail("VFIO_GROUP_SET_CONTAINER");
      case STEP.SET_IOMMU:
        // vfio_iommu_type1_attach_group: "No interrupt remapping support" (no MSI isolation).
        if (errno === EPERM) {
          return new DeviceError(
            `VFIO refuses ${this.name}: the IOMMU has no interrupt remapping, so the device's MSIs are not isolated. Turn it on ` +
              `(firmware: VT-d/AMD-Vi interrupt remapping; QEMU: -device intel-iommu,intremap=on) or, accepting that risk, ` +
              `\`echo 1 > /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts\` (see dmesg)`,
          );
        }
        return fail("VFIO_SET_IOMMU");
      case STEP.DEVICE:
        if (errno === EBUSY) return new DeviceError(`${this.name} is already open through VFIO in this process or another`);
        return fail("VFIO_GROUP_GET_DEVICE_FD");
      default:
        return fail("nvm_vfio_open");
    }
  }

  /**
   * The group is not viable: some member is bound to a driver that owns its DMA. Name those (vfio-pci,
   * pci-stub, pcieport and no driver at all are fine) and how to release them.
   */
  #notViable(): DeviceError {
    const dir = `/sys/kernel/iommu_groups/${this.group}/devices`;
    const harmless = new Set(["vfio-pci", "pci-stub", "pcieport"]);
    let blockers: { bdf: string; driver: string }[] = [];
    try {
      blockers = readdirSync(dir)
        .filter((d) => d !== this.name)
        .map((d) => {
          try {
            return { bdf: d, driver: basename(readlinkSync(join("/sys/bus/pci/devices", d, "driver"))) };
          } catch {
            return { bdf: d, driver: "" };
          }
        })
        .filter((m) => m.driver !== "" && !harmless.has(m.driver));
    } catch {
      // Reported without the list.
    }
    const which =
      blockers.length > 0
        ? `${blockers.map((m) => `${m.bdf} (bound to ${m.driver})`).join(", ")} ${blockers.length > 1 ? "are" : "is"} in the same group`
        : "another member of the group is bound to a kernel driver";
    const fix = blockers.map((m) => vfioBindCommands(m.bdf, m.driver).replace("modprobe vfio-pci; ", "")).join("; ");
    return new DeviceError(
      `IOMMU group ${this.group} of ${this.name} is not viable: ${which}. Every device of a group must be bound to vfio-pci ` +
        `(or to no driver) before VFIO lets one process own it${fix ? `: ${fix}` : ""}; list the group with \`ls ${dir}\``,
    );
  }

  #region(index: number): Region {
    const out = this.#out.u32;
    check(native().nvm_vfio_region_info(this.#fds.device, index, this.#out.ptr), "VFIO_DEVICE_GET_REGION_INFO", `/dev/vfio/${this.group}`);
    return { flags: out[0]!, size: join64(out[1]!, out[2]!), offset: join64(out[3]!, out[4]!) };
  }

  #check(): void {
    if (this.#closed) throw new DeviceError(`${this.name} (VFIO) is closed`);
  }

  /** Read `width` bytes of PCI configuration space through VFIO's config region. */
  configRead(offset: number, width: 1 | 2 | 4): number {
    this.#check();
    const at = this.#config.offset + offset;
    check(native().nvm_vfio_region_read(this.#fds.device, at % TWO32, Math.floor(at / TWO32), width, this.#out.ptr), "read config space (VFIO)", this.name);
    return this.#out.u32[0]!;
  }

  configWrite(offset: number, width: 1 | 2 | 4, value: number): void {
    this.#check();
    const at = this.#config.offset + offset;
    check(native().nvm_vfio_region_write(this.#fds.device, at % TWO32, Math.floor(at / TWO32), width, value >>> 0), "write config space (VFIO)", this.name);
  }

  /** DMA mappings the container may still create (changes with every map/unmap); undefined when not reported. */
  dmaAvailable(): number | undefined {
    this.#check();
    check(native().nvm_vfio_iommu_info(this.#fds.container, this.#out.ptr, 0), "VFIO_IOMMU_GET_INFO", this.name);
    const v = this.#out.u32[4]!;
    return v === 0xffffffff ? undefined : v;
  }

  /** The live DMA mappings as IOVA ranges, lowest first. */
  mappings(): { iova: number; size: number }[] {
    return [...this.#live].map((a) => ({ iova: a.iovaStart, size: a.size })).sort((a, b) => a.iova - b.iova);
  }

  /** The IOVA allocator's view (free ranges, bytes in use), for diagnostics and tests. */
  get iova(): IovaAllocator {
    return this.#iova;
  }

  /**
   * Locked memory mapped for the device at a fresh IOVA range. Always bus-contiguous (one IOVA
   * range over whatever physical pages), so `contiguous` needs nothing special here.
   */
  allocDma(size: number, _opts: DmaOptions = {}): DmaMapping {
    this.#check();
    if (!Number.isSafeInteger(size) || size <= 0) throw new DeviceError(`DMA allocation of ${size} bytes: the size must be a positive integer`);
    const granule = this.#iova.granule;
    const bytes = Math.ceil(size / granule) * granule;
    if (bytes > 0xffff_f000) throw new DeviceError(`a DMA allocation is limited to 4 GiB - 4 KiB here (asked ${size})`);
    const n = native();
    // Not mlocked: VFIO_IOMMU_MAP_DMA pins the pages and charges them to RLIMIT_MEMLOCK itself.
    const vaddr = n.nvm_dma_alloc(bytes, DMA_NOLOCK);
    if (vaddr === null) throw dmaAllocError(bytes, n.nvm_last_error(), { locked: false, errnoText: errnoName });
    if (Number(vaddr) % granule !== 0) {
      n.nvm_dma_free(vaddr, bytes, DMA_NOLOCK);
      throw new DeviceError(`the IOMMU's smallest page is ${granule} bytes but host memory came ${HOST_PAGE_SIZE}-aligned: not supported`);
    }
    let iova: number;
    try {
      iova = this.#iova.alloc(bytes);
    } catch (e) {
      n.nvm_dma_free(vaddr, bytes, DMA_NOLOCK);
      throw e;
    }
    const rc = n.nvm_vfio_dma_map(this.#fds.container, vaddr, iova % TWO32, Math.floor(iova / TWO32), bytes, MAP_READ | MAP_WRITE);
    if (rc < 0) {
      this.#iova.free(iova);
      n.nvm_dma_free(vaddr, bytes, DMA_NOLOCK);
      const errno = -rc;
      if (errno === ENOMEM || errno === EPERM) {
        throw new PermissionError(
          `VFIO_IOMMU_MAP_DMA of ${bytes} bytes at IOVA ${hex(iova)}: ${errnoName(errno)}: pinned DMA memory counts against RLIMIT_MEMLOCK; raise it (\`ulimit -l unlimited\`) or run as root`,
        );
      }
      if (errno === ENOSPC) {
        throw new DeviceError(`VFIO_IOMMU_MAP_DMA: the container has no mapping left (vfio_iommu_type1 dma_entry_limit reached with ${this.#live.size} live): free DMA buffers or use fewer, larger ones`);
      }
      throw new NativeError(`VFIO_IOMMU_MAP_DMA of ${bytes} bytes at IOVA ${hex(iova)} failed: ${errnoName(errno)}`, errno, "VFIO_IOMMU_MAP_DMA", this.name);
    }
    const pages = bytes / HOST_PAGE_SIZE;
    const table = new Uint32Array(2 * pages);
    for (let i = 0; i < pages; i++) {
      const a = iova + i * HOST_PAGE_SIZE;
      table[2 * i] = a % TWO32;
      table[2 * i + 1] = Math.floor(a / TWO32);
    }
    const a: Allocation = { vaddr, size: bytes, iova: table, contiguous: true, iovaStart: iova };
    this.#live.add(a);
    return a;
  }

  /** VFIO's type1 IOMMU maps only this process's own memory: UnsupportedError naming the disnvm module. */
  importDmaBuf(_fd: number, _offset: number, _size?: number): DmaMapping {
    throw dmaBufUnsupported("vfio");
  }

  freeDma(mapping: DmaMapping): void {
    freeLive(this.#live, mapping, (a) => {
      const n = native();
      const rc = n.nvm_vfio_dma_unmap(this.#fds.container, a.iovaStart % TWO32, Math.floor(a.iovaStart / TWO32), a.size);
      // When the unmap failed, the IOMMU may still map the range: its IOVA is never reused (the kernel
      // keeps the pages pinned until the container goes, so freeing our mapping of them is safe).
      if (rc === 0) this.#iova.free(a.iovaStart);
      const freed = n.nvm_dma_free(a.vaddr, a.size, DMA_NOLOCK);
      check(rc, "VFIO_IOMMU_UNMAP_DMA", this.name);
      check(freed, "nvm_dma_free");
    });
  }

  /** The VFIO device's descriptor (for a client of a served controller: its BAR0 mapping). Owned here. */
  get deviceFd(): number {
    this.#check();
    return this.#fds.device;
  }

  /**
   * Map `bytes` of another process's memory, the memfd `fd` (lib/share: a client's DMA memory),
   * for the device at a fresh IOVA range: the IOMMU pins its pages. release() unmaps it from the
   * IOMMU (the controller can no longer reach it) and from this process; it does not close `fd`.
   */
  mapForeign(fd: number, bytes: number): { iova: number; release(): void } {
    this.#check();
    const granule = this.#iova.granule;
    if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % granule !== 0 || bytes > 0xffff_f000) {
      throw new InvalidArgumentError(`foreign DMA memory of ${bytes} bytes: whole IOMMU pages of ${granule} bytes, at most 4 GiB - 4 KiB`);
    }
    const n = native();
    const path = `/proc/self/fd/${fd}`;
    const vaddr = n.nvm_map_file(cstr(path), 0, bytes, null);
    if (vaddr === null) throw new NativeError(`cannot map the client's memory (${path}): ${errnoName(n.nvm_last_error())}`, n.nvm_last_error(), "mmap", path);
    let iova: number;
    try {
      iova = this.#iova.alloc(bytes);
    } catch (e) {
      n.nvm_unmap(vaddr, bytes);
      throw e;
    }
    const rc = n.nvm_vfio_dma_map(this.#fds.container, vaddr, iova % TWO32, Math.floor(iova / TWO32), bytes, MAP_READ | MAP_WRITE);
    if (rc < 0) {
      this.#iova.free(iova);
      n.nvm_unmap(vaddr, bytes);
      throw new NativeError(`VFIO_IOMMU_MAP_DMA of a client's ${bytes} bytes at IOVA ${hex(iova)} failed: ${errnoName(-rc)}`, -rc, "VFIO_IOMMU_MAP_DMA", this.name);
    }
    let released = false;
    return {
      iova,
      release: () => {
        if (released || this.#closed) return;
        released = true;
        const u = n.nvm_vfio_dma_unmap(this.#fds.container, iova % TWO32, Math.floor(iova / TWO32), bytes);
        // Never reuse an IOVA the IOMMU may still map.
        if (u === 0) this.#iova.free(iova);
        n.nvm_unmap(vaddr, bytes);
      },
    };
  }

  setBusMaster(enabled: boolean): void {
    const now = this.configRead(PCI_COMMAND, 2);
    const want = enabled ? now | PCI_COMMAND_MASTER : now & ~PCI_COMMAND_MASTER;
    if (want !== now) this.configWrite(PCI_COMMAND, 2, want);
  }

  /** The IOMMU keeps the pages pinned and mapped until the container goes; we only forget them. */
  abandonDma(): void {
    this.#live.clear();
  }

  /**
   * Bus mastering off, unmap and free every DMA mapping (the IOMMU unmap is what makes freeing
   * safe even for a controller still enabled), restore COMMAND as found when CSTS.RDY says the
   * controller is disabled, unmap BAR0 and close the device, group and container (vfio-pci then
   * resets the function). Every step runs even when one fails. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    let first: unknown;
    const step = (f: () => void) => {
      try {
        f();
      } catch (e) {
        first ??= e;
      }
    };
    step(() => this.setBusMaster(false));
    const csts = native().nvm_read32(this.bar0, REG_CSTS);
    if (csts !== REG_ALL_ONES && (csts & CSTS_RDY) === 0) step(() => this.configWrite(PCI_COMMAND, 2, this.commandBefore));
    for (const a of [...this.#live]) step(() => this.freeDma(a));
    this.#closed = true;
    const n = native();
    step(() => check(n.nvm_unmap(this.bar0, this.bar0Size), "munmap BAR0"));
    step(() => check(n.nvm_vfio_close(this.#fds.container, this.#fds.group, this.#fds.device), "close VFIO fds", this.name));
    n.nvm_host_free(this.#out.ptr);
    if (first !== undefined) throw first;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** PIDs with `path` open (from /proc/<pid>/fd), for "held by" messages; best effort. */
function holdersOf(path: string): number[] {
  const pids: number[] = [];
  let procs: string[];
  try {
    procs = readdirSync("/proc").filter((p) => /^\d+$/.test(p));
  } catch {
    return pids;
  }
  for (const p of procs) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${p}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${p}/fd/${fd}`) === path) {
          pids.push(Number(p));
          break;
        }
      } catch {
        // Gone meanwhile.
      }
    }
  }
  return pids;
}
