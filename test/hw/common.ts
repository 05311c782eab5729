/**
 * What every hardware test needs: the controller's address and what QEMU was started with.
 * Outside the guest (or without LIBNVM_TEST_CTRL) the tests FAIL with the way to run them:
 * a hardware test that silently skips is a defect.
 */
import { setDefaultTimeout } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Controller, type ControllerOptions } from "../../lib/index.ts";

// TCG emulation is slow: an admin command takes ~0.1-0.3 ms and a bun start ~1 s.
setDefaultTimeout(120_000);

export interface ExpectedNamespace {
  nsid: number;
  sizeBytes: number;
  lbaSize: number;
}

export interface Expected {
  serial: string;
  mdts?: number;
  maxIoQpairs?: number;
  namespaces: ExpectedNamespace[];
}

export const REPO = join(import.meta.dir, "..", "..");

export function ctrlAddress(): string {
  const c = process.env.LIBNVM_TEST_CTRL;
  if (!c) {
    throw new Error(
      "hardware tests need a controller: run `bun run test` (boots the QEMU guest), or set LIBNVM_TEST_CTRL=<BDF> " +
        "(and LIBNVM_TEST_EXPECT) to run them on a real, unbound controller whose data may be lost",
    );
  }
  return c;
}

/**
 * The backend a suite runs through (LIBNVM_TEST_BACKEND, set by test/vm/hw.ts after it bound the
 * controller to that driver), checked against what Controller.open picked so a suite can never
 * pass through the wrong backend. Undefined: whatever auto picks (raw sysfs on an unbound device).
 */
export function expectedBackend(): string | undefined {
  return process.env.LIBNVM_TEST_BACKEND || undefined;
}

/** The configuration QEMU was started with (JSON from test/vm/run.ts); undefined on real hardware. */
export function expected(): Expected | undefined {
  const e = process.env.LIBNVM_TEST_EXPECT;
  return e ? (JSON.parse(e) as Expected) : undefined;
}

export function requireExpected(): Expected {
  const e = expected();
  if (!e) throw new Error("LIBNVM_TEST_EXPECT is not set: this test compares against the QEMU configuration");
  return e;
}

/** Run a fixture script as a separate process (a second owner, or a victim to kill). */
export function spawnFixture(name: string, args: string[] = []) {
  return Bun.spawn(["bun", join(import.meta.dir, "fixtures", name), ctrlAddress(), ...args], {
    stdout: "pipe",
    stderr: "pipe",
    cwd: REPO,
  });
}

/** Read lines from a child's stdout until one matches, bounded by `timeoutMs`. */
export async function waitForLine(stream: ReadableStream<Uint8Array>, want: RegExp, timeoutMs: number): Promise<string> {
  const reader = stream.getReader();
  const dec = new TextDecoder();
  let buf = "";
  const deadline = Date.now() + timeoutMs;
  try {
    while (Date.now() < deadline) {
      const r = await Promise.race([
        reader.read(),
        Bun.sleep(Math.max(1, deadline - Date.now())).then(() => undefined),
      ]);
      if (!r) break;
      if (r.done) break;
      buf += dec.decode(r.value, { stream: true });
      for (const line of buf.split("\n")) if (want.test(line)) return line;
    }
  } finally {
    reader.releaseLock();
  }
  throw new Error(`child did not print ${want} within ${timeoutMs} ms; it printed: ${JSON.stringify(buf)}`);
}

/** What the kernel says about each thread of `pid`: state, wait channel, syscall and CPU ticks. */
function threads(pid: number): string[] {
  const out: string[] = [];
  let tids: string[] = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return [`pid ${pid}: gone`];
  }
  for (const tid of tids) {
    const at = `/proc/${pid}/task/${tid}`;
    const read = (f: string) => {
      try {
        return readFileSync(`${at}/${f}`, "utf8").trim();
      } catch {
        return "?";
      }
    };
    // stat's fields after the command's closing parenthesis: state is the 3rd, utime and stime the 14th and 15th.
    const f = read("stat").replace(/^.*\) /s, "").split(" ");
    out.push(`${tid} ${read("comm")}: state ${f[0]} utime ${f[11]} stime ${f[12]} wchan ${read("wchan")} syscall ${read("syscall").split(" ").slice(0, 3).join(" ")}`);
  }
  return out;
}

/**
 * A child's exit status and everything it printed, bounded. Its output is read while it runs: a
 * child writing more than a pipe holds (about 16 KiB here) blocks in its write until someone
 * reads, and would never exit. Past `ms`, the error says what its threads were doing (sampled
 * twice, a second apart: a thread whose CPU ticks grew spins; one that sleeps waits where its wchan
 * and syscall say), with what it printed; then the child is killed.
 */
export async function finished(
  p: { pid: number; exited: Promise<number>; kill(sig?: number | string): void; stdout: ReadableStream<Uint8Array>; stderr: ReadableStream<Uint8Array> },
  ms: number,
  what: string,
): Promise<{ code: number; out: string; err: string }> {
  const out = rest(p.stdout, ms + 5000);
  const err = rest(p.stderr, ms + 5000);
  const code = await Promise.race([p.exited, Bun.sleep(ms).then(() => undefined)]);
  if (code !== undefined) return { code, out: await out, err: await err };
  const first = threads(p.pid);
  await Bun.sleep(1000);
  const second = threads(p.pid);
  p.kill("SIGKILL");
  const [o, e] = [await out, await err];
  throw new Error(
    `${what} (pid ${p.pid}) did not exit within ${ms} ms; its threads:\n  ${first.join("\n  ")}\none second later:\n  ${second.join("\n  ")}\n` +
      `the last it printed: ${JSON.stringify(o.slice(-600))}; its stderr: ${JSON.stringify(e.slice(-2000))}`,
  );
}

/** Everything a stream still holds, read until it ends (the process exited) or `ms` pass. */
export async function rest(s: ReadableStream<Uint8Array>, ms = 10_000): Promise<string> {
  const reader = s.getReader();
  const dec = new TextDecoder();
  let out = "";
  const end = Date.now() + ms;
  try {
    while (Date.now() < end) {
      const r = await Promise.race([reader.read(), Bun.sleep(Math.max(1, end - Date.now())).then(() => undefined)]);
      if (!r || r.done) break;
      out += dec.decode(r.value, { stream: true });
    }
  } finally {
    reader.releaseLock();
  }
  return out;
}

/** Controller.open on the test controller, through the backend the suite expects. */
export function openTestController(opts?: ControllerOptions): Controller {
  const c = Controller.open(ctrlAddress(), opts);
  const want = expectedBackend();
  if (want && c.backend.kind !== want) {
    c.close();
    throw new Error(`this suite must run through the ${want} backend, but Controller.open picked ${c.backend.kind}`);
  }
  return c;
}

/**
 * What the sysfs backend says, once per process, when it reserves hugepages on a machine that has
 * none free (test/hw/hugepages.test.ts checks it).
 */
export const HUGEPAGE_NOTICE = /^libnvm: no free 2 MiB hugepage for DMA memory: raised \S+ from \d+ to \d+ .*\n/;

/** Run `bun bin/libnvm.ts ...args` from the repository; stderr without the hugepage notice. */
export function libnvm(args: string[], opts: { stdin?: Uint8Array } = {}) {
  const p = Bun.spawnSync(["bun", join(REPO, "bin", "libnvm.ts"), ...args], {
    cwd: REPO,
    stdout: "pipe",
    stderr: "pipe",
    stdin: opts.stdin ?? "ignore",
  });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString().replace(HUGEPAGE_NOTICE, ""), bytes: new Uint8Array(p.stdout) };
}
