/**
 * The block tools, perf and the `libnvm` command over nvme+tcp:// against nvmet in the guest: the
 * same programs as for a local controller, given the address instead of a PCI address. Each checks
 * the data it moved (against the backing device, or read back) and the exit status.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { backing, DISCOVERY, fill, SUB1, URI1, URI2 } from "./common.ts";

const dir = mkdtempSync(join(process.env.TMPDIR ?? "/tmp", "libnvm-tcp-tools-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

function run(cmd: string[], stdin?: Uint8Array): { code: number; out: string; err: string; bytes: Uint8Array } {
  const r = Bun.spawnSync(["bun", ...cmd], { stdin: stdin ?? "ignore", stdout: "pipe", stderr: "pipe", timeout: 120_000 });
  return { code: r.exitCode ?? -1, out: r.stdout.toString(), err: r.stderr.toString(), bytes: new Uint8Array(r.stdout) };
}
const libnvm = (args: string[], stdin?: Uint8Array) => run(["bin/libnvm.ts", ...args], stdin);
function ok(r: ReturnType<typeof run>): ReturnType<typeof run> {
  if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.err}`);
  return r;
}

describe("examples over nvme+tcp://", () => {
  test("write-blocks then read-blocks: 8 MiB of brd namespace 2, bit for bit, in the backing device too", () => {
    const data = new Uint8Array(8 * MiB);
    fill(data, 31337);
    writeFileSync(join(dir, "in.bin"), data);
    const w = ok(run(["examples/write-blocks.ts", `--ctrl=${URI1}`, "--ns=2", "--lba=2048", `--input=${join(dir, "in.bin")}`, "--json"]));
    expect(JSON.parse(w.out)).toMatchObject({ bytes: String(8 * MiB) });
    expect(Buffer.compare(backing("/dev/ram0", 2048 * 512, 8 * MiB), data)).toBe(0);
    ok(run(["examples/read-blocks.ts", `--ctrl=${URI2}`, "--ns=2", "--lba=2048", `--count=${(8 * MiB) / 512}`, `--output=${join(dir, "out.bin")}`]));
    expect(Buffer.compare(readFileSync(join(dir, "out.bin")), data)).toBe(0);
  });

  test("identify prints the report with the transport; --discover lists the subsystems", () => {
    const r = ok(run(["examples/identify.ts", `--ctrl=${URI1}`]));
    expect(r.out).toContain("Transport               : NVMe/TCP 127.0.0.1:4420");
    expect(r.out).toContain(`Subsystem NQN           : ${SUB1}`);
    expect(r.out).toContain("Serial Number           : LIBNVMTCP0001");
    expect(r.out).toContain("Max data transfer size  : unlimited");
    expect(r.out).toContain("------------- Namespace 2 information -------------");
    const d = ok(run(["examples/identify.ts", `--ctrl=${DISCOVERY}`, "--discover"]));
    expect(d.out).toContain(`subnqn:  ${SUB1}`);
    expect(d.out).toContain(`uri:     ${URI1}`);
    const j = JSON.parse(ok(run(["examples/identify.ts", `--ctrl=${DISCOVERY}`, "--discover", "--json"])).out);
    expect(j.records.some((x: { uri: string }) => x.uri === URI1)).toBe(true);
  });

  test("roundtrip", () => {
    const r = ok(run(["examples/roundtrip.ts", `--ctrl=${URI1}`, "--ns=1", "--count=16", "--json"]));
    expect(JSON.parse(r.out)).toMatchObject({ ok: true, count: 16 });
  });

  test("perf: QD 8, one queue here and two queues in Workers, no errors", () => {
    const one = JSON.parse(ok(run(["examples/perf.ts", `--ctrl=${URI1}`, "--ns=2", "--qd=8", "--ios=2000", "--json"])).out);
    expect(one.total.errors).toBe(0);
    expect(one.total.ios).toBe(2000);
    expect(one.backend).toBe("tcp");
    const two = JSON.parse(ok(run(["examples/perf.ts", `--ctrl=${URI1}`, "--ns=2", "--qd=8", "--queues=2", "--rw=mix", "--ios=1000", "--json"])).out);
    expect(two.total.errors).toBe(0);
    expect(two.queues.map((q: { qid: number }) => q.qid)).toEqual([1, 2]);
  });
});

describe("libnvm over nvme+tcp://", () => {
  test("id-ctrl, id-ns, list-ns, smart-log, get-feature with nvme-cli's JSON", () => {
    const id = JSON.parse(ok(libnvm(["id-ctrl", URI1, "-o", "json"])).out);
    expect(id.sn.trim()).toBe("LIBNVMTCP0001");
    expect(id.subnqn).toBe(SUB1);
    expect(id.ioccsz).toBe(1028);
    const ns = JSON.parse(ok(libnvm(["id-ns", URI1, "-n", "2", "-o", "json"])).out);
    expect(ns.nsze).toBe(Number(readFileSync("/sys/block/ram0/size", "utf8").trim()));
    expect(JSON.parse(ok(libnvm(["list-ns", URI1, "-o", "json"])).out).nsid_list.map((x: { nsid: number }) => x.nsid)).toEqual([1, 2]);
    expect(JSON.parse(ok(libnvm(["smart-log", URI1, "-o", "json"])).out)).toHaveProperty("critical_warning");
    expect(JSON.parse(ok(libnvm(["get-feature", URI1, "-f", "7", "-o", "json"])).out)).toMatchObject({ feature_id: 7 });
  });

  test("write, read: a 3 MiB round trip; compare (nvmet has none: its status); write-zeroes, dsm, flush", () => {
    const data = new Uint8Array(3 * MiB);
    fill(data, 4242);
    writeFileSync(join(dir, "w.bin"), data);
    ok(libnvm(["write", URI1, "-n", "2", "-s", "100", "-d", join(dir, "w.bin")]));
    // Linux nvmet implements no Compare: the command line reports the target's own status, exit 1.
    const cmp = libnvm(["compare", URI1, "-n", "2", "-s", "100", "-d", join(dir, "w.bin")]);
    expect(cmp.code).toBe(1);
    expect(cmp.err).toContain("Compare(0x05) @ LBA 100, 4096 blocks: Invalid Command Opcode (sct 0x0 generic / sc 0x1) DNR");
    ok(libnvm(["read", URI1, "-n", "2", "-s", "100", "-z", String(data.length), "-d", join(dir, "r.bin")]));
    expect(Buffer.compare(readFileSync(join(dir, "r.bin")), data)).toBe(0);
    ok(libnvm(["write-zeroes", URI1, "-n", "2", "-s", "100", "-c", "7"]));
    expect(ok(libnvm(["read", URI1, "-n", "2", "-s", "100", "-c", "7"])).bytes.every((x) => x === 0)).toBe(true);
    expect(ok(libnvm(["dsm", URI1, "-n", "2", "--ad", "-s", "200", "-b", "8"])).out).toBe("dsm: Success, 1 range deallocated\n");
    expect(ok(libnvm(["flush", URI1, "-n", "2"])).out).toBe("flush: Success, namespace 2\n");
  });

  test("discover and list with the target's address: nvme discover's layout and JSON; each subsystem's namespaces", () => {
    const d = ok(libnvm(["discover", DISCOVERY]));
    expect(d.out).toMatch(/^Discovery Log Number of Records \d+, Generation counter \d+\n/);
    expect(d.out).toContain(`subnqn:  ${SUB1}`);
    expect(d.out).toContain("trtype:  tcp");
    const j = JSON.parse(ok(libnvm(["discover", DISCOVERY, "-o", "json"])).out);
    expect(j.records.find((r: { subnqn: string }) => r.subnqn === SUB1)).toMatchObject({ trtype: "tcp", adrfam: "ipv4", subtype: "nvme subsystem", traddr: "127.0.0.1", trsvcid: "4420", uri: URI1 });
    const l = ok(libnvm(["list", DISCOVERY]));
    expect(l.out).toContain(URI1);
    expect(l.out).toContain("LIBNVMTCP0001");
    const lj = JSON.parse(ok(libnvm(["list", DISCOVERY, "-o", "json"])).out);
    expect(lj.Devices.filter((x: { DevicePath: string }) => x.DevicePath === URI1).map((x: { NameSpace: number }) => x.NameSpace)).toEqual([1, 2]);
  });

  test("perf and reset", () => {
    const p = JSON.parse(ok(libnvm(["perf", URI1, "--ns=2", "--qd=4", "--ios=500", "--json"])).out);
    expect(p.total.errors).toBe(0);
    const r = JSON.parse(ok(libnvm(["reset", URI1, "-o", "json"])).out);
    expect(r).toMatchObject({ resets: 1, sn: "LIBNVMTCP0001" });
    expect(r.csts & 1).toBe(1);
  });

  test("exit statuses: a backend with an address is usage (2); nobody listening is the device (3); a refused host is the controller's status (1)", () => {
    const b = libnvm(["id-ctrl", URI1, "--backend=vfio"]);
    expect(b.code).toBe(2);
    expect(b.err).toContain("which has no backend");
    const n = libnvm(["id-ctrl", `nvme+tcp://127.0.0.1:4999/${SUB1}`]);
    expect(n.code).toBe(3);
    expect(n.err).toMatch(/ConnectionError: cannot connect queue 0 to 127\.0\.0\.1:4999: connection refused/);
    const h = libnvm(["id-ctrl", `nvme+tcp://127.0.0.1:4420/nqn.2024-01.io.libnvm:sub2?hostnqn=nqn.2024-01.io.libnvm:nobody`]);
    expect(h.code).toBe(1);
    expect(h.err).toContain("Connect Invalid Host");
  });
});
