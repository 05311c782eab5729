/**
 * The command-line tools, unchanged, through whichever backend the suite runs (test/vm/hw.ts runs
 * this file through sysfs, VFIO and disnvm): identify, then a write-blocks / read-blocks round trip.
 */
import { expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ctrlAddress, REPO, requireExpected } from "./common.ts";

/**
 * What the sysfs backend says, once per process, when it reserves hugepages on a machine that has
 * none free (test/hw/hugepages.test.ts checks it); nothing else may reach stderr.
 */
const HUGEPAGE_NOTICE = /^libnvm: no free 2 MiB hugepage for DMA memory: raised \S+ from \d+ to \d+ .*\n/;

function tool(args: string[]) {
  const p = Bun.spawnSync(["bun", ...args], { cwd: REPO, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

test("identify prints the controller and every namespace", () => {
  const exp = requireExpected();
  const r = tool(["examples/identify.ts", `--ctrl=${ctrlAddress()}`]);
  expect(r.err.replace(HUGEPAGE_NOTICE, "")).toBe("");
  expect(r.code).toBe(0);
  expect(r.out).toContain(`Serial Number           : ${exp.serial}`);
  expect(r.out).toContain("Model Number            : QEMU NVMe Ctrl");
  for (const ns of exp.namespaces) {
    expect(r.out).toContain(`------------- Namespace ${ns.nsid} information -------------`);
    expect(r.out).toContain(`Namespace size          : ${ns.sizeBytes / ns.lbaSize} blocks (${ns.sizeBytes} bytes)`);
  }
});

test("write-blocks then read-blocks round-trips a file bit for bit", () => {
  const exp = requireExpected().namespaces[1]!;
  const dir = mkdtempSync(join(process.env.TMPDIR ?? "/tmp", "tools-"));
  try {
    const data = new Uint8Array(3 * 1024 * 1024 + 1234); // not a whole number of blocks: zero-padded
    crypto.getRandomValues(data);
    writeFileSync(join(dir, "in.bin"), data);
    const w = tool(["examples/write-blocks.ts", `--ctrl=${ctrlAddress()}`, `--ns=${exp.nsid}`, "--lba=16", `--input=${join(dir, "in.bin")}`]);
    expect(w.code).toBe(0);
    const blocks = Math.ceil(data.length / exp.lbaSize);
    const r = tool(["examples/read-blocks.ts", `--ctrl=${ctrlAddress()}`, `--ns=${exp.nsid}`, "--lba=16", `--count=${blocks}`, `--output=${join(dir, "out.bin")}`]);
    expect(r.code).toBe(0);
    const back = readFileSync(join(dir, "out.bin"));
    expect(back.length).toBe(blocks * exp.lbaSize);
    expect(Buffer.compare(back.subarray(0, data.length), data)).toBe(0);
    expect(back.subarray(data.length).every((b) => b === 0)).toBe(true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
