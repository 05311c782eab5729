/** The Worker side of fixture.ts: a fake controller, a Controller on it, and a ShareServer. */
import { parentPort } from "node:worker_threads";
import { FakeNvme } from "../fake-nvme.ts";
import { TABLE_ENTRIES } from "./fixture.ts";

process.env.LIBNVM_LOCK_DIR ??= "/tmp";
const { Controller } = await import("../../../lib/controller.ts");
const { ShareServer } = await import("../../../lib/share/server.ts");
const { SisciListener } = await import("../../../lib/share/sisci-link.ts");
const { setSisciLibraryPath } = await import("../../../lib/sisci.ts");

let fake: FakeNvme | undefined;
let ctrl: ReturnType<typeof Controller.openBackend> | undefined;
let server: ReturnType<typeof ShareServer.listen> | undefined;
let pump: ReturnType<typeof setInterval> | undefined;
const log: string[] = [];

function start(a: { socket: string; sisci?: { fdid: number; shim: string }; allow?: string[]; uids?: number[]; maxQueues?: number; timeoutMs?: number; table: Float64Array }): unknown {
  const t = a.table;
  fake = new FakeNvme({ namespaces: [{ nsid: 1, blocks: 4096, lbads: 9 }] }).install();
  fake.foreign = (page) => {
    for (let i = 0; i < TABLE_ENTRIES; i++) if (t[2 * i] === page) return t[2 * i + 1];
    return undefined;
  };
  ctrl = Controller.openBackend(fake.backend, { handleSignals: false, timeoutMs: a.timeoutMs ?? 500, abortGraceMs: 200 });
  // Controller.serve() is ShareServer.listen() (registered by lib/share/server.ts when it loads).
  // Over SISCI (the fake's, whose shim the test built): clients open smartio-rpc:<fdid>.
  if (a.sisci) setSisciLibraryPath(a.sisci.shim);
  const served = ctrl.serve({
    ...(a.sisci ? { listener: SisciListener.listen(a.sisci.fdid, { pingMs: 100 }) } : { socket: a.socket }),
    ...(a.allow ? { allow: a.allow as never } : {}),
    ...(a.uids ? { uids: a.uids } : {}),
    ...(a.maxQueues ? { maxQueues: a.maxQueues } : {}),
    log: (l: string) => log.push(l),
  });
  if (!(served instanceof ShareServer)) throw new Error("Controller.serve() did not return a ShareServer");
  server = served;
  const f = fake;
  pump = setInterval(() => f.pump(), 1);
  return { bar0: Number(fake.backend.bar0) };
}

function stats(): unknown {
  const f = fake!;
  const sqs: number[] = [];
  for (let q = 1; q <= 64; q++) if (f.hasSq(q)) sqs.push(q);
  return {
    violations: [...f.dmaViolations],
    clients: server!.clients().map((c: { id: number; pid: number; uid: number | undefined; sqids: readonly number[]; heldBytes: number }) => ({ id: c.id, pid: c.pid, uid: c.uid, sqids: [...c.sqids], heldBytes: c.heldBytes })),
    reclaimed: server!.reclaimed,
    sqs,
    admin: f.fetched.filter((c) => c.sqid === 0).map((c) => [c.opcode, c.sqe[10]! & 0xffff]),
    held: f.held.length,
    log: [...log],
  };
}

parentPort!.on("message", (m: { seq: number; op: string; args: Record<string, unknown> }) => {
  let value: unknown;
  try {
    switch (m.op) {
      case "start":
        value = start(m.args as never);
        break;
      case "stats":
        value = stats();
        break;
      case "hold-reads":
        // Hold every Read of SQ `sqid`: no completion, no data moved, until the SQ is deleted.
        fake!.hold = (c) => c.sqid === (m.args.sqid as number) && c.opcode === 0x02;
        value = true;
        break;
      case "hold-admin":
        // Hold admin command `opcode` (no completion) until complete-held.
        fake!.hold = (c) => c.sqid === 0 && c.opcode === (m.args.opcode as number);
        value = true;
        break;
      case "complete-held":
        value = fake!.completeHeld();
        break;
      case "reset":
        // The server's own reset (its recovery, or the application's): not a client's request.
        ctrl!.reset(new Error("the owner reset it"));
        value = ctrl!.resets;
        break;
      case "abandon":
        server!.abandonForTests();
        value = true;
        break;
      case "stop":
        if (pump) clearInterval(pump);
        server?.close();
        ctrl?.close();
        fake?.uninstall();
        value = true;
        break;
      default:
        value = { error: `unknown op ${m.op}` };
    }
  } catch (e) {
    value = { error: String((e as Error)?.stack ?? e) };
  }
  parentPort!.postMessage({ seq: m.seq, value });
});
