/**
 * CI entry point for the hardware tests: boots the QEMU guest with the test controller and runs
 * `bun test ./test/hw` in it (from the repo root). Exits 0 only when the guest command exited 0 and
 * bun reports at least one pass, no fail, no skip, no todo, and pass == "Ran N tests".
 *
 * For ./test/hw (not another --dir), when the bun tests passed the guest then runs
 * test/hw/blocktools.sh (the block tools end to end: each namespace written whole with a pattern and
 * read back), and after the guest powered off every namespace image is checked byte for byte on the
 * host against the pattern xchg/images.json names. Each blocktools check and each image counts.
 *
 * The last line is always `hw: N passed, M failed`, preceded by `hw: FAILED: <reason>` on failure.
 * M counts failed, skipped and todo tests; a run that failed without any of them (guest did not boot,
 * controller missing, no test ran, ...) reports at least 1 failed, so "0 failed" always means success.
 *
 *   bun test/vm/hw.ts                            # every suite (a suite marked onlyWhenNamed runs inside another's boot)
 *   bun test/vm/hw.ts --suite vfio-io,smartio    # some of them
 *   bun test/vm/hw.ts --dir ./test/vm/_selftest  # harness self-check
 *   options: --dir D  --env K=V  --no-ctrl  --timeout SEC  --quiet
 */
import { readFile, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { verifyFile } from "../hw/pattern.ts";
import { cleanup, REPO_ROOT, runInGuest, type GuestConfig, type GuestResult } from "./run.ts";

export const TEST_CONFIG: GuestConfig = {
  serial: "deadbeef",
  // 4 MiB transfers: their PRP lists (1024 entries) chain across list pages on the controller.
  mdts: 10,
  namespaces: [
    { nsid: 1, sizeBytes: 64 * 1024 * 1024, lbaSize: 512 },
    { nsid: 2, sizeBytes: 32 * 1024 * 1024, lbaSize: 4096 },
  ],
};

const CTRL_MISSING = "libnvm-hw: controller missing";

export interface BunSummary {
  pass: number;
  fail: number;
  skip: number;
  todo: number;
  ran: number;
  files: number;
}

export interface BlocktoolsSummary {
  pass: number;
  fail: number;
  /** The closing `blocktools: N passed, M failed` line was seen (the script ran to its end). */
  finished: boolean;
}

/** Count `blocktools: ok` / `blocktools: FAIL` lines in `output`. */
export function parseBlocktools(output: string): BlocktoolsSummary {
  const text = output.replaceAll("\r", "");
  const pass = [...text.matchAll(/^blocktools: ok /gm)].length;
  const fail = [...text.matchAll(/^blocktools: FAIL /gm)].length;
  const end = [...text.matchAll(/^blocktools: (\d+) passed, (\d+) failed$/gm)].at(-1);
  return { pass, fail, finished: end !== undefined && Number(end[1]) === pass && Number(end[2]) === fail };
}

/**
 * Check each namespace image against the pattern the guest says it wrote (xchg/images.json,
 * [{nsid, seed, bytes}]): the whole image, byte for byte. One line per image; returns the counts.
 */
export async function verifyImages(r: GuestResult, config: GuestConfig): Promise<{ pass: number; fail: number; reasons: string[] }> {
  const out = { pass: 0, fail: 0, reasons: [] as string[] };
  let entries: { nsid: number; seed: number; bytes: number }[];
  try {
    entries = JSON.parse(await readFile(join(r.xchgDir, "images.json"), "utf8"));
    if (!Array.isArray(entries)) throw new Error("not a JSON array");
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === "ENOENT" ? "missing" : (e as Error).message;
    out.fail = Math.max(config.namespaces.length, 1);
    out.reasons.push(`xchg/images.json: ${why}`);
    return out;
  }
  for (const [i, ns] of config.namespaces.entries()) {
    const what = `image of namespace ${ns.nsid}`;
    const t0 = performance.now();
    const e = entries.find((x) => x?.nsid === ns.nsid);
    const image = r.images[i];
    let bad: string | undefined;
    if (!e) bad = "not in images.json (blocktools did not write it)";
    else if (e.bytes !== ns.sizeBytes) bad = `images.json says ${e.bytes} bytes of pattern, the namespace has ${ns.sizeBytes}`;
    else if (!image) bad = "no image file";
    else {
      try {
        const size = Bun.file(image).size;
        const at = verifyFile(image, e.seed, e.bytes);
        if (size !== ns.sizeBytes) bad = `${image} is ${size} bytes, expected ${ns.sizeBytes}`;
        else if (at >= 0) bad = `${image} differs from pattern ${e.seed} at byte ${at} (LBA ${Math.floor(at / ns.lbaSize)})`;
      } catch (err) {
        bad = `${image}: ${(err as Error).message}`;
      }
    }
    if (bad === undefined) {
      out.pass++;
      console.log(`hw: ok ${what}: ${ns.sizeBytes} bytes match pattern ${e!.seed} (${((performance.now() - t0) / 1000).toFixed(2)} s)`);
    } else {
      out.fail++;
      out.reasons.push(`${what}: ${bad}`);
      console.log(`hw: FAIL ${what}: ${bad}`);
    }
  }
  return out;
}

/** The last `bun test` summary in `output`, or undefined when there is none. */
export function parseBunSummary(output: string): BunSummary | undefined {
  // eslint-disable-next-line no-control-regex
  const text = output.replace(/\x1b\[[0-9;]*m/g, "").replaceAll("\r", "");
  const ranAll = [...text.matchAll(/^Ran (\d+) tests? across (\d+) files?\./gm)];
  const ranM = ranAll.at(-1);
  if (!ranM) return undefined;
  // Only the block just before that "Ran" line is the summary.
  const block = text.slice(0, ranM.index).split("\n").slice(-12).join("\n");
  const count = (word: string) => {
    const m = [...block.matchAll(new RegExp(`^\\s*(\\d+) ${word}$`, "gm"))].at(-1);
    return m ? Number(m[1]) : 0;
  };
  return {
    pass: count("pass"),
    fail: count("fail"),
    skip: count("skip"),
    todo: count("todo"),
    ran: Number(ranM[1]),
    files: Number(ranM[2]),
  };
}

/** One guest boot: a configuration and the test paths run in it. */
export interface Suite {
  readonly name: string;
  /** Directories or files for `bun test` (./-prefixed). */
  readonly dir: string;
  readonly more?: readonly string[];
  readonly config: GuestConfig;
  /** Shell run in the guest before the tests (e.g. bind the controller to a driver). */
  readonly prelude?: string;
  /** Extra environment for the tests. */
  readonly env?: Record<string, string>;
  /** Run test/hw/blocktools.sh after the bun tests and check the images from the host. */
  readonly blocktools?: boolean;
  /**
   * Booted only when named (--suite): its tests already run inside another suite's boot in CI,
   * and this is the way to run them alone.
   */
  readonly onlyWhenNamed?: boolean;
}

/** Blocks the fault namespace's blkdebug rules poison (test/hw-faults/faults.test.ts reads them from here). */
const FAULT_BLKDEBUG = (readSector: number, writeSector: number) =>
  [
    `[inject-error]\nevent = "read_aio"\nerrno = "5"\nsector = "${readSector}"\n`,
    `[inject-error]\nevent = "write_aio"\nerrno = "5"\nsector = "${writeSector}"\n`,
  ].join("\n");

/** Faults injected by QEMU's block layer (media errors by blkdebug, stalls by throttle), and metadata formats. */
export const FAULT_CONFIG: GuestConfig = {
  serial: "faulty01",
  namespaces: [
    { nsid: 1, sizeBytes: 16 * 1024 * 1024, lbaSize: 4096 },
    // 4096-byte blocks: LBA 100 is sector 800 of the image, LBA 200 sector 1600.
    { nsid: 2, sizeBytes: 16 * 1024 * 1024, lbaSize: 4096, fault: { blkdebug: FAULT_BLKDEBUG(800, 1600) } },
    { nsid: 3, sizeBytes: 8 * 1024 * 1024, lbaSize: 512, fault: { throttleIops: 4 } },
    // Metadata formats libnvm must refuse (test/hw-faults/metadata.test.ts): separate, extended, with PI.
    { nsid: 4, sizeBytes: 4 * 1024 * 1024, lbaSize: 512, metadata: { ms: 8, extended: false } },
    { nsid: 5, sizeBytes: 4 * 1024 * 1024, lbaSize: 512, metadata: { ms: 8, extended: true } },
    { nsid: 6, sizeBytes: 4 * 1024 * 1024, lbaSize: 512, metadata: { ms: 8, extended: true, pi: 1 } },
  ],
};

/** q35 with QEMU's Intel IOMMU: interrupt remapping is needed for VFIO type1; no_timer_check avoids a boot panic under load. */
export const IOMMU_CONFIG: GuestConfig = {
  ...TEST_CONFIG,
  machine: "q35",
  extraQemuArgs: ["-device", "intel-iommu,intremap=on"],
  kernelArgs: ["intel_iommu=on", "no_timer_check"],
};

/**
 * dma-buf import (test/hw-dmabuf): Debian's 6.12 kernel, whose udmabuf (CONFIG_UDMABUF=y) makes
 * dma-bufs of memfd pages (6.1 has none), on q35 with the IOMMU translating, so the exporter's
 * addresses are IOVAs of the controller's own domain. Namespace 2 is throttled (QEMU's throttle
 * filter) so the release and revocation tests find their commands still in flight.
 */
export const DMABUF_CONFIG: GuestConfig = {
  ...IOMMU_CONFIG,
  kernel: "6.12",
  namespaces: [
    { nsid: 1, sizeBytes: 64 * 1024 * 1024, lbaSize: 512 },
    { nsid: 2, sizeBytes: 8 * 1024 * 1024, lbaSize: 4096, fault: { throttleIops: 8 } },
  ],
};

/**
 * NVMe/TCP (test/hw-tcp): Linux nvmet on loopback in the guest, configured by test/hw-tcp/target.sh,
 * whose KEY=VALUE facts the prelude exports for the tests. QEMU's controller is there but unused.
 */
export const TCP_CONFIG: GuestConfig = {
  serial: "tcp00001",
  namespaces: [{ nsid: 1, sizeBytes: 8 * 1024 * 1024, lbaSize: 512 }],
};

/** Bind the guest's controller to `driver` (loaded from the guest kernel's modules, or insmod'ed). */
const bindTo = (driver: string, load: string) =>
  [
    load,
    `echo ${driver} > /sys/bus/pci/devices/$LIBNVM_TEST_CTRL/driver_override`,
    `echo $LIBNVM_TEST_CTRL > /sys/bus/pci/drivers_probe`,
    `[ "$(basename "$(readlink /sys/bus/pci/devices/$LIBNVM_TEST_CTRL/driver)")" = ${driver} ] || { echo "could not bind the controller to ${driver}"; exit 98; }`,
  ].join(" && ");

const INSMOD_DISNVM = "insmod module/build/$LIBNVM_VM_KVER/disnvm.ko";

/** The backend-neutral tests, run again through each backend. */
const COMMON = ["./test/hw/controller.test.ts", "./test/hw/examples.test.ts", "./test/hw/cli-backend.test.ts", "./test/hw/gpu-queues.test.ts"];

/** q35 with the IOMMU translating lazily (DMA-FQ) for the disnvm suites. */
const DISNVM_IOMMU_CONFIG: GuestConfig = { ...IOMMU_CONFIG, kernelArgs: [...(IOMMU_CONFIG.kernelArgs ?? []), "iommu.strict=0"] };

/** The sharing tests through a disnvm-owned server (test/hw-share, and what only disnvm has). */
const SHARE_DISNVM = ["./test/hw-share", "./test/hw-disnvm/share.test.ts"];

/** SmartIO through the fake SISCI, which lends the vfio-pci-bound controller (test/hw-smartio). */
const SMARTIO = "./test/hw-smartio/smartio.test.ts";
/** The sharing protocol over SISCI (examples/serve.ts --sisci, clients on smartio-rpc:) through the same fake. */
const SMARTIO_RPC = "./test/hw-smartio/rpc.test.ts";

export const SUITES: readonly Suite[] = [
  { name: "hw", dir: "./test/hw", config: TEST_CONFIG, blocktools: true },
  {
    name: "tcp",
    dir: "./test/hw-tcp",
    config: TCP_CONFIG,
    prelude: `tcpenv="$(bash test/hw-tcp/target.sh)" || { echo "the nvmet target did not come up"; exit 95; }; set -a; eval "$tcpenv"; set +a`,
  },
  { name: "faults", dir: "./test/hw-faults", config: FAULT_CONFIG },
  // One controller, several processes (lib/share): examples/serve.ts owns it through sysfs, clients use unix:PATH.
  { name: "share", dir: "./test/hw-share", config: TEST_CONFIG },
  { name: "vfio", dir: "./test/hw-vfio", config: IOMMU_CONFIG },
  {
    name: "vfio-io",
    dir: "./test/hw/io.test.ts",
    // The SmartIO backend through the fake SISCI lends this same vfio-pci-bound controller: its
    // file rides on this boot rather than paying for one of its own (--suite smartio runs it alone).
    more: [...COMMON, SMARTIO, SMARTIO_RPC],
    config: IOMMU_CONFIG,
    prelude: bindTo("vfio-pci", "modprobe -d $LIBNVM_VM_MODROOT vfio-pci"),
    env: { LIBNVM_TEST_BACKEND: "vfio" },
  },
  {
    // The sharing suite again with the server on VFIO: clients map BAR0 through the device fd it
    // passes, and their memory is mapped in its IOMMU container.
    name: "share-vfio",
    dir: "./test/hw-share",
    config: IOMMU_CONFIG,
    prelude: bindTo("vfio-pci", "modprobe -d $LIBNVM_VM_MODROOT vfio-pci"),
    env: { LIBNVM_TEST_BACKEND: "vfio" },
  },
  {
    name: "smartio",
    dir: SMARTIO,
    more: [SMARTIO_RPC],
    config: IOMMU_CONFIG,
    prelude: bindTo("vfio-pci", "modprobe -d $LIBNVM_VM_MODROOT vfio-pci"),
    onlyWhenNamed: true,
  },
  {
    name: "disnvm-io",
    dir: "./test/hw/io.test.ts",
    // No IOMMU here: the module's access rule wants CAP_SYS_RAWIO (test/hw-disnvm/access.test.ts).
    more: [...COMMON, "./test/hw-disnvm/access.test.ts"],
    config: TEST_CONFIG,
    prelude: bindTo("disnvm", INSMOD_DISNVM),
    env: { LIBNVM_TEST_BACKEND: "disnvm", LIBNVM_TEST_DISNVM_ISOLATED: "0" },
  },
  {
    // The module behind a translating IOMMU: no CAP_SYS_RAWIO needed, memlock accounting, the
    // IOTLB flushed before unpinning. iommu.strict=0: a lazy (DMA-FQ) domain whatever the kernel's default.
    // The sharing suite through a disnvm-owned server rides on this boot (--suite share-disnvm runs it alone).
    name: "disnvm-iommu",
    dir: "./test/hw-disnvm/access.test.ts",
    more: ["./test/hw-disnvm/iommu.test.ts", ...SHARE_DISNVM],
    config: DISNVM_IOMMU_CONFIG,
    prelude: bindTo("disnvm", INSMOD_DISNVM),
    env: { LIBNVM_TEST_BACKEND: "disnvm", LIBNVM_TEST_DISNVM_ISOLATED: "1" },
  },
  {
    // The sharing suite with the server on the disnvm module: clients map BAR0 through its BAR-only
    // descriptor, and their memory is pinned through the server's file.
    name: "share-disnvm",
    dir: "./test/hw-share",
    more: ["./test/hw-disnvm/share.test.ts"],
    config: DISNVM_IOMMU_CONFIG,
    prelude: bindTo("disnvm", INSMOD_DISNVM),
    env: { LIBNVM_TEST_BACKEND: "disnvm", LIBNVM_TEST_DISNVM_ISOLATED: "1" },
    onlyWhenNamed: true,
  },
  {
    // One boot of the 6.12 guest: the module imports udmabuf and dma-heap buffers through the IOMMU.
    name: "dmabuf",
    dir: "./test/hw-dmabuf",
    config: DMABUF_CONFIG,
    prelude: [
      `[ -c /dev/udmabuf ] || { echo "no /dev/udmabuf in the $LIBNVM_VM_KVER guest: the dmabuf suite needs CONFIG_UDMABUF"; exit 96; }`,
      bindTo("disnvm", INSMOD_DISNVM),
    ].join(" && "),
    env: { LIBNVM_TEST_BACKEND: "disnvm" },
  },
  {
    // Every DMA mapping bounced through swiotlb (as in SEV/TDX guests): the module must refuse them.
    name: "disnvm-bounce",
    dir: "./test/hw-disnvm/bounce.test.ts",
    config: { ...TEST_CONFIG, kernelArgs: ["swiotlb=force"] },
    prelude: bindTo("disnvm", INSMOD_DISNVM),
    env: { LIBNVM_TEST_BACKEND: "disnvm" },
  },
];

interface SuiteResult {
  passed: number;
  failed: number;
  reasons: string[];
  /** Each failed test with what bun printed for it, repeated at the end of the run (CI logs keep only their tail). */
  failures: string[];
}

/**
 * Each "(fail)" line of bun's output after the lines it printed for that test (its error). Past
 * `max` lines, the first two thirds and the last third of them: the error's head names what
 * failed, its tail where (a long diff in between says little).
 */
export function failedTests(output: string, max = 60): string[] {
  // eslint-disable-next-line no-control-regex
  const lines = output.replace(/\x1b\[[0-9;]*m/g, "").replaceAll("\r", "").split("\n");
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    if (l.startsWith("(pass)") || l.startsWith("(skip)") || l.startsWith("(todo)")) start = i + 1;
    else if (l.startsWith("(fail)")) {
      const body = lines.slice(start, i);
      const head = Math.ceil((max * 2) / 3);
      const kept = body.length <= max ? body : [...body.slice(0, head), `... (${body.length - max} lines left out) ...`, ...body.slice(body.length - (max - head))];
      out.push([...kept, l].join("\n"));
      start = i + 1;
    } else if (/^\S+\.test\.ts:$/.test(l)) start = i + 1;
  }
  return out;
}

async function runSuite(suite: Suite, env: Record<string, string>, timeoutSec: number, echo: boolean): Promise<SuiteResult> {
  const { dir, config } = suite;
  const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
  const script = [
    // The slot may hold another device when the controller is absent: check the NVMe class code.
    `if [ "$(cat "/sys/bus/pci/devices/$LIBNVM_TEST_CTRL/class" 2>/dev/null)" != 0x010802 ]; then`,
    `  echo "${CTRL_MISSING}: no NVMe controller at $LIBNVM_TEST_CTRL in the guest"; lspci -nn 2>/dev/null; exit 97`,
    `fi`,
    ...(suite.prelude ? [suite.prelude] : []),
    // TCG is slow: a test gets 120 s, not bun's default 5 s.
    `bun test --timeout 120000 ${[dir, ...(suite.more ?? [])].map(q).join(" ")} 2>&1`,
    // Only after a clean bun run; the guest's status is bun's when it failed, else the script's.
    ...(suite.blocktools ? [`rc=$?`, `[ $rc -eq 0 ] || exit $rc`, `bash test/hw/blocktools.sh 2>&1`] : []),
  ].join("\n");

  const reasons: string[] = [];
  let summary: BunSummary | undefined;
  let tools: BlocktoolsSummary | undefined;
  let images: { pass: number; fail: number } | undefined;
  let failures: string[] = [];
  try {
    const r = await runInGuest(script, config, { env: { ...env, ...suite.env }, timeoutSec, echo });
    failures = failedTests(r.output);
    process.stderr.write(`hw[${suite.name}]: guest run took ${(r.durationMs / 1000).toFixed(1)} s\n`);
    summary = parseBunSummary(r.output);
    if (r.timedOut) reasons.push(`guest timed out after ${timeoutSec} s`);
    else if (!r.booted) reasons.push("guest did not boot");
    else if (r.error) reasons.push(r.error);
    else if (r.output.includes(CTRL_MISSING)) reasons.push(`controller missing (no ${r.ctrl} in the guest)`);
    else if (!summary) reasons.push(`no hardware test ran (no bun test summary; bun test ${dir} exited ${r.code})`);
    if (summary) {
      if (summary.fail > 0) reasons.push(`${summary.fail} test(s) failed`);
      if (summary.skip > 0 || summary.todo > 0) {
        reasons.push(`${summary.skip} skipped and ${summary.todo} todo: hardware tests must run, not skip`);
      }
      if (summary.pass < 1) reasons.push("no hardware test ran (0 passed)");
      else if (summary.pass !== summary.ran && reasons.length === 0) {
        reasons.push(`${summary.pass} passed but bun ran ${summary.ran}`);
      }
    }
    // The guest runs blocktools.sh only after bun exited 0; look at it then, or whenever it printed.
    const bunClean = summary !== undefined && r.booted && reasons.length === 0;
    if (suite.blocktools && (bunClean || /^blocktools: /m.test(r.output))) {
      tools = parseBlocktools(r.output);
      if (tools.fail > 0) reasons.push(`${tools.fail} blocktools check(s) failed`);
      if (!tools.finished) reasons.push(`test/hw/blocktools.sh did not finish (no matching "blocktools: N passed, M failed" line)`);
      else if (tools.pass < 1) reasons.push("blocktools ran no check");
      const t0 = performance.now();
      const v = await verifyImages(r, config);
      images = v;
      reasons.push(...v.reasons);
      process.stderr.write(`hw[${suite.name}]: image check took ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    }
    if (reasons.length === 0 && r.code !== 0) reasons.push(`guest command exited with status ${r.code}`);
    if (reasons.length === 0) await cleanup(r);
    else {
      // The serial console says why a guest died (a panic, the OOM killer); keep it with the rest.
      await writeFile(join(r.tmpDir, "console.log"), r.console);
      process.stderr.write(`hw[${suite.name}]: kept ${r.tmpDir} (console.log, xchg/output.log) for inspection\n`);
    }
  } catch (e) {
    reasons.push(`harness error: ${e instanceof Error ? e.message : String(e)}`);
  }
  const passed = (summary?.pass ?? 0) + (tools?.pass ?? 0) + (images?.pass ?? 0);
  let failed = (summary?.fail ?? 0) + (summary?.skip ?? 0) + (summary?.todo ?? 0) + (tools?.fail ?? 0) + (images?.fail ?? 0);
  if (reasons.length > 0 && failed === 0) failed = 1;
  console.log(`hw[${suite.name}]: ${passed} passed, ${failed} failed${reasons.length ? ` (${reasons.join("; ")})` : ""}`);
  return { passed, failed, reasons, failures };
}

async function main(argv: string[]): Promise<number> {
  let suites: Suite[] = SUITES.filter((s) => !s.onlyWhenNamed);
  const env: Record<string, string> = {};
  let timeoutSec = 900;
  let echo = true;
  let noController = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const next = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === "--dir") {
      // `bun test` treats an argument without ./ or / as a name filter inside the configured root
      // (bunfig.toml: test/unit); with ./ it is a path, anywhere.
      let dir = next();
      if (!dir.startsWith("./") && !dir.startsWith("/") && !dir.startsWith("../")) dir = `./${dir}`;
      const known = SUITES.find((s) => resolve(REPO_ROOT, s.dir) === resolve(REPO_ROOT, dir));
      suites = [known ?? { name: dir.replace(/^\.\//, ""), dir, config: TEST_CONFIG }];
    } else if (a === "--suite") {
      const names = next().split(",");
      suites = SUITES.filter((s) => names.includes(s.name));
      if (suites.length !== names.length) throw new Error(`--suite: known suites are ${SUITES.map((s) => s.name).join(", ")}`);
    } else if (a === "--env") {
      const kv = next();
      const eq = kv.indexOf("=");
      if (eq < 1) throw new Error("--env K=V");
      env[kv.slice(0, eq)] = kv.slice(eq + 1);
    } else if (a === "--no-ctrl") noController = true;
    else if (a === "--timeout") timeoutSec = Number(next());
    else if (a === "--quiet") echo = false;
    else throw new Error(`unknown option ${a}`);
  }
  let passed = 0;
  let failed = 0;
  const reasons: string[] = [];
  const failures: string[] = [];
  for (const suite of suites) {
    const r = await runSuite(noController ? { ...suite, config: { ...suite.config, noController: true } } : suite, env, timeoutSec, echo);
    passed += r.passed;
    failed += r.failed;
    reasons.push(...r.reasons.map((x) => `${suite.name}: ${x}`));
    failures.push(...r.failures.map((x) => `hw[${suite.name}] ${x}`));
  }
  if (failures.length > 0) console.log(`hw: the failed tests again:\n${failures.join("\n\n")}\n`);
  if (reasons.length > 0) console.log(`hw: FAILED: ${reasons.join("; ")}`);
  console.log(`hw: ${passed} passed, ${failed} failed`);
  return reasons.length === 0 ? 0 : 1;
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      console.log(`hw: FAILED: ${e instanceof Error ? e.message : String(e)}`);
      console.log("hw: 0 passed, 1 failed");
      process.exit(1);
    },
  );
}
