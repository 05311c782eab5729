/**
 * What the NVMe/TCP guest tests share: the target test/hw-tcp/target.sh configured (its facts come
 * through the environment the suite's prelude exported), its configfs tree, and helpers.
 */
import { closeSync, openSync, readFileSync, readSync } from "node:fs";

function env(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through the guest harness (bun test/vm/hw.ts --suite tcp), whose prelude runs test/hw-tcp/target.sh`);
  return v;
}

export const SUB1 = env("LIBNVM_TCP_SUB1");
export const SUB2 = env("LIBNVM_TCP_SUB2");
/** A subsystem whose namespace (null_blk) completes every command 3 s late. */
export const SLOW = env("LIBNVM_TCP_SLOW");
export const ALLOWED_HOST = env("LIBNVM_TCP_ALLOWED_HOST");
export const NVMET = env("LIBNVM_TCP_NVMET");
/** Port 1: default inline data size (16 KiB). */
export const URI1 = `nvme+tcp://127.0.0.1:4420/${SUB1}`;
/** Port 2: inline data size 0: every write, and the I/O queues' Connect data, by R2T. */
export const URI2 = `nvme+tcp://127.0.0.1:4421/${SUB1}`;
export const DISCOVERY = "nvme+tcp://127.0.0.1:4420";

export function configfs(path: string): string {
  return readFileSync(`${NVMET}/${path}`, "utf8").trim();
}

/** xorshift32 bytes: a pattern a bit flip anywhere changes. */
export function fill(b: Uint8Array, seed: number): void {
  let x = seed >>> 0 || 1;
  for (let i = 0; i < b.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
}

/** Bytes of a backing file at `offset` (nvmet's file namespaces use buffered I/O: the page cache is the truth). */
export function backing(path: string, offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  const fd = openSync(path, "r");
  try {
    for (let done = 0; done < length; ) {
      const n = readSync(fd, out, done, length - done, offset + done);
      if (n <= 0) throw new Error(`${path}: ${done} of ${length} bytes at ${offset}`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

export async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = performance.now() + ms;
  while (!(await cond())) {
    if (performance.now() > end) throw new Error(`${what} did not happen within ${ms} ms`);
    await Bun.sleep(20);
  }
}

export function sh(cmd: string[], timeoutMs = 60_000): { code: number; out: string; err: string } {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe", timeout: timeoutMs });
  return { code: r.exitCode ?? -1, out: r.stdout.toString(), err: r.stderr.toString() };
}
