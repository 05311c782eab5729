/**
 * NVMe/TCP addresses (nvme+tcp:// and SPDK's transport ID), Fabrics commands in SQE bytes, the
 * Connect data, the Discovery Log Page, and the host identity's rules.
 */
import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InvalidArgumentError, ParseError } from "../../../lib/errors.ts";
import { writeCommand } from "../../../lib/spec/commands.ts";
import * as fabrics from "../../../lib/spec/fabrics.ts";
import { formatTcpTarget, isTcpTarget, parseTcpTarget } from "../../../lib/transports/tcp/uri.ts";

describe("addresses", () => {
  test("nvme+tcp://HOST:PORT/SUBNQN with nvme-cli's option names", () => {
    const t = parseTcpTarget("nvme+tcp://127.0.0.1:4420/nqn.2024-01.io.libnvm:sub1?hdr-digest=1&data_digest=true&nr-io-queues=4&queue_size=64&keep-alive-tmo=5&disable-sqflow=1&hostnqn=nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427&nsid=2");
    expect(t).toEqual({
      host: "127.0.0.1",
      port: 4420,
      subnqn: "nqn.2024-01.io.libnvm:sub1",
      discovery: false,
      options: {
        headerDigest: true,
        dataDigest: true,
        nrIoQueues: 4,
        queueSize: 64,
        keepAliveTimeoutMs: 5000,
        disableSqFlowControl: true,
        hostnqn: "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        nsid: 2,
      },
    });
    expect(parseTcpTarget("nvme+tcp://h/nqn.2024-01.io.x:y?kato=1500").options.keepAliveTimeoutMs).toBe(1500);
  });

  test("defaults: port 4420 for a subsystem, 8009 and the discovery NQN without one", () => {
    expect(parseTcpTarget("nvme+tcp://storage.example/nqn.2024-01.io.x:y")).toMatchObject({ host: "storage.example", port: 4420, discovery: false });
    for (const s of ["nvme+tcp://10.0.0.5", "nvme+tcp://10.0.0.5/", "nvme+tcp://10.0.0.5/discovery", `nvme+tcp://10.0.0.5/${fabrics.DISCOVERY_NQN}`]) {
      expect(parseTcpTarget(s)).toMatchObject({ host: "10.0.0.5", port: 8009, subnqn: fabrics.DISCOVERY_NQN, discovery: true });
    }
    expect(parseTcpTarget("nvme+tcp://10.0.0.5:4420")).toMatchObject({ port: 4420, discovery: true });
  });

  test("IPv6 in brackets, and back", () => {
    const t = parseTcpTarget("nvme+tcp://[fe80::1]:4421/nqn.2024-01.io.x:y");
    expect(t).toMatchObject({ host: "fe80::1", port: 4421 });
    expect(formatTcpTarget(t)).toBe("nvme+tcp://[fe80::1]:4421/nqn.2024-01.io.x:y");
    expect(formatTcpTarget({ host: "10.0.0.1", port: 8009 })).toBe("nvme+tcp://10.0.0.1:8009");
  });

  test("SPDK's transport ID", () => {
    const s = "trtype:TCP adrfam:IPv4 traddr:192.168.1.2 trsvcid:4420 subnqn:nqn.2016-06.io.spdk:cnode1";
    expect(isTcpTarget(s)).toBe(true);
    expect(parseTcpTarget(s)).toEqual({ host: "192.168.1.2", port: 4420, subnqn: "nqn.2016-06.io.spdk:cnode1", discovery: false, options: {} });
    expect(parseTcpTarget("trtype:tcp traddr:10.1.1.1")).toMatchObject({ port: 8009, discovery: true });
  });

  test("what is not an address says why", () => {
    expect(isTcpTarget("05:00.0")).toBe(false);
    expect(isTcpTarget("/dev/disnvm0")).toBe(false);
    const bad: [string, RegExp][] = [
      ["nvme+tcp://:4420/nqn.2024-01.io.x:y", /no host/],
      ["nvme+tcp://h:99999/nqn.2024-01.io.x:y", /port 99999/],
      ["nvme+tcp://h/not-an-nqn", /is not an NQN/],
      ["nvme+tcp://h/nqn.2024-01.io.x:y?hdgst=maybe", /give 1 or 0/],
      ["nvme+tcp://h/nqn.2024-01.io.x:y?frobnicate=1", /unknown option "frobnicate"/],
      ["nvme+tcp://h/nqn.2024-01.io.x:y?queue-size=1", /queue-size=1: an integer from 2/],
      [`nvme+tcp://h/nqn.2024-01.io.x:${"y".repeat(230)}`, /longer than 223 bytes/],
      ["trtype:RDMA traddr:1.2.3.4", /trtype must be TCP/],
      ["trtype:TCP trsvcid:4420", /traddr is missing/],
    ];
    for (const [s, re] of bad) expect(() => parseTcpTarget(s)).toThrow(re);
    expect(() => parseTcpTarget("nvme+tcp://h/x")).toThrow(InvalidArgumentError);
  });
});

describe("Fabrics commands in bytes", () => {
  const sqe = (c: ReturnType<typeof fabrics.connect>) => {
    const s = new Uint32Array(16);
    writeCommand(s, 0, 7, c);
    return new Uint8Array(s.buffer);
  };

  test("Connect: opcode 7Fh, FCTYPE 01h at byte 4, QID at 42, SQSIZE (0's based) at 44, CATTR at 46, KATO at 48", () => {
    const b = sqe(fabrics.connect({ qid: 3, entries: 128, cattr: fabrics.CATTR_DISABLE_SQ_FLOW_CONTROL, katoMs: 0 }));
    expect(b[0]).toBe(0x7f);
    expect(b[2]! | (b[3]! << 8)).toBe(7);
    expect(b[4]).toBe(0x01);
    expect([...b.subarray(40, 52)]).toEqual([0, 0, 3, 0, 127, 0, 4, 0, 0, 0, 0, 0]);
    const a = sqe(fabrics.connect({ qid: 0, entries: 32, katoMs: 5000 }));
    expect([...a.subarray(40, 52)]).toEqual([0, 0, 0, 0, 31, 0, 0, 0, 0x88, 0x13, 0, 0]);
    expect(() => fabrics.connect({ qid: 0, entries: 1 })).toThrow(/SQSIZE/);
  });

  test("Property Get / Set: FCTYPE 04h / 00h, ATTRIB size bit at 40, OFST at 44, VALUE at 48", () => {
    const g = sqe(fabrics.propertyGet(0x00, 8));
    expect([g[0], g[4], g[40], g[44]]).toEqual([0x7f, 0x04, 1, 0]);
    const s = sqe(fabrics.propertySet(0x14, 0x00460001));
    expect([s[4], s[40], s[44]]).toEqual([0x00, 0, 0x14]);
    expect([...s.subarray(48, 56)]).toEqual([0x01, 0x00, 0x46, 0x00, 0, 0, 0, 0]);
  });

  test("Connect data: HOSTID at 0, CNTLID at 16, SUBNQN at 256, HOSTNQN at 512, 1024 bytes", () => {
    const id = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
    const d = fabrics.connectData(id, 0xffff, "nqn.2024-01.io.libnvm:sub1", "nqn.2014-08.org.nvmexpress:uuid:x");
    expect(d.length).toBe(1024);
    expect(d.subarray(0, 16)).toEqual(id);
    expect([d[16], d[17]]).toEqual([0xff, 0xff]);
    expect(new TextDecoder().decode(d.subarray(256, 256 + 26))).toBe("nqn.2024-01.io.libnvm:sub1");
    expect(d[256 + 26]).toBe(0);
    expect(new TextDecoder().decode(d.subarray(512, 512 + 33))).toBe("nqn.2014-08.org.nvmexpress:uuid:x");
    expect(() => fabrics.connectData(new Uint8Array(15), 0, "a", "b")).toThrow(/16 bytes/);
    expect(fabrics.connectInvalidParameter(0x10000 | 512)).toEqual({ inData: true, offset: 512 });
    expect(fabrics.fabricsStatusName(1, 0x84)).toBe("Connect Invalid Host");
  });

  test("the Discovery Log Page, encoded and parsed back; truncated and absurd input is ParseError", () => {
    const entries: fabrics.DiscoveryEntry[] = [
      { trtype: 3, adrfam: 1, subtype: 2, treq: 4, portid: 1, cntlid: 0xffff, asqsz: 32, eflags: 0, trsvcid: "4420", subnqn: "nqn.2024-01.io.libnvm:sub1", traddr: "127.0.0.1", sectype: 0 },
      { trtype: 3, adrfam: 1, subtype: 1, treq: 0, portid: 3, cntlid: 0xffff, asqsz: 32, eflags: 0, trsvcid: "4421", subnqn: fabrics.DISCOVERY_NQN, traddr: "127.0.0.1", sectype: 0 },
    ];
    const b = fabrics.encodeDiscoveryLog(42n, entries);
    expect(b.length).toBe(3 * 1024);
    expect(fabrics.parseDiscoveryLog(b)).toEqual({ genctr: 42n, numrec: 2, recfmt: 0, entries });
    // Only the header read: NUMREC says 2, no entry yet.
    expect(fabrics.parseDiscoveryLog(b.subarray(0, 1024)).entries).toEqual([]);
    expect(() => fabrics.parseDiscoveryLog(new Uint8Array(100))).toThrow(ParseError);
    const absurd = b.slice(0, 1024);
    new DataView(absurd.buffer).setBigUint64(8, 1n << 40n, true);
    expect(() => fabrics.parseDiscoveryLog(absurd)).toThrow(/NUMREC/);
  });
});

describe("host identity", () => {
  test("given, stored once and read back, with a HOSTID that goes with the NQN", async () => {
    const dir = mkdtempSync(join(tmpdir(), "libnvm-hostnqn-"));
    try {
      const script = `
        const { hostIdentity, uuidString } = await import(${JSON.stringify(join(import.meta.dir, "../../../lib/transports/tcp/hostnqn.ts"))});
        const a = hostIdentity(); const b = hostIdentity();
        const c = hostIdentity({ hostnqn: "nqn.2024-01.io.example:h1" });
        const d = hostIdentity({ hostnqn: "nqn.2024-01.io.example:h1" });
        console.log(JSON.stringify({ a: a.hostnqn, aid: uuidString(a.hostid), b: b.hostnqn, src: a.source, c: uuidString(c.hostid), d: uuidString(d.hostid) }));`;
      const run = () => {
        const r = Bun.spawnSync(["bun", "-e", script], { env: { ...process.env, XDG_CONFIG_HOME: dir, HOME: dir }, stdout: "pipe", stderr: "pipe" });
        expect(r.exitCode).toBe(0);
        return JSON.parse(r.stdout.toString()) as Record<string, string>;
      };
      const first = run();
      const second = run();
      const etc = (() => {
        try {
          return readFileSync("/etc/nvme/hostnqn", "utf8").trim();
        } catch {
          return undefined;
        }
      })();
      if (etc) {
        // nvme-cli's file wins, as for the kernel's host.
        expect(first.a).toBe(etc);
        expect(first.src).toBe("/etc/nvme/hostnqn");
      } else {
        expect(first.a).toMatch(/^nqn\.2014-08\.org\.nvmexpress:uuid:[0-9a-f-]{36}$/);
        expect(first.aid).toBe(first.a!.slice(-36));
        expect(readFileSync(join(dir, "libnvm", "hostnqn"), "utf8").trim()).toBe(first.a!);
      }
      expect(second.a).toBe(first.a!);
      expect(first.b).toBe(first.a!);
      expect(first.c).toBe(first.d!);
      expect(first.c).toBe(second.c!);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
