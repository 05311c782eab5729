/**
 * Raw sysfs backend: BAR0 through /sys/bus/pci/devices/<bdf>/resource0, bus mastering through
 * config space, and DMA to physical addresses read from /proc/self/pagemap. Needs root and the
 * IOMMU off or in passthrough (iommu=pt); the device must not be bound to a kernel driver.
 * Every byte of DMA memory lies in 2 MiB hugetlb pages, which the kernel does not move (see
 * hugepages.ts); the pool of them is raised on demand and given back on close (hugepage-reserve.ts).
 */
import type { Pointer } from "bun:ffi";
import { toArrayBuffer } from "bun:ffi";
import { join } from "node:path";
import { DeviceError, NativeError, PermissionError } from "../errors.ts";
import { checkPtr, cstr, native } from "../native.ts";
import { configRead, configWrite, enableBusMaster, findPciDevice, hasCapSysAdmin, parseBdf, PCI_COMMAND, PCI_COMMAND_MASTER, type PciDevice } from "../pci.ts";
import { BAR0_MIN_SIZE, CSTS_RDY, REG_ALL_ONES, REG_CSTS } from "../spec/registers.ts";
import { freeLive } from "./dma-common.ts";
import { dmaBufUnsupported } from "./dmabuf.ts";
import { HugepagePool } from "./hugepages.ts";
import { HugetlbProvider, type MemoryHolder } from "./hugetlb.ts";
import { HugepageReservation } from "./hugepage-reserve.ts";
import type { Backend, DmaMapping, DmaOptions } from "./types.ts";

export class SysfsBackend implements Backend {
  readonly kind = "sysfs" as const;
  readonly name: string;
  readonly device: PciDevice;
  readonly bar0: Pointer;
  readonly bar0Size: number;
  readonly #commandBefore: number;
  readonly #live = new Set<DmaMapping>();
  readonly #pool: HugepagePool;
  #closed = false;

  /**
   * Open the controller at `bdf`; throws DeviceError/PermissionError with the command that fixes it.
   * With `holder` (a client of a served controller, lib/share) every hugepage mapping is a memfd
   * the holder keeps alive until this process's queues are gone.
   */
  constructor(bdf: string, opts: { readonly holder?: MemoryHolder } = {}) {
    this.name = parseBdf(bdf);
    this.device = findPciDevice(this.name);
    if (this.device.driver) {
      const hint =
        this.device.driver === "vfio-pci" || this.device.driver === "disnvm"
          ? `open it with backend "${this.device.driver === "vfio-pci" ? "vfio" : "disnvm"}" (or "auto"), or unbind it: echo ${this.name} > /sys/bus/pci/drivers/${this.device.driver}/unbind`
          : `unbind it first: echo ${this.name} > /sys/bus/pci/devices/${this.name}/driver/unbind`;
      throw new DeviceError(`${this.name} is bound to the kernel driver ${this.device.driver}; ${hint}`);
    }
    if (!hasCapSysAdmin()) {
      throw new PermissionError(
        `raw sysfs access to ${this.name} needs root (CAP_SYS_ADMIN): without it /proc/self/pagemap hides physical addresses; run with sudo`,
      );
    }
    const resource = join(this.device.path, "resource0");
    const n = native();
    const sizeOut = n.nvm_host_alloc(8);
    try {
      const p = n.nvm_map_file(cstr(resource), 0, 0, sizeOut);
      if (p === null) {
        const errno = n.nvm_last_error();
        if (errno === 1 || errno === 13) throw new PermissionError(`cannot map ${resource}: permission denied; run as root`);
        throw new NativeError(`cannot map ${resource}: errno ${errno}`, errno, "mmap", resource);
      }
      this.bar0 = p;
      this.bar0Size = new Uint32Array(toArrayBuffer(checkPtr(sizeOut, "nvm_host_alloc"), 0, 8))[0]!;
    } finally {
      if (sizeOut) n.nvm_host_free(sizeOut);
    }
    if (this.bar0Size < BAR0_MIN_SIZE) {
      n.nvm_unmap(this.bar0, this.bar0Size);
      throw new DeviceError(`${this.name}: BAR0 is ${this.bar0Size} bytes, too small for NVMe registers (${BAR0_MIN_SIZE})`);
    }
    this.#commandBefore = enableBusMaster(this.device);
    this.#pool = new HugepagePool(new HugetlbProvider(new HugepageReservation(), opts.holder));
  }

  /** Hugepages this backend has mapped now (each holds up to 512 runs of 4 KiB pages). */
  get hugepages(): number {
    return this.#pool.hugepages;
  }

  allocDma(size: number, opts: DmaOptions = {}): DmaMapping {
    if (this.#closed) throw new DeviceError(`${this.name} is closed`);
    const a = this.#pool.alloc(size, opts.contiguous === true);
    this.#live.add(a);
    return a;
  }

  /** Physical addresses of this process's own pages are all sysfs has: UnsupportedError naming the disnvm module. */
  importDmaBuf(_fd: number, _offset: number, _size?: number): DmaMapping {
    throw dmaBufUnsupported("sysfs");
  }

  freeDma(mapping: DmaMapping): void {
    freeLive(this.#live, mapping, (a) => this.#pool.free(a));
  }

  setBusMaster(enabled: boolean): void {
    const now = configRead(this.device, PCI_COMMAND, 2);
    const want = enabled ? now | PCI_COMMAND_MASTER : now & ~PCI_COMMAND_MASTER;
    if (want !== now) configWrite(this.device, PCI_COMMAND, 2, want);
  }

  abandonDma(): void {
    this.#live.clear();
  }

  /**
   * Free every mapping not yet freed, unmap BAR0, and restore the COMMAND register as found, but
   * only when CSTS.RDY says the controller is disabled: bus mastering that was cleared to stop a
   * controller that could not be disabled (Controller.close(), reset()) stays cleared. Stopping
   * the controller's DMA before its memory goes back is the Controller's part.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const a of [...this.#live]) this.freeDma(a);
    const csts = native().nvm_read32(this.bar0, REG_CSTS);
    // After the frees: the reservation goes back only as far as no page is still mapped.
    this.#pool.close();
    native().nvm_unmap(this.bar0, this.bar0Size);
    if (csts !== REG_ALL_ONES && (csts & CSTS_RDY) === 0) {
      try {
        configWrite(this.device, PCI_COMMAND, 2, this.#commandBefore);
      } catch {
        // The device may have gone away; nothing more to release.
      }
    }
  }
}
