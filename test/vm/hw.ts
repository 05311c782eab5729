/**
 * CI entry point for the hardware tests: boots the QEMU guest with the test controller and runs
 * `bun test ./test/hw` in it (from the repo root). Exits 0 only when the guest command exited 0 and
 * bun reports at least one pass, no fail, no skip, no todo, and pass == "Ran N tests".
 *
 * The last line is always `hw: N passed, M failed`, preceded by `hw: FAILED: <reason>` on failure.
 * M counts failed, skipped and todo tests; a run that failed without any of them (guest did not boot,
 * controller missing, no test ran, ...) reports at least 1 failed, so "0 failed" always means success.
 *
 *   bun test/vm/hw.ts                            # the hardware tests (./test/hw)
 *   bun test/vm/hw.ts --dir ./test/vm/_selftest  # harness self-check
 *   options: --dir D  --env K=V  --no-ctrl  --timeout SEC  --quiet
 */
import { cleanup, runInGuest, type GuestConfig } from "./run.ts";

export const TEST_CONFIG: GuestConfig = {
  serial: "deadbeef",
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

async function main(argv: string[]): Promise<number> {
  let dir = "./test/hw";
  const env: Record<string, string> = {};
  const config: GuestConfig = { ...TEST_CONFIG };
  let timeoutSec = 900;
  let echo = true;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const next = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === "--dir") dir = next();
    else if (a === "--env") {
      const kv = next();
      const eq = kv.indexOf("=");
      if (eq < 1) throw new Error("--env K=V");
      env[kv.slice(0, eq)] = kv.slice(eq + 1);
    } else if (a === "--no-ctrl") config.noController = true;
    else if (a === "--timeout") timeoutSec = Number(next());
    else if (a === "--quiet") echo = false;
    else throw new Error(`unknown option ${a}`);
  }
  // `bun test` treats an argument without ./ or / as a name filter inside the configured root
  // (bunfig.toml: test/unit); with ./ it is a path, anywhere.
  if (!dir.startsWith("./") && !dir.startsWith("/") && !dir.startsWith("../")) dir = `./${dir}`;

  const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
  const script = [
    // The slot may hold another device when the controller is absent: check the NVMe class code.
    `if [ "$(cat "/sys/bus/pci/devices/$LIBNVM_TEST_CTRL/class" 2>/dev/null)" != 0x010802 ]; then`,
    `  echo "${CTRL_MISSING}: no NVMe controller at $LIBNVM_TEST_CTRL in the guest"; lspci -nn 2>/dev/null; exit 97`,
    `fi`,
    // TCG is slow: a test gets 120 s, not bun's default 5 s.
    `bun test --timeout 120000 ${q(dir)} 2>&1`,
  ].join("\n");

  const reasons: string[] = [];
  let summary: BunSummary | undefined;
  try {
    const r = await runInGuest(script, config, { env, timeoutSec, echo });
    process.stderr.write(`hw: guest run took ${(r.durationMs / 1000).toFixed(1)} s\n`);
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
    if (reasons.length === 0 && r.code !== 0) reasons.push(`guest command exited with status ${r.code}`);
    if (reasons.length === 0) await cleanup(r);
    else process.stderr.write(`hw: kept ${r.tmpDir} for inspection\n`);
  } catch (e) {
    reasons.push(`harness error: ${e instanceof Error ? e.message : String(e)}`);
  }

  const passed = summary?.pass ?? 0;
  let failed = (summary?.fail ?? 0) + (summary?.skip ?? 0) + (summary?.todo ?? 0);
  if (reasons.length > 0 && failed === 0) failed = 1;
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
