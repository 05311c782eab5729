/**
 * The command line without a controller: --help on every subcommand, usage errors (exit 2, one
 * line on stderr naming the fix), the exit status table, and the shell completion scripts, which
 * bash and zsh must accept and which offer every subcommand and option.
 */
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { COMMANDS, EXIT_HELP } from "../../../cli/main.ts";
import { EXIT, exitCodeFor } from "../../../cli/cli.ts";
import { UsageError } from "../../../cli/common.ts";
import { ControllerBusyError, DeviceError, InvalidArgumentError, NvmeStatusError, NvmeTimeoutError, UnsupportedError } from "../../../lib/errors.ts";

const BIN = join(import.meta.dir, "..", "..", "..", "bin", "libnvm.ts");

function libnvm(args: string[], stdin: "ignore" | "pipe" = "ignore") {
  const p = Bun.spawnSync(["bun", BIN, ...args], { stdout: "pipe", stderr: "pipe", stdin });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

describe("help", () => {
  test("libnvm --help lists every subcommand and the exit statuses", () => {
    const r = libnvm(["--help"]);
    expect(r.code).toBe(0);
    for (const c of COMMANDS) expect(r.out).toContain(`\n  ${c.name} `);
    expect(r.out).toContain(EXIT_HELP);
    expect(r.err).toBe("");
  });

  test("the issue's subcommands all exist", () => {
    const names = COMMANDS.map((c) => c.name);
    for (const n of ["list", "id-ctrl", "id-ns", "list-ns", "smart-log", "error-log", "fw-log", "get-feature", "set-feature", "format", "read", "write", "compare", "write-zeroes", "dsm", "flush", "perf", "doctor", "reset", "completion"]) {
      expect(names).toContain(n);
    }
  });

  test.each(COMMANDS.map((c) => c.name))("libnvm %s --help: usage on stdout, exit 0", (name) => {
    const r = libnvm([name, "--help"]);
    expect(r.code).toBe(0);
    expect(r.err).toBe("");
    expect(r.out).toStartWith(`Usage: libnvm ${name}`);
    expect(libnvm(["help", name]).out).toBe(r.out);
  });

  test("version", () => {
    const r = libnvm(["--version"]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^libnvm version \d+\.\d+\.\d+ \(bun \d/);
  });
});

describe("usage errors: exit 2, one line on stderr, nothing on stdout", () => {
  const cases: [string[], string][] = [
    [[], "no command given"],
    [["frobnicate"], 'unknown command "frobnicate"'],
    [["id-ctl", "05:00.0"], "did you mean id-ctrl"],
    [["id-ctrl"], "the controller is missing"],
    [["id-ctrl", "05:00.0", "--bogus"], "unknown option '--bogus'"],
    [["id-ctrl", "05:00.0", "extra"], 'unexpected argument "extra"'],
    [["id-ctrl", "05:00.0", "-o", "xml"], "--output-format=xml: choose normal or json"],
    [["id-ctrl", "05:00.0", "-b", "--json"], "exclude each other"],
    [["id-ctrl", "05:00.0", "--backend=magic"], "--backend=magic: choose one of auto, sysfs, vfio, disnvm, smartio"],
    [["id-ns", "05:00.0"], "--namespace-id (-n) is required"],
    [["id-ns", "05:00.0", "-n", "0"], "--namespace-id=0"],
    [["id-ns", "05:00.0", "-n", "x"], '--namespace-id: "x" is not a non-negative integer'],
    [["get-feature", "05:00.0"], "--feature-id (-f) is required"],
    [["get-feature", "05:00.0", "-f", "256"], "--feature-id=256: at most 255"],
    [["get-feature", "05:00.0", "-f", "6", "-s", "4"], "--sel=4: at most 3"],
    [["format", "05:00.0", "-n", "1"], "give --lbaf or --block-size"],
    [["format", "05:00.0", "-n", "1", "--lbaf", "1", "--ses", "3"], "--ses=3: at most 2"],
    [["read", "05:00.0", "-n", "1", "-z", "0", "-d", "/tmp/x"], "--data-size=0"],
    [["read", "05:00.0", "-n", "1", "-z", "12q", "-d", "/tmp/x"], "--data-size=12q: expected a size"],
    [["write-zeroes", "05:00.0"], "--namespace-id (-n) is required"],
    [["dsm", "05:00.0", "-n", "1", "-s", "0", "-b", "8"], "--ad is required"],
    [["dsm", "05:00.0", "-n", "1", "--ad", "-s", "0,8", "-b", "8"], "--slbs has 2 ranges and --blocks 1"],
    [["completion"], "<shell> is missing: bash or zsh"],
    [["completion", "fish"], "fish: choose bash or zsh"],
    [["perf"], "the controller comes first"],
  ];
  test.each(cases)("libnvm %p", (args, message) => {
    const r = libnvm(args);
    expect(r.code).toBe(2);
    expect(r.out).toBe("");
    expect(r.err).toContain(message);
    expect(r.err.trimEnd().split("\n")).toHaveLength(1);
  });
});

test("exit statuses by failure", () => {
  const status = new NvmeStatusError(0x4002, { command: "Get Features", opcode: 0x0a, cid: 1, sqid: 0 });
  expect(exitCodeFor(status)).toBe(EXIT.CONTROLLER);
  expect(exitCodeFor(new NvmeTimeoutError("t", 1))).toBe(EXIT.CONTROLLER);
  expect(exitCodeFor(new UsageError("u"))).toBe(EXIT.USAGE);
  expect(exitCodeFor(new InvalidArgumentError("LBA past NSZE"))).toBe(EXIT.USAGE);
  expect(exitCodeFor(new DeviceError("not found"))).toBe(EXIT.DEVICE);
  expect(exitCodeFor(new ControllerBusyError("busy", 1))).toBe(EXIT.DEVICE);
  expect(exitCodeFor(new UnsupportedError("metadata"))).toBe(EXIT.DEVICE);
  expect(Object.values(EXIT)).toEqual([0, 1, 2, 3, 4, 5]);
});

test("a device that is not there: exit 3 and the fix", () => {
  const r = libnvm(["id-ctrl", "ff:1f.7"]);
  expect(r.code).toBe(3);
  expect(r.err).toContain("libnvm id-ctrl: DeviceError: no PCI device 0000:ff:1f.7");
  expect(r.err).toContain("lspci -D -d ::0108");
});

describe("completion", () => {
  /** What bash's programmable completion offers for the command line `words` (the last one being completed). */
  function bashComplete(words: string[]): string[] {
    const script = libnvm(["completion", "bash"]).out;
    const quoted = words.map((w) => `'${w}'`).join(" ");
    const p = Bun.spawnSync(["bash", "-c", `${script}\nCOMP_WORDS=(${quoted}); COMP_CWORD=${words.length - 1}; _libnvm; printf '%s\\n' "\${COMPREPLY[@]}"`], { stdout: "pipe", stderr: "pipe" });
    expect(p.stderr.toString()).toBe("");
    return p.stdout.toString().split("\n").filter(Boolean);
  }

  test("bash: subcommands, options, option values, files", () => {
    expect(bashComplete(["libnvm", "id-"])).toEqual(["id-ctrl", "id-ns"]);
    expect(bashComplete(["libnvm", "format", "05:00.0", "--l"])).toEqual(["--lbaf"]);
    expect(bashComplete(["libnvm", "id-ctrl", "05:00.0", "-o", "j"])).toEqual(["json"]);
    expect(bashComplete(["libnvm", "id-ctrl", "05:00.0", "--backend", "=", "v"])).toEqual(["vfio"]);
    expect(bashComplete(["libnvm", "completion", ""])).toEqual(["bash", "zsh"]);
    expect(bashComplete(["libnvm", "write", "05:00.0", "-d", join(import.meta.dir, "usage.test.")])).toEqual([join(import.meta.dir, "usage.test.ts")]);
    for (const c of COMMANDS) {
      const opts = bashComplete(["libnvm", c.name, "x", "--"]);
      for (const o of Object.keys(c.options)) expect(opts).toContain(`--${o}`);
    }
  });

  test("zsh: the script parses and registers _libnvm for libnvm", () => {
    const script = libnvm(["completion", "zsh"]).out;
    expect(script).toStartWith("#compdef libnvm\n");
    const syntax = Bun.spawnSync(["zsh", "-n", "-c", script], { stdout: "pipe", stderr: "pipe" });
    expect(syntax.stderr.toString()).toBe("");
    expect(syntax.exitCode).toBe(0);
    const dump = join(process.env.TMPDIR ?? "/tmp", `libnvm-zcompdump-${process.pid}`);
    const r = Bun.spawnSync(["zsh", "-f", "-c", `autoload -Uz compinit && compinit -u -d ${dump} && eval "$1" && print -r -- $_comps[libnvm]; rm -f ${dump}*`, "zsh", script], { stdout: "pipe", stderr: "pipe" });
    expect(r.stderr.toString()).toBe("");
    expect(r.stdout.toString()).toBe("_libnvm\n");
    for (const c of COMMANDS) expect(script).toContain(`    '${c.name}:`);
  });
});

describe("doctor for a controller behind a target or a sharing server", () => {
  test("nobody serving the socket: exit 3, the ShareError and how to start the server", () => {
    const r = libnvm(["doctor", "unix:/nonexistent/libnvm-test.sock"]);
    expect(r.code).toBe(3);
    expect(r.out).toContain("the sharing server did not answer: ShareError:");
    expect(r.out).toContain("examples/serve.ts");
  });

  test("nobody listening on the NVMe/TCP port: exit 3, the ConnectionError, as JSON too", () => {
    // Port 9 (discard) on loopback: nothing listens there on a test machine.
    const r = libnvm(["doctor", "nvme+tcp://127.0.0.1:9/nqn.2024-01.io.libnvm:none", "-o", "json"]);
    expect(r.code).toBe(3);
    const j = JSON.parse(r.out);
    expect(j).toMatchObject({ via: "tcp", reachable: false, error: { name: "ConnectionError" } });
  });
});
