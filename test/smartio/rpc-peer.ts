/**
 * The other end of a SISCI carrier test (lib/share/sisci-link.ts), in a process of its own (another
 * "host": its own FAKE_SISCI_NODE), run with the environment fakeEnv() makes:
 *
 *   bun test/smartio/rpc-peer.ts serve <fdid hex> echo|stale|silent [datagramBytes]
 *       publish a server in the device's rendezvous, print "ready <node> <interrupt>", then serve
 *       every connection: echo sends back every byte it got; stale answers each request frame with a
 *       reply to the previous request id first (a late reply), then the real one (admin-ok, DW0 =
 *       the request id; hello gets hello-ok); silent answers hello only; silent-die answers hello,
 *       then kills itself (SIGKILL) 300 ms after the next request arrived, unanswered.
 *   bun test/smartio/rpc-peer.ts client <fdid hex>
 *       connect, print "connected <node> <interrupt>", then wait (reading) until killed.
 *
 * Runs until killed (or, serving, until its stdin closes).
 */
import { connectSisci, SisciListener, type SisciConnection } from "../../lib/share/sisci-link.ts";
import { decodeBody, encode, FrameReader, type Reply } from "../../lib/share/protocol.ts";
import type { ShareConnection } from "../../lib/share/carrier.ts";

const [op, fdidHex, mode, dgram] = process.argv.slice(2);
const fdid = parseInt(fdidHex!, 16);

if (op === "client") {
  const c: SisciConnection = connectSisci(fdid, 5000);
  console.log(`connected ${c.node} ${c.intno}`);
  for (;;) {
    c.recv(100_000);
    await Bun.sleep(1);
  }
} else if (op === "serve") {
  const l = SisciListener.listen(fdid, dgram ? { datagramBytes: Number(dgram) } : {});
  console.log(`ready ${l.node} ${l.intno}`);
  const conns: { c: ShareConnection; r: FrameReader }[] = [];
  let stop = false;
  (async () => {
    for await (const _ of Bun.stdin.stream()) {
      // Whatever the test writes; it closing stdin ends the server.
    }
    stop = true;
  })();
  while (!stop) {
    const a = l.accept();
    if (a) conns.push({ c: a.conn, r: new FrameReader() });
    for (const k of [...conns]) {
      let got: Uint8Array;
      try {
        got = k.c.recv(0);
      } catch {
        conns.splice(conns.indexOf(k), 1);
        k.c.close();
        continue;
      }
      if (got.length === 0) continue;
      if (mode === "echo") {
        k.c.send(got, 2000);
        continue;
      }
      k.r.push(got);
      for (let f = k.r.next(); f; f = k.r.next()) {
        const req = decodeBody(f);
        if (mode === "silent-die" && req.type !== "hello") setTimeout(() => process.kill(process.pid, "SIGKILL"), 300);
        if (mode !== "stale" && req.type !== "hello") continue;
        const reply: Reply =
          req.type === "hello"
            ? { type: "hello-ok", clientId: 1, capLo: 0x0f0103ff, capHi: 0x20, vs: 0x10400, timeoutMs: 1000, maxQueues: 4, backend: "sysfs", bdf: "0000:00:00.0", name: "peer", serverPid: process.pid, bar0Offset: 0, bar0Size: 0 }
            : { type: "admin-ok", status: 0, dw0: f.id, dw1: 0 };
        // A late reply to the previous request (its id, a wrong DW0): the client must drop it.
        if (f.id > 1) k.c.send(encode({ id: f.id - 1, timeoutMs: 0, msg: { type: "admin-ok", status: 0, dw0: 0xdead, dw1: 0 } }), 2000);
        k.c.send(encode({ id: f.id, timeoutMs: 0, msg: reply }), 2000);
      }
    }
    await Bun.sleep(1);
  }
  for (const k of conns) k.c.close();
  l.close();
} else {
  console.error(`unknown op ${op}`);
  process.exit(2);
}
