/**
 * Every `libnvm` subcommand against QEMU's controller (bin/libnvm.ts, as a user runs it): the values
 * equal what QEMU was started with (LIBNVM_TEST_EXPECT), format changes the LBA size and the
 * namespace reports it, write/read/compare round trip, and the controller's own statuses come back
 * named with exit 1. The JSON comparison with nvme-cli is test/hw/nvme-cli.test.ts.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ctrlAddress, libnvm, REPO, requireExpected } from "./common.ts";

const dir = mkdtempSync(join(process.env.TMPDIR ?? "/tmp", "cli-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A successful run: exit 0, nothing but the summary line (if any) on stderr. */
function ok(args: string[], stdin?: Uint8Array) {
  const r = libnvm(args, stdin ? { stdin } : {});
  if (r.code !== 0) throw new Error(`libnvm ${args.join(" ")} exited ${r.code}: ${r.err}`);
  return r;
}
const json = (args: string[]) => JSON.parse(ok([...args, "-o", "json"]).out);

function randomFile(name: string, bytes: number): Uint8Array {
  const data = new Uint8Array(bytes);
  for (let o = 0; o < bytes; o += 65536) crypto.getRandomValues(data.subarray(o, Math.min(o + 65536, bytes)));
  writeFileSync(join(dir, name), data);
  return data;
}

describe("identify and logs", () => {
  test("list: the controller, no driver, reachable by sysfs, its namespaces with nvme list's keys", () => {
    const exp = requireExpected();
    const j = json(["list"]);
    const ctrl = j.Controllers.find((c: { Address: string }) => c.Address === ctrlAddress());
    expect(ctrl).toMatchObject({ Vendor: "1b36", Device: "0010", Driver: null, SerialNumber: exp.serial, ModelNumber: "QEMU NVMe Ctrl" });
    expect(ctrl.Backends).toContain("sysfs");
    expect(ctrl.Namespaces).toEqual(exp.namespaces.map((n) => n.nsid));
    for (const n of exp.namespaces) {
      const d = j.Devices.find((x: { NameSpace: number }) => x.NameSpace === n.nsid);
      expect(d).toEqual({
        NameSpace: n.nsid,
        DevicePath: ctrlAddress(),
        Firmware: expect.any(String),
        ModelNumber: "QEMU NVMe Ctrl",
        SerialNumber: exp.serial,
        UsedBytes: n.sizeBytes,
        MaximumLBA: n.sizeBytes / n.lbaSize,
        PhysicalSize: n.sizeBytes,
        SectorSize: n.lbaSize,
      });
    }
    const t = ok(["list"]).out;
    expect(t).toMatch(new RegExp(`^${ctrlAddress()} +${exp.serial} +QEMU NVMe Ctrl +1 +`, "m"));
    expect(t).toContain(`${exp.namespaces[0]!.lbaSize === 512 ? "512   B" : "  4 KiB"} +  0 B`);
    expect(t).toMatch(new RegExp(`^${ctrlAddress()} +1b36:0010 +none +sysfs`, "m"));
    const closed = json(["list", "--no-open"]).Controllers.find((c: { Address: string }) => c.Address === ctrlAddress());
    expect(closed.Namespaces).toEqual([]);
    expect(closed.Note).toContain("--no-open");
  });

  test("id-ctrl: nvme-cli's fields with QEMU's values; -H decodes; -b is the 4096-byte structure", () => {
    const exp = requireExpected();
    const j = json(["id-ctrl", ctrlAddress()]);
    expect(j.vid).toBe(0x1b36);
    expect(j.sn).toBe(exp.serial.padEnd(20));
    expect(j.mn).toBe("QEMU NVMe Ctrl".padEnd(40));
    expect(j.mdts).toBe(exp.mdts!);
    expect(j.nn).toBeGreaterThanOrEqual(exp.namespaces.length);
    expect(j.subnqn).toBe(`nqn.2019-08.org.qemu:${exp.serial}`);
    expect(typeof j.tnvmcap).toBe("string");
    const t = ok(["id-ctrl", ctrlAddress()]).out;
    expect(t).toStartWith("NVME Identify Controller:\nvid       : 0x1b36\n");
    expect(t).toContain(`\nsn        : ${exp.serial.padEnd(20)}\n`);
    expect(t).toContain(`\nmdts      : ${exp.mdts}\n`);
    const h = ok(["id-ctrl", ctrlAddress(), "-H"]).out;
    expect(h).toContain("  [1:1] : 0x1\tFormat NVM Supported");
    expect(h).toContain("  [3:3] : 0x1\tWrite Zeroes Supported");
    const b = ok(["id-ctrl", ctrlAddress(), "-b"]);
    expect(b.bytes.length).toBe(4096);
    expect(new TextDecoder().decode(b.bytes.subarray(4, 24))).toBe(exp.serial.padEnd(20));
  });

  test("id-ns: size, LBA format in use and every format, for each namespace", () => {
    for (const n of requireExpected().namespaces) {
      const j = json(["id-ns", ctrlAddress(), "-n", String(n.nsid)]);
      expect(j.nsze).toBe(n.sizeBytes / n.lbaSize);
      expect(j.ncap).toBe(j.nsze);
      const inUse = j.lbafs[j.flbas & 0xf];
      expect(2 ** inUse.ds).toBe(n.lbaSize);
      expect(inUse.ms).toBe(0);
      const t = ok(["id-ns", ctrlAddress(), "--namespace-id", String(n.nsid)]).out;
      expect(t).toStartWith(`NVME Identify Namespace ${n.nsid}:\nnsze    : 0x${(n.sizeBytes / n.lbaSize).toString(16)}\n`);
      expect(t).toMatch(new RegExp(`^lbaf +${j.flbas & 0xf} : ms:0 +lbads:${Math.log2(n.lbaSize)} +rp:0 \\(in use\\)$`, "m"));
    }
  });

  test("list-ns: the active namespaces, and with -a the allocated ones", () => {
    const nsids = requireExpected().namespaces.map((n) => n.nsid);
    expect(json(["list-ns", ctrlAddress()]).nsid_list).toEqual(nsids.map((nsid) => ({ nsid })));
    expect(ok(["list-ns", ctrlAddress()]).out).toBe(nsids.map((n, i) => `[${String(i).padStart(4)}]:0x${n.toString(16)}\n`).join(""));
    expect(json(["list-ns", ctrlAddress(), "-a"]).nsid_list).toEqual(nsids.map((nsid) => ({ nsid })));
    expect(json(["list-ns", ctrlAddress(), "-n", String(nsids[0])]).nsid_list).toEqual(nsids.slice(1).map((nsid) => ({ nsid })));
  });

  test("smart-log: counts this tool's own reads; -H decodes the critical warning", () => {
    const exp = requireExpected().namespaces[0]!;
    const before = json(["smart-log", ctrlAddress()]);
    expect(before.critical_warning).toBe(0);
    expect(before.temperature).toBeGreaterThan(273);
    // 16 blocks: one Read command (MDTS is far larger).
    ok(["read", ctrlAddress(), "-n", String(exp.nsid), "-c", "15", "-d", join(dir, "smart.bin")]);
    const after = json(["smart-log", ctrlAddress()]);
    expect(BigInt(after.host_read_commands) - BigInt(before.host_read_commands)).toBe(1n);
    const h = ok(["smart-log", ctrlAddress(), "-H"]).out;
    expect(h).toContain("      Available Spare[0]             : 0");
    expect(h).toMatch(/^temperature +: \d+°C \(\d+ Kelvin\)$/m);
    expect(json(["smart-log", ctrlAddress(), "-H"]).critical_warning).toEqual({ value: 0, available_spare: 0, temp_threshold: 0, reliability_degraded: 0, ro: 0, vmbu_failed: 0, pmr_ro: 0 });
  });

  test("error-log: ELPE + 1 entries; fw-log: keyed by the controller's address", () => {
    const id = json(["id-ctrl", ctrlAddress()]);
    const e = json(["error-log", ctrlAddress()]);
    expect(e.errors).toHaveLength(id.elpe + 1);
    expect(Object.keys(e.errors[0])).toEqual(["error_count", "sqid", "cmdid", "status_field", "phase_tag", "parm_error_location", "lba", "nsid", "vs", "trtype", "cs", "trtype_spec_info"]);
    expect(ok(["error-log", ctrlAddress()]).out).toStartWith(`Error Log Entries for device:${ctrlAddress()} entries:${id.elpe + 1}\n`);
    const fw = json(["fw-log", ctrlAddress()]);
    expect(Object.keys(fw)).toEqual([ctrlAddress()]);
    const slots = fw[ctrlAddress()];
    expect(slots["Active Firmware Slot (afi)"] & 7).toBeGreaterThanOrEqual(1);
    expect(ok(["fw-log", ctrlAddress()]).out).toMatch(/^afi  : 0x\d+$/m);
  });
});

describe("features", () => {
  test("get-feature: Number of Queues as QEMU was started (max_ioqpairs), decoded with -H", () => {
    const q = requireExpected().maxIoQpairs! - 1;
    const j = json(["get-feature", ctrlAddress(), "-f", "7"]);
    expect(j).toEqual({ feature_id: 7, name: "Number of Queues", sel: 0, value: ((q << 16) | q) >>> 0 });
    const t = ok(["get-feature", ctrlAddress(), "-f", "0x07", "-H"]).out;
    expect(t).toContain(`get-feature:0x07 (Number of Queues), Current value:0x${(((q << 16) | q) >>> 0).toString(16).padStart(8, "0")}\n`);
    expect(t).toContain(`Number of IO Submission Queues Allocated (NSQA): ${q + 1}`);
  });

  test("get-feature with data (Timestamp, 8 bytes)", () => {
    const t = ok(["get-feature", ctrlAddress(), "-f", "0xe", "-l", "8", "-H"]).out;
    expect(t).toMatch(/^0000: ([0-9a-f]{2} ){7}[0-9a-f]{2}$/m);
    expect(t).toContain("The timestamp is : ");
  });

  test("set-feature then get-feature: Volatile Write Cache off and on again", () => {
    expect(ok(["set-feature", ctrlAddress(), "-f", "6", "-v", "0"]).out).toBe("set-feature:0x06 (Volatile Write Cache), value:0x00000000, cdw12:0x00000000, save:0\n");
    expect(json(["get-feature", ctrlAddress(), "-f", "6"]).value).toBe(0);
    ok(["set-feature", ctrlAddress(), "-f", "6", "-v", "1"]);
    expect(ok(["get-feature", ctrlAddress(), "-f", "6", "-H"]).out).toContain("Volatile Write Cache Enable (WCE): Enabled");
  });

  test("what the controller does not support fails with its own status, named, exit 1", () => {
    const r = libnvm(["get-feature", ctrlAddress(), "-f", "0x7f"]);
    expect(r.code).toBe(1);
    expect(r.err).toBe("libnvm get-feature: NvmeStatusError: Get Features(0x0a) FID 0x7f (Namespace Metadata): Invalid Field in Command (sct 0x0 generic / sc 0x2) DNR [sqid 0, cid 1]\n");
    const s = libnvm(["set-feature", ctrlAddress(), "-f", "6", "-v", "1", "--save"]);
    expect(s.code).toBe(1);
    expect(s.err).toMatch(/^libnvm set-feature: NvmeStatusError: Set Features\(0x09\) FID 0x06 \(Volatile Write Cache\): Feature Identifier Not Saveable \(sct 0x1 command specific \/ sc 0xd\)/);
  });
});

describe("I/O", () => {
  test("write, compare, read: a 5 MiB round trip in commands of at most MDTS", () => {
    const exp = requireExpected();
    const n = exp.namespaces[0]!;
    const data = randomFile("in.bin", 5 * 1024 * 1024 + 1000);
    const w = ok(["write", ctrlAddress(), "-n", String(n.nsid), "-s", "2048", "-d", join(dir, "in.bin")]);
    const blocks = Math.ceil(data.length / n.lbaSize);
    const mdtsBlocks = (4096 * 2 ** exp.mdts!) / n.lbaSize;
    const commands = Math.ceil(blocks / mdtsBlocks);
    expect(w.err).toMatch(new RegExp(`^write: ${blocks * n.lbaSize} bytes, ${blocks} blocks, ${commands} commands \\+ Flush, [0-9.]+ s, [0-9.]+ MiB/s \\(${blocks * n.lbaSize - data.length} bytes of zero padding\\)\n$`));
    const c = ok(["compare", ctrlAddress(), "-n", String(n.nsid), "-s", "2048", "-d", join(dir, "in.bin")]);
    expect(c.err).toBe(`compare: Success, ${blocks} blocks from LBA 2048 equal ${join(dir, "in.bin")} (${commands} commands)\n`);
    const r = ok(["read", ctrlAddress(), "-n", String(n.nsid), "-s", "2048", "-z", String(data.length), "-d", join(dir, "out.bin")]);
    expect(r.err).toContain(`read: ${blocks * n.lbaSize} bytes, ${blocks} blocks, ${commands} commands`);
    expect(Buffer.compare(readFileSync(join(dir, "out.bin")), data)).toBe(0);
    // stdin and stdout, -c 0's based as nvme-cli's: -c 3 is four blocks.
    const four = data.subarray(0, 4 * n.lbaSize);
    ok(["write", ctrlAddress(), "-n", String(n.nsid), "-s", "100", "-c", "3"], four);
    const back = ok(["read", ctrlAddress(), "-n", String(n.nsid), "-s", "100", "-c", "3"]);
    expect(Buffer.compare(back.bytes, four)).toBe(0);
  });

  test("write-zeroes: the blocks read back as zeros; compare then fails with exit 4", () => {
    const n = requireExpected().namespaces[0]!;
    const data = randomFile("wz.bin", 64 * n.lbaSize);
    ok(["write", ctrlAddress(), "-n", String(n.nsid), "-s", "5000", "-d", join(dir, "wz.bin")]);
    expect(ok(["write-zeroes", ctrlAddress(), "-n", String(n.nsid), "-s", "5010", "-c", "9"]).out).toBe("write-zeroes: Success, 10 blocks from LBA 5010 (1 command)\n");
    const back = ok(["read", ctrlAddress(), "-n", String(n.nsid), "-s", "5000", "-c", "63"]).bytes;
    expect(back.subarray(10 * n.lbaSize, 20 * n.lbaSize).every((b) => b === 0)).toBe(true);
    expect(Buffer.compare(back.subarray(0, 10 * n.lbaSize), data.subarray(0, 10 * n.lbaSize))).toBe(0);
    expect(Buffer.compare(back.subarray(20 * n.lbaSize), data.subarray(20 * n.lbaSize))).toBe(0);
    const c = libnvm(["compare", ctrlAddress(), "-n", String(n.nsid), "-s", "5000", "-d", join(dir, "wz.bin")]);
    expect(c.code).toBe(4);
    expect(c.err).toBe(`libnvm compare: MismatchError: Compare Failure: blocks 5000..5063 of namespace ${n.nsid} differ from ${join(dir, "wz.bin")}\n`);
  });

  test("dsm --ad: deallocated blocks read as zeros (QEMU's DLFEAT); flush", () => {
    const n = requireExpected().namespaces[1]!;
    randomFile("dsm.bin", 32 * n.lbaSize);
    ok(["write", ctrlAddress(), "-n", String(n.nsid), "-s", "64", "-d", join(dir, "dsm.bin")]);
    const dlfeat = json(["id-ns", ctrlAddress(), "-n", String(n.nsid)]).dlfeat;
    expect(dlfeat & 7).toBe(1); // deallocated blocks read as 00h
    expect(ok(["dsm", ctrlAddress(), "-n", String(n.nsid), "--ad", "-s", "64,80", "-b", "8,16"]).out).toBe("dsm: Success, 2 ranges deallocated\n");
    const back = ok(["read", ctrlAddress(), "-n", String(n.nsid), "-s", "64", "-c", "31"]).bytes;
    expect(back.subarray(0, 8 * n.lbaSize).every((b) => b === 0)).toBe(true);
    expect(back.subarray(8 * n.lbaSize, 16 * n.lbaSize).some((b) => b !== 0)).toBe(true);
    expect(back.subarray(16 * n.lbaSize).every((b) => b === 0)).toBe(true);
    expect(ok(["flush", ctrlAddress(), "-n", String(n.nsid)]).out).toBe(`flush: Success, namespace ${n.nsid}\n`);
  });

  test("usage errors: exit 2 and one line on stderr, the controller untouched", () => {
    for (const [args, message] of [
      [["read", ctrlAddress(), "-n", "1"], "give --block-count (0's based) or --data-size"],
      [["format", ctrlAddress(), "-n", "1", "--ses", "9", "-l", "0"], "--ses=9: at most 2"],
      [["id-ns", ctrlAddress(), "--nsid", "1"], "unknown option '--nsid'"],
    ] as const) {
      const r = libnvm([...args]);
      expect(r.code).toBe(2);
      expect(r.out).toBe("");
      expect(r.err.trimEnd().split("\n")).toEqual([expect.stringContaining(message)]);
    }
  });

  test("a range past the end is refused before anything is sent: exit 2, one line", () => {
    const n = requireExpected().namespaces[0]!;
    const blocks = n.sizeBytes / n.lbaSize;
    const r = libnvm(["read", ctrlAddress(), "-n", String(n.nsid), "-s", String(blocks - 1), "-c", "1", "-d", join(dir, "past.bin")]);
    expect(r.code).toBe(2);
    expect(r.err).toBe(`libnvm read: InvalidArgumentError: LBA ${blocks - 1}+2 past NSZE ${blocks} of namespace ${n.nsid}\n`);
  });

  test("progress on a terminal for a long transfer (script(1) gives it a pty)", () => {
    const n = requireExpected().namespaces[0]!;
    const count = (16 * 1024 * 1024) / n.lbaSize;
    const cmd = `bun bin/libnvm.ts read ${ctrlAddress()} -n ${n.nsid} -c ${count - 1} -d ${join(dir, "tty.bin")}`;
    const p = Bun.spawnSync(["script", "-qec", cmd, "/dev/null"], { cwd: REPO, stdout: "pipe", stderr: "pipe" });
    const out = p.stdout.toString();
    expect(p.exitCode).toBe(0);
    expect(out).toContain("read [");
    expect(out).toContain("100% 16.0/16.0 MiB");
    expect(out).toContain("\r\x1b[K");
  });
});

describe("format", () => {
  test("format changes the LBA size and every command sees it; metadata formats allowed and shown; Invalid Format named", () => {
    const n = requireExpected().namespaces[1]!;
    const ns = String(n.nsid);
    const lbafs: { ds: number; ms: number }[] = json(["id-ns", ctrlAddress(), "-n", ns]).lbafs;
    const lbafOf = (bytes: number, ms: number) => lbafs.findIndex((f) => 2 ** f.ds === bytes && f.ms === ms);
    const original = lbafOf(n.lbaSize, 0);
    const small = lbafOf(512, 0);
    const withMetadata = lbafOf(4096, 8);
    try {
      randomFile("before.bin", 4 * n.lbaSize);
      ok(["write", ctrlAddress(), "-n", ns, "-d", join(dir, "before.bin")]);

      // To 512-byte blocks with a user data erase: the namespace reports it, the data is gone.
      const f = ok(["format", ctrlAddress(), "-n", ns, "--lbaf", String(small), "--ses", "1", "--force"]);
      const blocks512 = n.sizeBytes / 512;
      expect(f.out).toMatch(new RegExp(`^Success formatting namespace:${n.nsid.toString(16)}\nnamespace ${n.nsid}: LBA format ${small}, 512 B blocks, ${blocks512} blocks \\(.*\\), [0-9.]+ s\n$`));
      const id = json(["id-ns", ctrlAddress(), "-n", ns]);
      expect(id.flbas & 0xf).toBe(small);
      expect(id.nsze).toBe(blocks512);
      const listed = json(["list"]).Devices.find((d: { NameSpace: number }) => d.NameSpace === n.nsid);
      expect(listed).toMatchObject({ SectorSize: 512, MaximumLBA: blocks512, PhysicalSize: n.sizeBytes });
      expect(ok(["read", ctrlAddress(), "-n", ns, "-c", "31"]).bytes.every((b) => b === 0)).toBe(true);
      // I/O in the new size: 3 blocks are 1536 bytes now.
      const data = randomFile("512.bin", 3 * 512);
      expect(ok(["write", ctrlAddress(), "-n", ns, "-s", "7", "-d", join(dir, "512.bin")]).err).toContain("1536 bytes, 3 blocks");
      expect(Buffer.compare(ok(["read", ctrlAddress(), "-n", ns, "-s", "7", "-c", "2"]).bytes, data)).toBe(0);

      // To a format with metadata: allowed, id-ns shows it, I/O refuses it (exit 3).
      ok(["format", ctrlAddress(), "-n", ns, "-l", String(withMetadata), "--force"]);
      const md = json(["id-ns", ctrlAddress(), "-n", ns]);
      expect(md.flbas & 0xf).toBe(withMetadata);
      expect(md.lbafs[withMetadata]).toMatchObject({ ms: 8, ds: 12 });
      expect(ok(["id-ns", ctrlAddress(), "-n", ns]).out).toMatch(new RegExp(`^lbaf +${withMetadata} : ms:8 +lbads:12 rp:0 \\(in use\\)$`, "m"));
      const r = libnvm(["read", ctrlAddress(), "-n", ns, "-c", "0", "-d", join(dir, "md.bin")]);
      expect(r.code).toBe(3);
      expect(r.err).toContain("libnvm read: UnsupportedError: namespace 2 on");
      expect(r.err).toContain("is formatted with metadata");

      // A format the namespace does not have: the controller's status, named, exit 1.
      const bad = libnvm(["format", ctrlAddress(), "-n", ns, "--lbaf", String(md.nlbaf + 1), "--force"]);
      expect(bad.code).toBe(1);
      expect(bad.err).toMatch(/^libnvm format: NvmeStatusError: Format NVM\(0x80\) NSID 2, LBAF \d+: Invalid Format \(sct 0x1 command specific \/ sc 0xa\) DNR/);
    } finally {
      // Back as QEMU started it, by block size, with JSON out.
      const back = json(["format", ctrlAddress(), "-n", ns, "--block-size", String(n.lbaSize), "--force"]);
      expect(back).toMatchObject({ nsid: n.nsid, lbaf: original, lbaSize: n.lbaSize, metadataSize: 0, nsze: n.sizeBytes / n.lbaSize });
    }
    expect(json(["id-ns", ctrlAddress(), "-n", ns]).nsze).toBe(n.sizeBytes / n.lbaSize);
  });

  test("without --force it warns on stderr and waits 10 s for Ctrl-C (SIGINT: the controller is closed, exit 130, nothing formatted)", async () => {
    const n = requireExpected().namespaces[1]!;
    const p = Bun.spawn(["bun", "bin/libnvm.ts", "format", ctrlAddress(), "-n", String(n.nsid), "--lbaf", "0"], { cwd: REPO, stdout: "pipe", stderr: "pipe" });
    try {
      const reader = p.stderr.getReader();
      let err = "";
      const deadline = Date.now() + 30_000;
      // One read outstanding at a time: a read left behind by the timeout would swallow a chunk.
      let pending = reader.read();
      while (!err.includes("Use --force") && Date.now() < deadline) {
        const c = await Promise.race([pending, Bun.sleep(1000).then(() => undefined)]);
        if (!c) continue;
        if (c.done) break;
        err += new TextDecoder().decode(c.value);
        pending = reader.read();
      }
      expect(err).toContain(`You are about to format namespace ${n.nsid} of ${ctrlAddress()} to LBA format 0.`);
      expect(err).toContain("You have 10 seconds to press Ctrl-C to cancel.");
      p.kill("SIGINT");
      expect(await p.exited).toBe(130);
    } finally {
      p.kill("SIGKILL");
    }
    const id = json(["id-ns", ctrlAddress(), "-n", String(n.nsid)]);
    expect(2 ** id.lbafs[id.flbas & 0xf].ds).toBe(n.lbaSize);
  });
});

describe("tools", () => {
  test("perf: a second of random reads, JSON with IOPS", () => {
    const r = ok(["perf", ctrlAddress(), "--ns=1", "--seconds=1", "--qd=4", "--json"]);
    const j = JSON.parse(r.out);
    expect(j.total.ios).toBeGreaterThan(0);
    expect(j.total.errors).toBe(0);
  });

  test("doctor: sysfs works here; reset: disabled and enabled again", () => {
    const d = ok(["doctor", ctrlAddress()]).out;
    expect(d).toContain("sysfs   works now");
    expect(d).toContain(`use:    libnvm id-ctrl ${ctrlAddress()}   # sysfs`);
    expect(json(["doctor", ctrlAddress()]).recommended).toBe("sysfs");
    const r = json(["reset", ctrlAddress()]);
    expect(r).toMatchObject({ controller: ctrlAddress(), resets: 1, sn: requireExpected().serial });
    expect(r.csts & 1).toBe(1); // CSTS.RDY
    expect(ok(["reset", ctrlAddress()]).out).toMatch(new RegExp(`^reset: ${ctrlAddress()} \\(sn ${requireExpected().serial}\\): disabled and enabled again in [0-9.]+ ms; CSTS 0x1\n$`));
  });

  test("bash completion offers this machine's controller", () => {
    const script = ok(["completion", "bash"]).out;
    const p = Bun.spawnSync(["bash", "-c", `${script}\nCOMP_WORDS=(libnvm id-ctrl ''); COMP_CWORD=2; _libnvm; printf '%s\\n' "\${COMPREPLY[@]}"`], { stdout: "pipe", stderr: "pipe" });
    expect(p.stdout.toString().split("\n")).toContain(ctrlAddress());
  });
});
