/** Nothing is left enabled behind a process: close(), SIGTERM, and recovery after SIGKILL. */
import { describe, expect, test } from "bun:test";
import { chmodSync, chownSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { Controller, ControllerBusyError, registers } from "../../lib/index.ts";
import { ctrlAddress, spawnFixture, waitForLine } from "./common.ts";

async function registersFromNewProcess() {
  const p = spawnFixture("regs.ts");
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`regs.ts exited ${code}: ${err}`);
  return JSON.parse(out) as { cc: number; csts: number };
}

describe("release", () => {
  test("after close() the controller is disabled (CC.EN=0, CSTS.RDY=0), seen from a new process", async () => {
    const c = Controller.open(ctrlAddress());
    expect(registers.decodeCsts(c.registers().csts).rdy).toBe(true);
    c.close();
    c.close(); // idempotent
    const r = await registersFromNewProcess();
    expect(registers.decodeCc(r.cc).en).toBe(false);
    expect(registers.decodeCsts(r.csts).rdy).toBe(false);
  });

  test("a child that closes and exits leaves the controller disabled", async () => {
    const p = spawnFixture("hold.ts", ["--close"]);
    expect(await p.exited).toBe(0);
    const r = await registersFromNewProcess();
    expect(registers.decodeCsts(r.csts).rdy).toBe(false);
  });

  test("SIGTERM: the process shuts the controller down and exits 143", async () => {
    const p = spawnFixture("hold.ts");
    await waitForLine(p.stdout, /^ready/, 60_000);
    const before = await registersFromNewProcess();
    expect(registers.decodeCsts(before.csts).rdy).toBe(true); // the holder has it enabled
    p.kill("SIGTERM");
    expect(await p.exited).toBe(143);
    const r = await registersFromNewProcess();
    expect(registers.decodeCc(r.cc).en).toBe(false);
    expect(registers.decodeCsts(r.csts).rdy).toBe(false);
  });

  test("SIGTERM while busy with admin commands also shuts down", async () => {
    const p = spawnFixture("hold.ts", ["--busy"]);
    await waitForLine(p.stdout, /^ready/, 60_000);
    await Bun.sleep(200);
    p.kill("SIGTERM");
    expect(await p.exited).toBe(143);
    const r = await registersFromNewProcess();
    expect(registers.decodeCsts(r.csts).rdy).toBe(false);
  });

  test("SIGKILL mid-command: a new open resets and identifies", async () => {
    const p = spawnFixture("hold.ts", ["--busy"]);
    await waitForLine(p.stdout, /^ready/, 60_000);
    await Bun.sleep(300);
    p.kill("SIGKILL");
    expect(await p.exited).not.toBe(0);
    // Nothing could run in the killed process: the controller is still enabled with its queues.
    const left = await registersFromNewProcess();
    expect(registers.decodeCsts(left.csts).rdy).toBe(true);
    const c = Controller.open(ctrlAddress());
    try {
      expect(c.identifyController().mn).toBe("QEMU NVMe Ctrl");
      for (let i = 0; i < 100; i++) c.numberOfQueues();
    } finally {
      c.close();
    }
  });
});

describe("one owner at a time", () => {
  test("a second opener gets ControllerBusyError naming the owner's PID; force takes over", async () => {
    const p = spawnFixture("hold.ts");
    try {
      const line = await waitForLine(p.stdout, /^ready/, 60_000);
      const pid = Number(line.split(" ")[1]);
      let err: unknown;
      try {
        Controller.open(ctrlAddress()).close();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ControllerBusyError);
      expect((err as ControllerBusyError).pid).toBe(pid);
      expect((err as Error).message).toContain(`in use by process ${pid}`);
      // The owner was not disturbed: its controller is still enabled.
      expect(registers.decodeCsts((await registersFromNewProcess()).csts).rdy).toBe(true);
      const forced = Controller.open(ctrlAddress(), { force: true });
      expect(forced.info.mn).toBe("QEMU NVMe Ctrl");
      forced.close();
    } finally {
      p.kill("SIGKILL");
      await p.exited;
    }
    // The kernel dropped the dead owner's lock: no force needed.
    Controller.open(ctrlAddress()).close();
  });
});

describe("the lock directory", () => {
  test("an old world-writable /run/libnvm is tightened by the next open; what others planted is removed, a symlink's target untouched", () => {
    const dir = "/run/libnvm";
    const lock = `${dir}/${ctrlAddress().replaceAll(":", "_")}.lock`;
    const victim = "/run/tmp/libnvm-lock-victim";
    // As an older libnvm left it (mode 1777), with what any user could have put there meanwhile.
    mkdirSync(dir, { recursive: true });
    chmodSync(dir, 0o1777);
    writeFileSync(victim, "keep\n");
    rmSync(lock, { force: true });
    symlinkSync(victim, lock);
    writeFileSync(`${dir}/planted`, "");
    chownSync(`${dir}/planted`, 65534, 65534);
    const c = Controller.open(ctrlAddress());
    try {
      expect(statSync(dir).mode & 0o7777).toBe(0o755);
      expect(statSync(dir).uid).toBe(0);
      expect(readdirSync(dir)).toEqual([lock.slice(dir.length + 1)]);
      const st = lstatSync(lock);
      expect(st.isFile()).toBe(true);
      expect([st.uid, st.mode & 0o777, st.nlink]).toEqual([0, 0o600, 1]);
      expect(readFileSync(lock, "utf8").trim()).toBe(String(process.pid));
      expect(readFileSync(victim, "utf8")).toBe("keep\n");
    } finally {
      c.close();
      rmSync(victim, { force: true });
    }
  });
});
