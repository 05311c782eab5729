import { afterAll, describe, expect, test } from "bun:test";
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NativeError } from "../../lib/errors.ts";
import { check, checkPtr, cstr, errnoName, native, scratch } from "../../lib/native.ts";

const n = native();
const dir = mkdtempSync(join(tmpdir(), "libnvm-native-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Zeroed C memory of `size` bytes with a dword view; freed by the returned function. */
function host(size: number): { p: Pointer; u32: Uint32Array; free: () => void } {
  const p = n.nvm_host_alloc(size);
  if (p === null) throw new Error("nvm_host_alloc failed");
  return { p, u32: new Uint32Array(toArrayBuffer(p, 0, size)), free: () => n.nvm_host_free(p) };
}

describe("library", () => {
  test("ABI version 7 (dma-buf import 3, the queue core's host mode nvm_q_* 4, TCP sockets and CRC-32C 5, Unix sockets with SO_PEERCRED 6, disnvm BAR descriptors 7)", () => {
    expect(n.nvm_abi_version()).toBe(7);
  });
});

describe("register access on host memory", () => {
  test("nvm_read32 / nvm_write32 at byte offsets", () => {
    const h = host(64);
    try {
      n.nvm_write32(h.p, 8, 0xdeadbeef);
      expect(h.u32[2]).toBe(0xdeadbeef);
      expect(h.u32[1]).toBe(0);
      expect(h.u32[3]).toBe(0);
      h.u32[5] = 0x80000001;
      expect(n.nvm_read32(h.p, 20)).toBe(0x80000001); // unsigned, not negative
    } finally {
      h.free();
    }
  });

  test("nvm_write64 stores the low dword at the offset and the high dword after it", () => {
    const h = host(64);
    try {
      n.nvm_write64(h.p, 0x28, 0x12345000, 0x00000001);
      expect(h.u32[0x28 / 4]).toBe(0x12345000);
      expect(h.u32[0x2c / 4]).toBe(0x00000001);
      expect(h.u32[0x24 / 4]).toBe(0);
      expect(h.u32[0x30 / 4]).toBe(0);
    } finally {
      h.free();
    }
  });

  test("nvm_doorbell is a 32-bit store", () => {
    const h = host(16);
    try {
      h.u32.fill(0xffffffff);
      n.nvm_doorbell(h.p, 4, 7);
      expect(Array.from(h.u32)).toEqual([0xffffffff, 7, 0xffffffff, 0xffffffff]);
      n.nvm_fence_release();
    } finally {
      h.free();
    }
  });
});

describe("nvm_map_file", () => {
  test("a regular file, size 0 = whole file: the mapping shows the bytes and writes go back", () => {
    const path = join(dir, "regs.bin");
    const content = Buffer.alloc(8192);
    content.writeUInt32LE(0x11223344, 0);
    content.writeUInt32LE(0xa5a5a5a5, 4096);
    writeFileSync(path, content);
    const sizeOut = host(8);
    try {
      const p = n.nvm_map_file(cstr(path), 0, 0, sizeOut.p);
      expect(p).not.toBeNull();
      expect(n.nvm_last_error()).toBe(0);
      expect(sizeOut.u32[0]).toBe(8192);
      expect(n.nvm_read32(p!, 0)).toBe(0x11223344);
      expect(n.nvm_read32(p!, 4096)).toBe(0xa5a5a5a5);
      n.nvm_write32(p!, 8, 0xcafef00d);
      expect(n.nvm_unmap(p!, 8192)).toBe(0);
      expect(readFileSync(path).readUInt32LE(8)).toBe(0xcafef00d);
    } finally {
      sizeOut.free();
    }
  });

  test("an offset and explicit size map part of the file; a NULL size_out is allowed", () => {
    const path = join(dir, "two-pages.bin");
    const content = Buffer.alloc(8192);
    content.writeUInt32LE(0x5a5a0001, 4096);
    writeFileSync(path, content);
    const p = n.nvm_map_file(cstr(path), 4096, 4096, null);
    expect(p).not.toBeNull();
    expect(n.nvm_read32(p!, 0)).toBe(0x5a5a0001);
    expect(n.nvm_unmap(p!, 4096)).toBe(0);
    // size 0 with an offset maps the rest of the file.
    const sizeOut = host(8);
    try {
      const q = n.nvm_map_file(cstr(path), 4096, 0, sizeOut.p);
      expect(q).not.toBeNull();
      expect(sizeOut.u32[0]).toBe(4096);
      expect(n.nvm_read32(q!, 0)).toBe(0x5a5a0001);
      expect(n.nvm_unmap(q!, 4096)).toBe(0);
    } finally {
      sizeOut.free();
    }
  });

  test("a missing path: NULL and ENOENT", () => {
    expect(n.nvm_map_file(cstr(join(dir, "nope")), 0, 0, null)).toBeNull();
    expect(n.nvm_last_error()).toBe(2);
  });

  test("/dev/null does not crash: NULL with an errno, whole-file or sized", () => {
    expect(n.nvm_map_file(cstr("/dev/null"), 0, 0, null)).toBeNull();
    expect(n.nvm_last_error()).toBe(22); // EINVAL: nothing to map
    const p = n.nvm_map_file(cstr("/dev/null"), 0, 4096, null);
    if (p !== null) n.nvm_unmap(p, 4096);
    expect(p).toBeNull();
    expect(n.nvm_last_error()).toBeGreaterThan(0);
  });

  test("an empty file or an offset at the end is EINVAL, not a zero-length mapping", () => {
    const empty = join(dir, "empty.bin");
    writeFileSync(empty, "");
    expect(n.nvm_map_file(cstr(empty), 0, 0, null)).toBeNull();
    expect(n.nvm_last_error()).toBe(22);
    const small = join(dir, "small.bin");
    writeFileSync(small, Buffer.alloc(4096));
    expect(n.nvm_map_file(cstr(small), 4096, 0, null)).toBeNull();
    expect(n.nvm_last_error()).toBe(22);
  });

  test("a successful call clears the previous error", () => {
    expect(n.nvm_map_file(cstr(join(dir, "nope")), 0, 0, null)).toBeNull();
    expect(n.nvm_last_error()).toBe(2);
    const h = n.nvm_host_alloc(8);
    expect(n.nvm_last_error()).toBe(0);
    n.nvm_host_free(h!);
  });
});

describe("config space access", () => {
  test("width 3 is -EINVAL", () => {
    const out = host(8);
    try {
      expect(n.nvm_config_read(cstr("/dev/null"), 0, 3, out.p)).toBe(-22);
      expect(n.nvm_last_error()).toBe(22);
      expect(n.nvm_config_write(cstr("/dev/null"), 0, 3, 0)).toBe(-22);
      expect(n.nvm_config_read(cstr("/dev/null"), 0, 0, out.p)).toBe(-22);
      expect(n.nvm_config_read(cstr("/dev/null"), 0, 8, out.p)).toBe(-22);
    } finally {
      out.free();
    }
  });

  test("reads exactly width bytes, zero-extended; a short read is -EIO; a missing file -ENOENT", () => {
    const path = join(dir, "config");
    writeFileSync(path, Buffer.from([0x86, 0x80, 0x53, 0x09, 0x07, 0x04]));
    const out = host(8);
    try {
      out.u32[0] = 0xffffffff;
      expect(n.nvm_config_read(cstr(path), 0, 1, out.p)).toBe(0);
      expect(out.u32[0]).toBe(0x86);
      expect(n.nvm_config_read(cstr(path), 0, 2, out.p)).toBe(0);
      expect(out.u32[0]).toBe(0x8086);
      expect(n.nvm_config_read(cstr(path), 0, 4, out.p)).toBe(0);
      expect(out.u32[0]).toBe(0x09538086);
      expect(n.nvm_config_read(cstr(path), 4, 4, out.p)).toBe(-5);
      expect(n.nvm_config_read(cstr(join(dir, "absent")), 0, 4, out.p)).toBe(-2);
    } finally {
      out.free();
    }
  });
});

describe("DMA memory", () => {
  test("page aligned, zeroed, rounded up; size 0 is EINVAL", () => {
    const p = n.nvm_dma_alloc(100, 0);
    expect(p).not.toBeNull();
    expect(Number(p) % 4096).toBe(0);
    const u32 = new Uint32Array(toArrayBuffer(p!, 0, 4096));
    expect(u32.every((v) => v === 0)).toBe(true);
    u32[1023] = 1; // the whole rounded page is usable
    expect(n.nvm_dma_free(p!, 100, 0)).toBe(0);
    expect(n.nvm_dma_alloc(0, 0)).toBeNull();
    expect(n.nvm_last_error()).toBe(22);
  });

  test("NVM_DMA_NOLOCK: the memory is not mlocked (nothing in VmLck, no VM_LOCKED); without it, it is", () => {
    // VmLck of /proc/self/status (kB) and whether the vma at `p` carries VM_LOCKED ("lo" in smaps).
    const vmLck = () => Number(/^VmLck:\s+(\d+) kB$/m.exec(readFileSync("/proc/self/status", "utf8"))![1]);
    const lockedFlag = (p: Pointer) => {
      const start = Number(p).toString(16);
      const smaps = readFileSync("/proc/self/smaps", "utf8");
      const at = smaps.search(new RegExp(`^0*${start}-`, "m"));
      expect(at).toBeGreaterThanOrEqual(0);
      const flags = /^VmFlags:(.*)$/m.exec(smaps.slice(at))![1]!;
      return flags.split(" ").includes("lo");
    };
    const size = 16 * 4096;
    const before = vmLck();
    const plain = n.nvm_dma_alloc(size, 2 /* NVM_DMA_NOLOCK */)!;
    expect(plain).not.toBeNull();
    try {
      expect(vmLck()).toBe(before);
      expect(lockedFlag(plain)).toBe(false);
      new Uint8Array(toArrayBuffer(plain, 0, size)).fill(7); // usable all the same
    } finally {
      expect(n.nvm_dma_free(plain, size, 2)).toBe(0);
    }
    const locked = n.nvm_dma_alloc(size, 0)!;
    expect(locked).not.toBeNull();
    try {
      expect(vmLck()).toBe(before + size / 1024);
      expect(lockedFlag(locked)).toBe(true);
    } finally {
      expect(n.nvm_dma_free(locked, size, 0)).toBe(0);
    }
    expect(vmLck()).toBe(before);
  });

  test("nvm_memlock_limit reports RLIMIT_MEMLOCK as (lo, hi)", () => {
    const out = host(8);
    try {
      expect(n.nvm_memlock_limit(out.p)).toBe(0);
      const line = /^Max locked memory\s+(\S+)/m.exec(readFileSync("/proc/self/limits", "utf8"))![1]!;
      const v = out.u32[0]! + out.u32[1]! * 0x1_0000_0000;
      if (line === "unlimited") expect([out.u32[0], out.u32[1]]).toEqual([0xffffffff, 0xffffffff]);
      else expect(v).toBe(Number(line));
    } finally {
      out.free();
    }
  });
});

describe("TypeScript helpers", () => {
  test("check passes non-negative values and throws NativeError with the errno name", () => {
    expect(check(0, "x")).toBe(0);
    expect(check(5, "x")).toBe(5);
    let err: unknown;
    try {
      check(-13, "open", "/dev/x");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NativeError);
    expect((err as NativeError).errno).toBe(13);
    expect((err as NativeError).call).toBe("open");
    expect((err as NativeError).path).toBe("/dev/x");
    expect((err as Error).message).toBe("open /dev/x failed: EACCES");
  });

  test("checkPtr turns NULL into NativeError with nvm_last_error()", () => {
    expect(n.nvm_map_file(cstr(join(dir, "nope")), 0, 0, null)).toBeNull();
    expect(() => checkPtr(null, "mmap", "nope")).toThrow("mmap nope failed: ENOENT");
  });

  test("errnoName and cstr", () => {
    expect(errnoName(2)).toBe("ENOENT");
    expect(errnoName(22)).toBe("EINVAL");
    expect(errnoName(111)).toBe("ECONNREFUSED");
    expect(errnoName(200)).toBe("errno 200");
    const s = cstr("ab");
    expect([...s]).toEqual([0x61, 0x62, 0]);
  });

  test("scratch() is one C-owned area, reused", () => {
    const a = scratch();
    expect(a).toBe(scratch());
    expect(a.u32.length).toBe(16);
    a.u32[0] = 0x1234;
    expect(n.nvm_read32(a.ptr, 0)).toBe(0x1234);
  });
});
