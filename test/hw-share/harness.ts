/**
 * What the sharing guest tests share: child processes (killed after each test), the server
 * (examples/serve.ts) and the client fixture (client.ts) started as such; `rest` (test/hw/common.ts) again.
 */
import { expect } from "bun:test";
import { join } from "node:path";
import { native } from "../../lib/native.ts";
import { connectUnix, type UnixConnection } from "../../lib/share/link.ts";
import { decodeBody, encode, FrameReader, type Reply, type Request } from "../../lib/share/protocol.ts";
import { ctrlAddress, REPO, rest, waitForLine } from "../hw/common.ts";

export { rest };

export type Proc = ReturnType<typeof Bun.spawn<"ignore", "pipe", "pipe">>;
const procs: Proc[] = [];

/** SIGKILL every child still running (afterEach). */
export async function killChildren(): Promise<void> {
  for (const p of procs.splice(0)) {
    p.kill("SIGKILL");
    await p.exited;
  }
}

// Not LIBNVM_VM_XCHG: that is a 9p mount, where a Unix socket cannot be created.
export const tmp = "/run/libnvm";

export function spawn(args: string[]): Proc {
  const p = Bun.spawn(["bun", ...args], { cwd: REPO, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  procs.push(p);
  return p;
}

/** examples/serve.ts on the test controller, once it says it serves: the process and its socket path. */
export async function serve(socket?: string, more: string[] = []): Promise<{ p: Proc; path: string }> {
  const args = [join(REPO, "examples/serve.ts"), `--ctrl=${ctrlAddress()}`, ...(socket ? [`--socket=${socket}`] : []), ...more];
  const p = spawn(args);
  let line: string;
  try {
    line = await waitForLine(p.stdout, /^serving /, 60_000);
  } catch (e) {
    p.kill("SIGKILL");
    throw new Error(`${(e as Error).message}; the server's stderr: ${await rest(p.stderr, 2000)}`);
  }
  const path = /at unix:(\S+)/.exec(line)![1]!;
  return { p, path };
}

/**
 * How many requests the server served the client `pid`, from the line its log (stderr) gives each
 * client that left: a client doing its own I/O makes a handful, one going through the server one or
 * more a command.
 */
export function requestsServed(log: string, pid: number): number {
  const m = new RegExp(`client \\d+ \\(pid ${pid}\\) .*\\((\\d+) requests? served\\)`).exec(log);
  expect({ pid, served: m?.[1], log }).toMatchObject({ served: expect.any(String) });
  return Number(m![1]);
}

/** client.ts: verified rounds of I/O on [first, first + blocks) through a queue of its own. */
export function client(path: string, nsid: number, first: number, blocks: number, seconds: number, seed: number): Proc {
  return spawn([join(import.meta.dir, "client.ts"), `unix:${path}`, String(nsid), String(first), String(blocks), String(seconds), String(seed)]);
}

/** The protocol by hand, for what a well-behaved client never does; keeps the descriptors the server sends. */
export class RawShareClient {
  readonly conn: UnixConnection;
  readonly #reader = new FrameReader();
  readonly fds: number[] = [];
  #id = 0;

  constructor(path: string) {
    this.conn = connectUnix(path, 5000);
  }

  /** Send `msg` and wait (10 s at most) for the next reply. */
  request(msg: Request): Reply {
    this.conn.send(encode({ id: ++this.#id, timeoutMs: 5000, msg }), 1000);
    const end = Date.now() + 10_000;
    for (;;) {
      const raw = this.#reader.next();
      if (raw) return decodeBody(raw) as Reply;
      if (Date.now() > end) throw new Error(`no reply to ${msg.type}`);
      const got = this.conn.recvWithFds(50_000);
      this.fds.push(...got.fds);
      if (got.bytes.length) this.#reader.push(got.bytes);
    }
  }

  close(): void {
    this.conn.close();
    for (const fd of this.fds.splice(0)) native().nvm_unix_close(fd);
  }
}
