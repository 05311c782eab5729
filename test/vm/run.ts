/**
 * Boot a throw-away QEMU (TCG) guest with an emulated NVMe controller and run a shell script in it.
 *
 * The guest runs the HOST's own root file system (9p, read-only) in a chroot, so the project checkout,
 * Bun and the C library build are used unchanged. A per-run temp dir is shared read-write as /run/xchg:
 * run.ts writes cmd.sh and env there, the guest's /init (test/vm/init.sh) writes output.log and rc.
 * Provision the kernel and initramfs first with `bash test/vm/setup.sh`.
 *
 * Library use:
 *   const r = await runInGuest("bun test ./test/hw", { serial: "deadbeef", namespaces: [...] });
 *   r.code; r.output; r.images; await cleanup(r);
 *
 * CLI:
 *   bun test/vm/run.ts [--serial S] [--ns 64M:512,32M:4096] [--mdts N] [--qpairs N] [--machine pc|q35]
 *                      [--kernel default|6.12] [--mem MiB] [--timeout SEC] [--env K=V]... [--kernel-arg A]...
 *                      [--qemu-arg A]... [--no-ctrl] [--keep] [--quiet] -- <shell command>
 */
import { mkdtemp, mkdir, open, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export interface NamespaceSpec {
  nsid: number;
  sizeBytes: number;
  lbaSize: 512 | 4096;
  /**
   * Faults injected by QEMU's own block layer under this namespace: `throttleIops` puts a
   * throttle filter (throttle-group x-iops-total) in front of the image so commands stall;
   * `blkdebug` is the text of a blkdebug config file ([inject-error] sections) so chosen
   * operations fail with an errno the controller turns into a media error status.
   */
  fault?: { throttleIops?: number; blkdebug?: string };
  /**
   * An LBA format with metadata: `ms` bytes per block, `extended` (mset=1) interleaved with the
   * data or else in a separate buffer (MPTR), and end-to-end protection information type `pi`.
   */
  metadata?: { ms: number; extended: boolean; pi?: 1 | 2 | 3 };
}

export interface GuestConfig {
  /** Controller serial number, e.g. "deadbeef". */
  serial: string;
  /** `-device nvme mdts=` (QEMU 7.2 default: 7, i.e. 512 KiB with 4 KiB pages). */
  mdts?: number;
  /** `-device nvme max_ioqpairs=` (QEMU 7.2 default: 64). */
  maxIoQpairs?: number;
  /** Each one a fresh zero-filled (sparse) raw image attached with `-device nvme-ns`. */
  namespaces: NamespaceSpec[];
  /** Default "pc". */
  machine?: "pc" | "q35";
  /**
   * Which guest kernel boots: "default" (the one linux-image-amd64 names, 6.1 on Debian 12) or
   * "6.12" (Debian's newest 6.12, cached in k612/: it has udmabuf, which 6.1 lacks). Default "default".
   */
  kernel?: GuestKernel;
  /** Default 2048. */
  memoryMiB?: number;
  extraQemuArgs?: string[];
  kernelArgs?: string[];
  /** Harness self-check only: boot WITHOUT the NVMe controller (the harness must then fail). */
  noController?: boolean;
}

/** The guest kernels test/vm/setup.sh provisions. */
export type GuestKernel = "default" | "6.12";

export interface GuestResult {
  /**
   * The command's exit status (from xchg/rc). 124: timed out (QEMU killed). 125: the command's status is
   * unknown: QEMU failed to start, the guest did not boot, or it died before the command finished
   * (see `error`).
   */
  code: number;
  /** The command's stdout+stderr (xchg/output.log; falls back to the console when that is missing). */
  output: string;
  /** The per-run exchange dir, /run/xchg in the guest (cmd.sh, env, output.log, rc). */
  xchgDir: string;
  /** Namespace image paths, in `config.namespaces` order; intact after the guest powered off. */
  images: string[];
  /** Everything written to the serial console (kernel, /init markers, the command's output). */
  console: string;
  /** True when the guest's /init ran (its "libnvm-vm: init started" marker was seen). */
  booted: boolean;
  timedOut: boolean;
  /** Set when `code` is not the command's own status. */
  error?: string;
  /** PCI address of the controller in the guest (also LIBNVM_TEST_CTRL there). */
  ctrl: string;
  /** Wall time from QEMU start to QEMU exit. */
  durationMs: number;
  /** Temp dir holding xchgDir and the images; `cleanup()` removes it. */
  tmpDir: string;
}

export interface RunOptions {
  /** Extra environment for the command (written to xchg/env). */
  env?: Record<string, string>;
  /** Hard timeout for the whole boot + run + power off; default 300. */
  timeoutSec?: number;
  /** Stream the serial console to the host's stderr; default true. */
  echo?: boolean;
  /** Called once QEMU runs: its pid and the exchange folder (host tools that watch the guest's run). */
  onStarted?: (qemu: { pid: number; xchgDir: string }) => void;
}

export const REPO_ROOT = resolve(import.meta.dir, "../..");
export const VM_CACHE = process.env.LIBNVM_VM_CACHE
  ? resolve(process.env.LIBNVM_VM_CACHE)
  : join(REPO_ROOT, ".cache/vm");

/** QEMU 7.2's defaults, reported in LIBNVM_TEST_EXPECT when the config leaves them unset. */
const QEMU_DEFAULT_MDTS = 7;
const QEMU_DEFAULT_MAX_IOQPAIRS = 64;
/** Slot of the NVMe controller on the root bus: free on both pc and q35. */
const CTRL_SLOT = 4;
const BOOT_MARKER = "libnvm-vm: init started";
// eslint-disable-next-line no-control-regex
const TERMINAL_ESCAPES = /\x1b(?:\[[0-9;?]*[A-Za-z]|[c78])/g;

function shQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/** QEMU option values: a comma is written as ",,". */
function qemuVal(s: string): string {
  return s.replaceAll(",", ",,");
}

function validate(config: GuestConfig): void {
  if (!config.serial || config.serial.length > 20) throw new Error(`serial must be 1..20 characters`);
  const seen = new Set<number>();
  for (const ns of config.namespaces) {
    if (!Number.isInteger(ns.nsid) || ns.nsid < 1 || ns.nsid > 256) throw new Error(`bad nsid ${ns.nsid}`);
    if (seen.has(ns.nsid)) throw new Error(`duplicate nsid ${ns.nsid}`);
    seen.add(ns.nsid);
    if (ns.lbaSize !== 512 && ns.lbaSize !== 4096) throw new Error(`nsid ${ns.nsid}: lbaSize must be 512 or 4096`);
    if (!Number.isSafeInteger(ns.sizeBytes) || ns.sizeBytes <= 0 || ns.sizeBytes % ns.lbaSize !== 0) {
      throw new Error(`nsid ${ns.nsid}: sizeBytes must be a positive multiple of ${ns.lbaSize}`);
    }
  }
  if (config.mdts !== undefined && (!Number.isInteger(config.mdts) || config.mdts < 0 || config.mdts > 255)) {
    throw new Error(`bad mdts ${config.mdts}`);
  }
  if (config.maxIoQpairs !== undefined && (!Number.isInteger(config.maxIoQpairs) || config.maxIoQpairs < 1)) {
    throw new Error(`bad maxIoQpairs ${config.maxIoQpairs}`);
  }
  if (config.kernel !== undefined && config.kernel !== "default" && config.kernel !== "6.12") throw new Error(`bad kernel ${config.kernel}`);
}

/** The guest-visible PCI address of the controller for a config. */
export function controllerBdf(_config: GuestConfig): string {
  // pc: 00.0 host bridge, 01.x PIIX3, 02.0 VGA, 03.0 (NIC, none with -net none); q35: 00.0, 01.0 VGA, 1f.x.
  return `0000:00:${CTRL_SLOT.toString(16).padStart(2, "0")}.0`;
}

/** The GuestConfig as the guest sees it in LIBNVM_TEST_EXPECT: defaults filled in, plus the BDF. */
export function expectedConfig(config: GuestConfig): GuestConfig & { ctrl: string } {
  return {
    serial: config.serial,
    mdts: config.mdts ?? QEMU_DEFAULT_MDTS,
    maxIoQpairs: config.maxIoQpairs ?? QEMU_DEFAULT_MAX_IOQPAIRS,
    namespaces: config.namespaces.map((n) => ({
      nsid: n.nsid,
      sizeBytes: n.sizeBytes,
      lbaSize: n.lbaSize,
      ...(n.fault ? { fault: n.fault } : {}),
      ...(n.metadata ? { metadata: n.metadata } : {}),
    })),
    machine: config.machine ?? "pc",
    ...(config.kernel && config.kernel !== "default" ? { kernel: config.kernel } : {}),
    memoryMiB: config.memoryMiB ?? 2048,
    ...(config.noController ? { noController: true } : {}),
    ctrl: controllerBdf(config),
  };
}

/** Where setup.sh put a kernel's files: the cache itself for the default kernel, k612/ for 6.12. */
export function kernelDir(kernel: GuestKernel = "default"): string {
  return kernel === "6.12" ? join(VM_CACHE, "k612") : VM_CACHE;
}

function vmFiles(kernel: GuestKernel | undefined): { vmlinux: string; initrd: string; modroot: string; kverFile: string } {
  const dir = kernelDir(kernel);
  const vmlinux = join(dir, "vmlinux");
  const initrd = join(dir, "initrd.gz");
  const kverFile = join(dir, "kernel-version");
  for (const f of [vmlinux, initrd, kverFile]) {
    if (!existsSync(f)) throw new Error(`${f} is missing: run \`bash test/vm/setup.sh\` first`);
  }
  return { vmlinux, initrd, modroot: join(dir, "root"), kverFile };
}

export async function runInGuest(script: string, config: GuestConfig, opts: RunOptions = {}): Promise<GuestResult> {
  validate(config);
  const echo = opts.echo ?? true;
  const timeoutSec = opts.timeoutSec ?? 300;
  const files = vmFiles(config.kernel);
  const kver = (await readFile(files.kverFile, "utf8")).trim();
  const ctrl = controllerBdf(config);

  const tmpDir = await mkdtemp(join(tmpdir(), "libnvm-vm-"));
  const xchgDir = join(tmpDir, "xchg");
  await mkdir(xchgDir);

  // Namespace images: sparse zero-filled raw files.
  const images: string[] = [];
  for (const ns of config.namespaces) {
    const img = join(tmpDir, `ns${ns.nsid}.img`);
    const fh = await open(img, "w");
    await fh.truncate(ns.sizeBytes);
    await fh.close();
    images.push(img);
  }

  // xchg/env: sourced by cmd.sh with `set -a`.
  const env: Record<string, string> = {
    LIBNVM_TEST_CTRL: ctrl,
    LIBNVM_TEST_EXPECT: JSON.stringify(expectedConfig(config)),
    LIBNVM_VM_XCHG: "/run/xchg",
    LIBNVM_VM_MODROOT: files.modroot,
    LIBNVM_VM_KVER: kver,
    ...opts.env,
  };
  let envText = "# written by test/vm/run.ts; sourced by cmd.sh\n";
  for (const [k, v] of Object.entries(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`bad environment variable name ${JSON.stringify(k)}`);
    envText += `${k}=${shQuote(v)}\n`;
  }
  await writeFile(join(xchgDir, "env"), envText);
  await mkdir(join(xchgDir, "bin"));
  await symlink(process.execPath, join(xchgDir, "bin", "bun"));
  await writeFile(
    join(xchgDir, "cmd.sh"),
    [
      "# written by test/vm/run.ts; run by the guest's /init as: chroot /mnt/host /bin/sh /run/xchg/cmd.sh",
      "set -a",
      ". /run/xchg/env",
      "set +a",
      // The Bun that runs this file on the host is `bun` in the guest too (xchg/bin/bun links to it; the
      // host root is the guest's root, so it is there even when it lives in ~/.bun or node_modules).
      `PATH=/run/xchg/bin:"$PATH"`,
      `cd ${shQuote(REPO_ROOT)} || exit 126`,
      script,
      "",
    ].join("\n"),
  );

  const machine = config.machine ?? "pc";
  const append = ["console=ttyS0", "quiet", "panic=-1", ...(config.kernelArgs ?? [])].join(" ");
  const args = [
    "-accel", "tcg", "-cpu", "max", "-machine", machine,
    "-m", `${config.memoryMiB ?? 2048}M`, "-smp", "2",
    "-nographic", "-no-reboot",
    "-kernel", files.vmlinux, "-initrd", files.initrd, "-append", append,
  ];
  if (!config.noController) {
    let dev = `nvme,id=c0,serial=${qemuVal(config.serial)},addr=${CTRL_SLOT.toString(16).padStart(2, "0")}.0`;
    if (config.mdts !== undefined) dev += `,mdts=${config.mdts}`;
    if (config.maxIoQpairs !== undefined) dev += `,max_ioqpairs=${config.maxIoQpairs}`;
    args.push("-device", dev);
    config.namespaces.forEach((ns, i) => {
      const id = `ns${ns.nsid}`;
      if (ns.fault) {
        // A -blockdev chain: file <- [blkdebug] <- raw <- [throttle]; the top node is the drive.
        let node = `${id}-file`;
        args.push("-blockdev", `driver=file,filename=${qemuVal(images[i]!)},node-name=${node},cache.direct=off,cache.no-flush=on,discard=unmap`);
        if (ns.fault.blkdebug !== undefined) {
          const conf = join(xchgDir, `${id}-blkdebug.conf`);
          writeFileSync(conf, ns.fault.blkdebug);
          args.push("-blockdev", `driver=blkdebug,config=${qemuVal(conf)},image=${node},node-name=${id}-dbg`);
          node = `${id}-dbg`;
        }
        args.push("-blockdev", `driver=raw,file=${node},node-name=${id}-raw,discard=unmap`);
        node = `${id}-raw`;
        if (ns.fault.throttleIops !== undefined) {
          args.push("-object", `throttle-group,id=${id}-tg,x-iops-total=${ns.fault.throttleIops}`);
          args.push("-blockdev", `driver=throttle,throttle-group=${id}-tg,file=${node},node-name=${id}-thr`);
          node = `${id}-thr`;
        }
        args.push(
          "-device",
          `nvme-ns,drive=${node},bus=c0,nsid=${ns.nsid},logical_block_size=${ns.lbaSize},physical_block_size=${ns.lbaSize}`,
        );
        return;
      }
      args.push("-drive", `file=${qemuVal(images[i]!)},if=none,id=${id},format=raw,cache=unsafe,discard=unmap`);
      const md = ns.metadata ? `,ms=${ns.metadata.ms},mset=${ns.metadata.extended ? 1 : 0},pi=${ns.metadata.pi ?? 0}` : "";
      args.push(
        "-device",
        `nvme-ns,drive=${id},bus=c0,nsid=${ns.nsid},logical_block_size=${ns.lbaSize},physical_block_size=${ns.lbaSize}${md}`,
      );
    });
  }
  args.push(
    "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
    "-virtfs", `local,path=${qemuVal(xchgDir)},mount_tag=xchg,security_model=none`,
    "-net", "none",
    ...(config.extraQemuArgs ?? []),
  );

  const t0 = performance.now();
  const proc = Bun.spawn(["qemu-system-x86_64", ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  opts.onStarted?.({ pid: proc.pid, xchgDir });
  let timedOut = false;
  const killer = setTimeout(() => {
    timedOut = true;
    proc.kill("SIGTERM");
    setTimeout(() => proc.kill("SIGKILL"), 2000).unref();
  }, timeoutSec * 1000);
  const onSignal = (sig: NodeJS.Signals) => {
    proc.kill("SIGKILL");
    process.exit(sig === "SIGINT" ? 130 : 143);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  let consoleText = "";
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const dec = new TextDecoder();
    let carry = "";
    for await (const chunk of stream) {
      // SeaBIOS clears the screen and turns off line wrapping (ESC c, ESC[?7l, ESC[2J): keep those
      // out of the host's terminal and of the captured text. A sequence may straddle two chunks.
      let s = carry + dec.decode(chunk, { stream: true });
      carry = "";
      const esc = s.lastIndexOf("\x1b");
      if (esc >= 0 && s.length - esc < 16 && !/^\x1b(?:\[[0-9;?]*[A-Za-z]|[^[])/.test(s.slice(esc))) {
        carry = s.slice(esc);
        s = s.slice(0, esc);
      }
      s = s.replace(TERMINAL_ESCAPES, "");
      consoleText += s;
      if (echo) process.stderr.write(s);
    }
    consoleText += carry + dec.decode();
  };
  const [qemuStatus] = await Promise.all([proc.exited, pump(proc.stdout), pump(proc.stderr)]);
  clearTimeout(killer);
  process.off("SIGINT", onSignal);
  process.off("SIGTERM", onSignal);
  const durationMs = performance.now() - t0;
  consoleText = consoleText.replaceAll("\r\n", "\n");

  const booted = consoleText.includes(BOOT_MARKER);
  let output: string | undefined;
  try {
    output = await readFile(join(xchgDir, "output.log"), "utf8");
  } catch {
    output = undefined;
  }
  let rc: number | undefined;
  try {
    const t = (await readFile(join(xchgDir, "rc"), "utf8")).trim();
    if (/^\d+$/.test(t)) rc = Number(t);
  } catch {
    rc = undefined;
  }

  let code: number;
  let error: string | undefined;
  if (timedOut) {
    code = 124;
    error = `guest timed out after ${timeoutSec} s (QEMU killed)${booted ? "" : "; it never reached /init"}`;
  } else if (rc !== undefined) {
    code = rc;
  } else {
    code = 125;
    const fatal = /libnvm-vm: FATAL: (.*)/.exec(consoleText)?.[1];
    if (!booted) {
      error = `guest did not boot (QEMU exit status ${qemuStatus}; no "${BOOT_MARKER}" on the console)`;
    } else if (fatal) {
      error = `guest /init failed: ${fatal}`;
    } else {
      error = `guest died before the command finished (no xchg/rc written; QEMU ${proc.signalCode ? `killed by ${proc.signalCode}` : `exit status ${qemuStatus}`})`;
    }
  }
  if (error) process.stderr.write(`\nrun.ts: ${error}\n`);

  return {
    code,
    output: output ?? consoleText,
    xchgDir,
    images,
    console: consoleText,
    booted,
    timedOut,
    ...(error !== undefined ? { error } : {}),
    ctrl,
    durationMs,
    tmpDir,
  };
}

/** Remove the run's temp dir (xchg dir and namespace images). */
export async function cleanup(result: Pick<GuestResult, "tmpDir">): Promise<void> {
  await rm(result.tmpDir, { recursive: true, force: true });
}

/** "64M" -> 67108864; accepts K, M, G (binary) or plain bytes. */
/**
 * The entry point of a tool that boots the guest and runs itself inside it with --inside
 * (bench-guest.ts, profile-guest.ts). Inside: `inside()`, its result written to `out` as JSON (the
 * host prints it) or rendered here; exit 1 with the reason when it throws. On the host: refused in
 * a guest, and before `bash test/vm/setup.sh` provisioned one; else `host()`'s exit status.
 */
export async function guestToolMain<R>(t: {
  name: string;
  script: string;
  inside: boolean;
  out: string | undefined;
  run: () => Promise<R>;
  render: (r: R) => string;
  host: () => Promise<number>;
}): Promise<never> {
  const log = (s: string) => process.stderr.write(`${t.name}: ${s}\n`);
  if (t.inside) {
    try {
      const res = await t.run();
      if (t.out) writeFileSync(t.out, JSON.stringify(res, null, 2) + "\n");
      else process.stdout.write(t.render(res) + "\n");
    } catch (e) {
      log(`failed: ${e instanceof Error ? e.message : String(e)}`);
      process.exit(1);
    }
    process.exit(0);
  }
  if (process.env.LIBNVM_VM) {
    log("already inside the guest: pass --inside");
    process.exit(2);
  }
  if (!existsSync(join(REPO_ROOT, ".cache/vm/vmlinux")) && !process.env.LIBNVM_VM_CACHE) {
    log(`the guest is not provisioned: run \`bash test/vm/setup.sh\` first (bun run ${t.script} does)`);
    process.exit(2);
  }
  process.exit(await t.host());
}

/**
 * The guest kernel's clocksource for benchmarks. Under TCG the kernel rejects the TSC and falls
 * back to the emulated HPET: every clock_gettime() is then a system call and an MMIO read, about
 * 2 µs (measured: 2.0-2.7 µs per performance.now() on vCPU 1, 0.47 µs with the TSC). TCG's TSC
 * comes from one host clock for every vCPU, so `tsc=reliable` is safe there; `hpet` keeps the
 * kernel's own choice, for comparison with figures taken before.
 */
export type GuestClocksource = "tsc" | "hpet";
export function clocksourceArgs(cs: string | undefined): string[] {
  if (cs === undefined || cs === "tsc") return ["tsc=reliable"];
  if (cs === "hpet") return ["clocksource=hpet"];
  throw new Error(`--clocksource=${cs}: choose tsc or hpet`);
}

export function parseSize(s: string): number {
  const m = /^(\d+)([KMG]i?B?)?$/i.exec(s.trim());
  if (!m) throw new Error(`bad size ${JSON.stringify(s)}`);
  const unit = (m[2] ?? "").charAt(0).toUpperCase();
  const mul = unit === "K" ? 1024 : unit === "M" ? 1024 ** 2 : unit === "G" ? 1024 ** 3 : 1;
  return Number(m[1]) * mul;
}

/** "64M:512,32M:4096" -> namespaces 1, 2, ... */
export function parseNamespaces(s: string): NamespaceSpec[] {
  if (s.trim() === "") return [];
  return s.split(",").map((part, i) => {
    const [size, lba] = part.split(":");
    const lbaSize = Number(lba ?? "512");
    if (lbaSize !== 512 && lbaSize !== 4096) throw new Error(`bad LBA size in ${JSON.stringify(part)}`);
    return { nsid: i + 1, sizeBytes: parseSize(size ?? ""), lbaSize };
  });
}

async function main(argv: string[]): Promise<number> {
  const config: GuestConfig = {
    serial: "deadbeef",
    namespaces: parseNamespaces("64M:512,32M:4096"),
  };
  const env: Record<string, string> = {};
  let timeoutSec = 300;
  let keep = false;
  let echo = true;
  let i = 0;
  const next = (flag: string): string => {
    const v = argv[++i];
    if (v === undefined) throw new Error(`${flag} needs a value`);
    return v;
  };
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") {
      i++;
      break;
    }
    // Bun drops a `--` that directly follows the script name: the first non-option starts the command.
    if (!a.startsWith("-")) break;
    switch (a) {
      case "--serial": config.serial = next(a); break;
      case "--ns": config.namespaces = parseNamespaces(next(a)); break;
      case "--mdts": config.mdts = Number(next(a)); break;
      case "--qpairs": config.maxIoQpairs = Number(next(a)); break;
      case "--machine": {
        const m = next(a);
        if (m !== "pc" && m !== "q35") throw new Error(`--machine pc|q35`);
        config.machine = m;
        break;
      }
      case "--mem": config.memoryMiB = Number(next(a)); break;
      case "--kernel": {
        const k = next(a);
        if (k !== "default" && k !== "6.12") throw new Error(`--kernel default|6.12`);
        config.kernel = k;
        break;
      }
      case "--timeout": timeoutSec = Number(next(a)); break;
      case "--env": {
        const kv = next(a);
        const eq = kv.indexOf("=");
        if (eq < 1) throw new Error(`--env K=V`);
        env[kv.slice(0, eq)] = kv.slice(eq + 1);
        break;
      }
      case "--kernel-arg": (config.kernelArgs ??= []).push(next(a)); break;
      case "--qemu-arg": (config.extraQemuArgs ??= []).push(next(a)); break;
      case "--no-ctrl": config.noController = true; break;
      case "--keep": keep = true; break;
      case "--quiet": echo = false; break;
      case "-h":
      case "--help":
        console.log(
          "usage: bun test/vm/run.ts [--serial S] [--ns 64M:512,32M:4096] [--mdts N] [--qpairs N] [--machine pc|q35]\n" +
            "                          [--kernel default|6.12] [--mem MiB] [--timeout SEC] [--env K=V]... [--kernel-arg A]...\n" +
            "                          [--qemu-arg A]... [--no-ctrl] [--keep] [--quiet] -- <shell command>",
        );
        return 0;
      default:
        throw new Error(`unknown option ${a} (the command goes after --)`);
    }
  }
  const script = argv.slice(i).join(" ");
  if (script.trim() === "") throw new Error("no command given (bun test/vm/run.ts [options] -- <shell command>)");
  const r = await runInGuest(script, config, { env, timeoutSec, echo });
  if (!echo) process.stdout.write(r.output.endsWith("\n") || r.output === "" ? r.output : `${r.output}\n`);
  process.stderr.write(`run.ts: exit ${r.code} after ${(r.durationMs / 1000).toFixed(1)} s\n`);
  if (keep) process.stderr.write(`run.ts: kept ${r.tmpDir} (images: ${r.images.join(" ")})\n`);
  else await cleanup(r);
  return r.code;
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`run.ts: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(2);
    },
  );
}
