/**
 * A second process for the fake SmartIO's cross-process tests: another borrower, or another host
 * (its own FAKE_SISCI_NODE). Run with the environment fakeEnv() makes:
 *
 *   bun test/smartio/child.ts borrow <fdid hex> [exclusive] [holdMs]   borrow, print "ok" (or the errno), hold, return
 *   bun test/smartio/child.ts segment <id> <fdid hex>                  create local segment <id>; print "ok" or the errno
 *   bun test/smartio/child.ts echo <number> <timeoutMs>                create data interrupt <number>, print "ready <node>",
 *                                                                      wait for one message "<node> <number> <text>",
 *                                                                      answer "echo: <text>" to that node's interrupt
 *   bun test/smartio/child.ts shared <fdid hex> <id> <bytes>          borrow (shared), connect the shared device segment,
 *                                                                      map it read-only, print its first <bytes> bytes as hex
 *   bun test/smartio/child.ts gpu <fdid hex>                           attach "GPU" memory to a segment; print "ok" or the errno
 *
 * Prints one result line on stdout and exits 0; a failed step prints "errno <n> <call>" and exits 3.
 */
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { native } from "../../lib/native.ts";
import { INTR_FIXED, lastSisciFailure, MAP_READONLY, MEMTYPE_SHARED, sisciScratch, sisciShim, BORROW_EXCLUSIVE, SEGMENT_AUTO_ID } from "../../lib/sisci.ts";

const [op, a1, a2, a3] = process.argv.slice(2);
const shim = sisciShim();
const s = sisciScratch();

function fail(): never {
  const f = lastSisciFailure();
  console.log(`errno ${f.errno} ${f.call}`);
  process.exit(3);
}

if (shim.nvm_sisci_init() < 0) fail();

if (op === "borrow") {
  const dev = shim.nvm_sisci_device_borrow(parseInt(a1!, 16), a2 === "exclusive" ? BORROW_EXCLUSIVE : 0, s.ptr);
  if (dev === null) fail();
  console.log("ok");
  Bun.sleepSync(Number(a3 ?? 0));
  if (shim.nvm_sisci_device_return(dev, 1000) < 0) fail();
} else if (op === "segment") {
  // A segment needs a borrowed device only for its adapter; creating it does not.
  const dev = shim.nvm_sisci_device_borrow(parseInt(a2!, 16), 0, s.ptr);
  if (dev === null) fail();
  const seg = shim.nvm_sisci_segment_create(dev, Number(a1), 4096, 0, s.ptr);
  if (seg === null) fail();
  console.log("ok");
  if (shim.nvm_sisci_segment_remove(seg, 1000) < 0 || shim.nvm_sisci_device_return(dev, 1000) < 0) fail();
} else if (op === "echo") {
  const intr = shim.nvm_sisci_intr_create(0, Number(a1), INTR_FIXED, s.ptr);
  if (intr === null) fail();
  console.log(`ready ${s.u32[1]}`);
  const buf = native().nvm_host_alloc(4096)!;
  const n = shim.nvm_sisci_intr_wait(intr, buf, 4096, Number(a2));
  if (n < 0) fail();
  const msg = new TextDecoder().decode(new Uint8Array(toArrayBuffer(buf, 0, n)));
  const [node, number, ...text] = msg.split(" ");
  const r = shim.nvm_sisci_intr_connect(0, Number(node), Number(number), 2000);
  if (r === null) fail();
  const reply = Buffer.from(`echo: ${text.join(" ")}`);
  new Uint8Array(toArrayBuffer(buf, 0, reply.length)).set(reply);
  if (shim.nvm_sisci_intr_trigger(r, buf, reply.length) < 0) fail();
  if (shim.nvm_sisci_intr_disconnect(r) < 0 || shim.nvm_sisci_intr_remove(intr, 1000) < 0) fail();
  console.log("answered");
} else if (op === "shared") {
  const dev = shim.nvm_sisci_device_borrow(parseInt(a1!, 16), 0, s.ptr);
  if (dev === null) fail();
  const seg = shim.nvm_sisci_connect_device_segment(dev, Number(a2), MEMTYPE_SHARED, s.ptr);
  if (seg === null) fail();
  const p = shim.nvm_sisci_remote_map_cpu(seg, 0, 0, MAP_READONLY);
  if (p === null) fail();
  console.log(Buffer.from(new Uint8Array(toArrayBuffer(p as Pointer, 0, Number(a3)))).toString("hex"));
  if (shim.nvm_sisci_remote_unmap_cpu(seg, 1000) < 0 || shim.nvm_sisci_disconnect(seg, 1000) < 0 || shim.nvm_sisci_device_return(dev, 1000) < 0) fail();
} else if (op === "gpu") {
  const dev = shim.nvm_sisci_device_borrow(parseInt(a1!, 16), 0, s.ptr);
  if (dev === null) fail();
  const mem = native().nvm_dma_alloc(8192, 0)!;
  const addr = BigInt(mem as unknown as number);
  const seg = shim.nvm_sisci_segment_create_gpu(dev, 0, Number(addr & 0xffffffffn), Number(addr >> 32n), 8192, SEGMENT_AUTO_ID, s.ptr);
  if (seg === null) fail();
  console.log("ok");
  if (shim.nvm_sisci_segment_remove(seg, 1000) < 0 || shim.nvm_sisci_device_return(dev, 1000) < 0) fail();
} else {
  console.error(`unknown op ${op}`);
  process.exit(2);
}
shim.nvm_sisci_fini();
