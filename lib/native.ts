/**
 * The only dlopen in libnvm. Mirrors c/include/nvm_native.h one to one and turns NULL and
 * negative errno returns into NativeError; every other module goes through `native()`.
 *
 * The library is found, in order, at $LIBNVM_NATIVE, c/build/ of this package, or
 * prebuilds/linux-x64/ (shipped in the npm tarball). When none exists and the sources are
 * present, it is built with CMake once, so `bun add libnvm` works with lifecycle scripts blocked.
 */
import { dlopen, FFIType, toArrayBuffer, type Pointer } from "bun:ffi";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { NativeError } from "./errors.ts";

const ABI_VERSION = 7;
const LIB_FILE = "libnvm-native.so";
const PKG_ROOT = join(import.meta.dir, "..");

const { ptr: P, u32, i32, void: VOID } = FFIType;

const symbols = {
  nvm_abi_version: { args: [], returns: u32 },
  nvm_last_error: { args: [], returns: i32 },
  // mappings
  nvm_map_file: { args: [P, u32, u32, P], returns: P },
  nvm_unmap: { args: [P, u32], returns: i32 },
  // registers: hot, so u32 arguments and u32/void returns only
  nvm_read32: { args: [P, u32], returns: u32 },
  nvm_write32: { args: [P, u32, u32], returns: VOID },
  nvm_write64: { args: [P, u32, u32, u32], returns: VOID },
  nvm_doorbell: { args: [P, u32, u32], returns: VOID },
  nvm_fence_release: { args: [], returns: VOID },
  // DMA memory
  nvm_dma_alloc: { args: [u32, u32], returns: P },
  nvm_dma_alloc_fd: { args: [u32, u32, P], returns: P },
  nvm_dma_free: { args: [P, u32, u32], returns: i32 },
  nvm_phys_addrs: { args: [P, u32, P], returns: i32 },
  nvm_host_alloc: { args: [u32], returns: P },
  nvm_host_free: { args: [P], returns: VOID },
  // PCI configuration space
  nvm_config_read: { args: [P, u32, u32, P], returns: i32 },
  nvm_config_write: { args: [P, u32, u32, u32], returns: i32 },
  nvm_memlock_limit: { args: [P], returns: i32 },
  // single owner (advisory lock)
  nvm_lock_acquire: { args: [P, P], returns: i32 },
  nvm_lock_release: { args: [i32], returns: i32 },
  // VFIO (type1 IOMMU): fds as i32, 64-bit offsets and IOVAs as two u32 halves
  nvm_vfio_open: { args: [P, P, P], returns: i32 },
  nvm_vfio_close: { args: [i32, i32, i32], returns: i32 },
  nvm_vfio_iommu_info: { args: [i32, P, u32], returns: i32 },
  nvm_vfio_region_info: { args: [i32, u32, P], returns: i32 },
  nvm_vfio_map_region: { args: [i32, u32, u32, u32], returns: P },
  nvm_vfio_region_read: { args: [i32, u32, u32, u32, P], returns: i32 },
  nvm_vfio_region_write: { args: [i32, u32, u32, u32, u32], returns: i32 },
  nvm_vfio_dma_map: { args: [i32, P, u32, u32, u32, u32], returns: i32 },
  nvm_vfio_dma_unmap: { args: [i32, u32, u32, u32], returns: i32 },
  nvm_vfio_device_reset: { args: [i32], returns: i32 },
  // disnvm kernel module (/dev/disnvmN): fds as i32, bus addresses into C-owned (lo, hi) arrays
  nvm_disnvm_open: { args: [P], returns: i32 },
  nvm_disnvm_close: { args: [i32], returns: i32 },
  nvm_disnvm_map_bar: { args: [i32, u32], returns: P },
  nvm_disnvm_info: { args: [i32, P], returns: i32 },
  nvm_disnvm_map_host: { args: [i32, P, u32, P], returns: i32 },
  nvm_disnvm_map_device: { args: [i32, u32, u32, u32, P], returns: i32 },
  nvm_disnvm_unmap: { args: [i32, P], returns: i32 },
  nvm_disnvm_bus_master: { args: [i32, u32], returns: i32 },
  nvm_disnvm_map_dmabuf: { args: [i32, i32, u32, u32, u32, P, P], returns: i32 },
  nvm_disnvm_unmap_dmabuf: { args: [i32, u32, u32], returns: i32 },
  nvm_disnvm_dmabuf_status: { args: [i32, u32, u32, P], returns: i32 },
  nvm_disnvm_revoke_dmabuf: { args: [i32, u32, u32], returns: i32 },
  nvm_disnvm_bar_fd: { args: [i32], returns: i32 },
  nvm_disnvm_map_bar_fd: { args: [i32, u32], returns: P },
  // TCP sockets and CRC-32C (NVMe/TCP): fds as i32, buffers as pointers, hot calls u32/i32 only
  nvm_tcp_connect: { args: [P, u32, u32], returns: i32 },
  nvm_tcp_sendv: { args: [i32, P, u32, u32], returns: i32 },
  nvm_tcp_recv3: { args: [i32, P, u32, P, u32, P, u32, u32], returns: i32 },
  nvm_tcp_shutdown: { args: [i32], returns: i32 },
  nvm_tcp_close: { args: [i32], returns: i32 },
  nvm_tcp_peer: { args: [i32, P], returns: i32 },
  // Unix sockets (sharing a controller: lib/share/): fds as i32
  nvm_unix_connect: { args: [P, u32], returns: i32 },
  nvm_unix_listen: { args: [P, u32, u32], returns: i32 },
  nvm_unix_accept: { args: [i32, P], returns: i32 },
  nvm_unix_peercred: { args: [i32, P], returns: i32 },
  nvm_unix_send: { args: [i32, P, u32, u32], returns: i32 },
  nvm_unix_recv: { args: [i32, P, u32, u32], returns: i32 },
  nvm_unix_send_fd: { args: [i32, P, u32, i32, u32], returns: i32 },
  nvm_unix_recv_fds: { args: [i32, P, u32, P, u32, u32], returns: i32 },
  nvm_unix_close: { args: [i32], returns: i32 },
  nvm_crc32c: { args: [P, u32, u32], returns: u32 },
  nvm_crc32c_impl: { args: [], returns: u32 },
  nvm_crc32c_sw: { args: [P, u32, u32], returns: u32 },
  // queue core, host mode (c/src/queue.c): state blocks, jobs, executor threads
  nvm_q_state_bytes: { args: [u32], returns: u32 },
  nvm_q_init: { args: [P, P], returns: i32 },
  nvm_q_work_bytes: { args: [P], returns: u32 },
  nvm_q_sizes: { args: [P], returns: i32 },
  nvm_q_start: { args: [P], returns: P },
  nvm_q_done: { args: [P], returns: u32 },
  nvm_q_join: { args: [P, u32], returns: i32 },
} as const;

/** c/include/nvm_native.h as TypeScript sees it. */
export interface NativeLib {
  nvm_abi_version(): number;
  nvm_last_error(): number;
  nvm_map_file(path: Buffer, offset: number, size: number, sizeOut: Pointer | null): Pointer | null;
  nvm_unmap(addr: Pointer, size: number): number;
  nvm_read32(base: Pointer, offset: number): number;
  nvm_write32(base: Pointer, offset: number, value: number): void;
  nvm_write64(base: Pointer, offset: number, lo: number, hi: number): void;
  nvm_doorbell(base: Pointer, offset: number, value: number): void;
  nvm_fence_release(): void;
  nvm_dma_alloc(size: number, flags: number): Pointer | null;
  nvm_dma_alloc_fd(size: number, flags: number, fdOut: Pointer): Pointer | null;
  nvm_dma_free(addr: Pointer, size: number, flags: number): number;
  nvm_phys_addrs(addr: Pointer, npages: number, out: Pointer): number;
  nvm_host_alloc(size: number): Pointer | null;
  nvm_host_free(p: Pointer): void;
  nvm_config_read(path: Buffer, offset: number, width: number, value: Pointer): number;
  nvm_config_write(path: Buffer, offset: number, width: number, value: number): number;
  nvm_memlock_limit(out: Pointer): number;
  nvm_lock_acquire(path: Buffer, out: Pointer): number;
  nvm_lock_release(fd: number): number;
  // VFIO (type1 IOMMU)
  nvm_vfio_open(groupPath: Buffer, bdf: Buffer, out: Pointer): number;
  nvm_vfio_close(container: number, group: number, device: number): number;
  nvm_vfio_iommu_info(container: number, out: Pointer, maxRanges: number): number;
  nvm_vfio_region_info(device: number, index: number, out: Pointer): number;
  nvm_vfio_map_region(device: number, offsetLo: number, offsetHi: number, size: number): Pointer | null;
  nvm_vfio_region_read(device: number, offsetLo: number, offsetHi: number, width: number, value: Pointer): number;
  nvm_vfio_region_write(device: number, offsetLo: number, offsetHi: number, width: number, value: number): number;
  nvm_vfio_dma_map(container: number, vaddr: Pointer, iovaLo: number, iovaHi: number, size: number, flags: number): number;
  nvm_vfio_dma_unmap(container: number, iovaLo: number, iovaHi: number, size: number): number;
  nvm_vfio_device_reset(device: number): number;
  // disnvm kernel module
  nvm_disnvm_open(path: Buffer): number;
  nvm_disnvm_close(fd: number): number;
  nvm_disnvm_map_bar(fd: number, size: number): Pointer | null;
  nvm_disnvm_info(fd: number, out: Pointer): number;
  nvm_disnvm_map_host(fd: number, vaddr: Pointer, size: number, addrs: Pointer): number;
  nvm_disnvm_map_device(fd: number, vaddrLo: number, vaddrHi: number, size: number, addrs: Pointer): number;
  nvm_disnvm_unmap(fd: number, vaddr: Pointer): number;
  nvm_disnvm_bus_master(fd: number, enable: number): number;
  nvm_disnvm_map_dmabuf(fd: number, dmabufFd: number, offsetLo: number, offsetHi: number, size: number, addrs: Pointer, out: Pointer): number;
  nvm_disnvm_unmap_dmabuf(fd: number, handleLo: number, handleHi: number): number;
  nvm_disnvm_dmabuf_status(fd: number, handleLo: number, handleHi: number, flags: Pointer): number;
  nvm_disnvm_revoke_dmabuf(fd: number, handleLo: number, handleHi: number): number;
  nvm_disnvm_bar_fd(fd: number): number;
  nvm_disnvm_map_bar_fd(barFd: number, size: number): Pointer | null;
  // TCP (NVMe/TCP transport)
  nvm_tcp_connect(host: Buffer, port: number, timeoutMs: number): number;
  nvm_tcp_sendv(fd: number, iov: Pointer, count: number, timeoutMs: number): number;
  nvm_tcp_recv3(fd: number, p1: Pointer | number, n1: number, p2: Pointer | number, n2: number, p3: Pointer | number, n3: number, timeoutUs: number): number;
  nvm_tcp_shutdown(fd: number): number;
  nvm_tcp_close(fd: number): number;
  nvm_tcp_peer(fd: number, out: Pointer): number;
  // Unix sockets (sharing a controller)
  nvm_unix_connect(path: Buffer, timeoutMs: number): number;
  nvm_unix_listen(path: Buffer, mode: number, backlog: number): number;
  nvm_unix_accept(fd: number, cred: Pointer): number;
  nvm_unix_peercred(fd: number, cred: Pointer): number;
  nvm_unix_send(fd: number, buf: Pointer | number, len: number, timeoutMs: number): number;
  nvm_unix_recv(fd: number, buf: Pointer | number, len: number, timeoutUs: number): number;
  nvm_unix_send_fd(fd: number, buf: Pointer | number, len: number, passfd: number, timeoutMs: number): number;
  nvm_unix_recv_fds(fd: number, buf: Pointer | number, len: number, fds: Pointer, maxFds: number, timeoutUs: number): number;
  nvm_unix_close(fd: number): number;
  nvm_crc32c(data: Pointer | number, len: number, prev: number): number;
  nvm_crc32c_impl(): number;
  nvm_crc32c_sw(data: Pointer | number, len: number, prev: number): number;
  // queue core, host mode
  nvm_q_state_bytes(entries: number): number;
  nvm_q_init(state: Pointer, desc: Pointer): number;
  nvm_q_work_bytes(job: Pointer): number;
  nvm_q_sizes(out: Pointer): number;
  nvm_q_start(job: Pointer): Pointer | null;
  nvm_q_done(run: Pointer): number;
  nvm_q_join(run: Pointer, timeoutMs: number): number;
}
type Lib = NativeLib;

let libPathOverride: string | undefined;
let lib: Lib | undefined;

/** Use this .so instead of the one found by the search (tests, custom builds). Call before first use. */
export function setNativeLibraryPath(path: string): void {
  if (lib) throw new Error("setNativeLibraryPath() must be called before the native library is loaded");
  libPathOverride = path;
}

function findLibrary(): string {
  const explicit = libPathOverride ?? process.env.LIBNVM_NATIVE;
  if (explicit) {
    if (!existsSync(explicit)) throw new NativeError(`LIBNVM_NATIVE=${explicit} does not exist`, 2, "dlopen", explicit);
    return explicit;
  }
  const candidates = [join(PKG_ROOT, "c", "build", LIB_FILE), join(PKG_ROOT, "prebuilds", `linux-${process.arch}`, LIB_FILE)];
  for (const c of candidates) if (existsSync(c)) return c;
  if (existsSync(join(PKG_ROOT, "c", "CMakeLists.txt"))) return buildLibrary();
  throw new NativeError(
    `libnvm's native library was not found (looked in ${candidates.join(", ")}); reinstall the package or set LIBNVM_NATIVE`,
    2,
    "dlopen",
  );
}

function buildLibrary(): string {
  const build = join(PKG_ROOT, "c", "build");
  for (const cmd of [
    ["cmake", "-S", join(PKG_ROOT, "c"), "-B", build, "-DCMAKE_BUILD_TYPE=Release"],
    ["cmake", "--build", build],
  ]) {
    let r: ReturnType<typeof Bun.spawnSync>;
    try {
      r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
    } catch {
      throw new NativeError(`building libnvm's native library needs cmake and gcc: apt-get install -y cmake gcc`, 2, "cmake");
    }
    if (r.exitCode !== 0) {
      throw new NativeError(
        `building libnvm's native library failed (${cmd.join(" ")}): ${String(r.stderr ?? "").trim().split("\n").slice(-3).join(" ")}`,
        5,
        "cmake",
      );
    }
  }
  return join(build, LIB_FILE);
}

/** The loaded symbols; loads (and if needed builds) the library on first use. */
export function native(): Lib {
  if (lib) return lib;
  const path = findLibrary();
  const loaded = dlopen(path, symbols).symbols as unknown as Lib;
  const abi = loaded.nvm_abi_version();
  if (abi !== ABI_VERSION) {
    throw new NativeError(`${path} has ABI ${abi}, this libnvm needs ${ABI_VERSION}: rebuild it (bun run build)`, 22, "dlopen", path);
  }
  lib = process.env.LIBNVM_TRACE_FFI ? traced(loaded) : loaded;
  return lib;
}

/** `l` with every function logging its call and result to stderr (LIBNVM_TRACE_FFI=1). */
export function traced<T extends object>(l: T): T {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(l)) {
    out[name] = (...args: unknown[]) => {
      const r = (fn as (...a: unknown[]) => unknown)(...args);
      process.stderr.write(`[ffi] ${name}(${args.map(String).join(", ")}) = ${String(r)}\n`);
      return r;
    };
  }
  return out as unknown as T;
}

const errnoNames: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  5: "EIO",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  19: "ENODEV",
  22: "EINVAL",
  25: "ENOTTY",
  11: "EAGAIN",
  32: "EPIPE",
  36: "ENAMETOOLONG",
  98: "EADDRINUSE",
  99: "EADDRNOTAVAIL",
  101: "ENETUNREACH",
  103: "ECONNABORTED",
  104: "ECONNRESET",
  107: "ENOTCONN",
  110: "ETIMEDOUT",
  111: "ECONNREFUSED",
  113: "EHOSTUNREACH",
};

export function errnoName(errno: number): string {
  return errnoNames[errno] ?? `errno ${errno}`;
}

/** A NUL-terminated copy of a string for a `const char *` argument. */
export function cstr(s: string): Buffer {
  return Buffer.from(s + "\0", "utf8");
}

/** Throw NativeError for a negative return; pass everything else through. */
export function check(ret: number, call: string, path?: string): number {
  if (ret < 0) {
    const errno = -ret;
    throw new NativeError(`${call}${path ? ` ${path}` : ""} failed: ${errnoName(errno)}`, errno, call, path);
  }
  return ret;
}

/** Throw NativeError for a NULL pointer return, with the errno C recorded. */
export function checkPtr(p: Pointer | null, call: string, path?: string): Pointer {
  if (p === null || (p as unknown as number) === 0) {
    const errno = native().nvm_last_error();
    throw new NativeError(`${call}${path ? ` ${path}` : ""} failed: ${errnoName(errno)}`, errno, call, path);
  }
  return p;
}

/**
 * A small C-owned scratch area for out-parameters. JS-allocated typed arrays must never be
 * handed to C to write into (their ptr() can go stale, bun#32054).
 */
let scratchArea: { ptr: Pointer; u32: Uint32Array } | undefined;
export function scratch(): { ptr: Pointer; u32: Uint32Array } {
  if (!scratchArea) {
    const p = checkPtr(native().nvm_host_alloc(64), "nvm_host_alloc");
    scratchArea = { ptr: p, u32: new Uint32Array(toArrayBuffer(p, 0, 64)) };
  }
  return scratchArea;
}
