/**
 * test/hw/common.ts's finished(): the guest tests wait for child processes (sharing clients, tools)
 * through it. A child that prints more than a pipe holds must still exit (its output is read while
 * it runs), and one that never exits is reported with what its threads were doing, then killed.
 */
import { expect, test } from "bun:test";
import { finished } from "../hw/common.ts";

const spawn = (code: string) => Bun.spawn(["bun", "-e", code], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });

test("a child printing far more than a pipe holds exits, and every byte it printed comes back", async () => {
  // 20000 lines of "round N": what a sharing client prints in a fast run, several pipes' worth.
  const p = spawn(`for (let i = 1; i <= 20000; i++) console.log("round " + i); console.error("e".repeat(70000)); process.exit(3);`);
  const { code, out, err } = await finished(p, 30_000, "the printer");
  expect(code).toBe(3);
  const lines = out.trimEnd().split("\n");
  expect(lines.length).toBe(20000);
  expect(lines[19999]).toBe("round 20000");
  expect(err.trimEnd().length).toBe(70000);
});

test("a child that does not exit in time: the error names it and says where its threads wait; it is killed", async () => {
  const p = spawn(`console.log("started"); setInterval(() => {}, 1000);`);
  const e = await finished(p, 1500, "the sleeper").catch((x: unknown) => x as Error);
  expect(e).toBeInstanceOf(Error);
  const msg = (e as Error).message;
  expect(msg).toContain(`the sleeper (pid ${p.pid}) did not exit within 1500 ms; its threads:`);
  // The main thread sleeps in the kernel (state S), with the syscall it waits in.
  expect(msg).toMatch(new RegExp(`\\n  ${p.pid} bun: state S utime \\d+ stime \\d+ wchan \\S+ syscall \\S+`));
  expect(msg).toContain(`the last it printed: "started\\n"`);
  expect(await p.exited).toBe(137);
});
