/**
 * test/vm/qemu-threads.ts (bun run profile:qemu): what a run label means, which QEMU thread is
 * which, and the figures between two samples of QEMU's threads.
 */
import { expect, test } from "bun:test";
import { between, parseRun, render, roleOf, type ThreadSample } from "../vm/qemu-threads.ts";

test("run labels: the driver, then a turnaround delay (+µs) and an idle sleep (~µs); anything else is refused with the grammar", () => {
  expect(parseRun("ts")).toEqual({ label: "ts", driver: "ts", delayUs: 0, idleSleepUs: 0 });
  expect(parseRun("c+2")).toEqual({ label: "c+2", driver: "c", delayUs: 2, idleSleepUs: 0 });
  expect(parseRun("ts~20")).toEqual({ label: "ts~20", driver: "ts", delayUs: 0, idleSleepUs: 20 });
  expect(parseRun("c+4~20")).toEqual({ label: "c+4~20", driver: "c", delayUs: 4, idleSleepUs: 20 });
  for (const bad of ["", "rust", "c+", "ts~x", "c~20+4"]) expect(() => parseRun(bad)).toThrow(/ts or c, then optionally \+DELAY_US and ~IDLE_SLEEP_US/);
});

test("thread roles from QEMU's debug-threads names; the process's own thread is the main loop", () => {
  expect(roleOf("qemu-system-x86", true)).toBe("main");
  expect(roleOf("CPU 0/TCG", false)).toBe("vcpu0");
  expect(roleOf("CPU 1/TCG", false)).toBe("vcpu1");
  expect(roleOf("worker", false)).toBe("worker");
  expect(roleOf("call_rcu", false)).toBe("other");
});

test("between two samples: CPU as percent of one host CPU and sleeps a second, summed per role; a thread in one sample only is left out", () => {
  const a: ThreadSample[] = [
    { tid: 1, role: "main", ticks: 100, voluntary: 1000 },
    { tid: 3, role: "vcpu1", ticks: 500, voluntary: 10 },
    { tid: 7, role: "worker", ticks: 10, voluntary: 100 },
    { tid: 8, role: "worker", ticks: 20, voluntary: 200 },
  ];
  const b: ThreadSample[] = [
    { tid: 1, role: "main", ticks: 500, voluntary: 9000 },
    { tid: 3, role: "vcpu1", ticks: 1300, voluntary: 50 },
    { tid: 7, role: "worker", ticks: 50, voluntary: 900 },
    { tid: 8, role: "worker", ticks: 60, voluntary: 1000 },
    { tid: 9, role: "worker", ticks: 999, voluntary: 999 },
  ];
  const f = between(a, b, 8, 100);
  expect(f.main).toEqual({ cpu: 50, sleepsPerSecond: 1000 });
  expect(f.vcpu1).toEqual({ cpu: 100, sleepsPerSecond: 5 });
  expect(f.worker).toEqual({ cpu: 10, sleepsPerSecond: 200 });
  expect(f.vcpu0).toEqual({ cpu: 0, sleepsPerSecond: 0 });
  const table = render([{ qd: 4, round: 1, run: "c+2", iops: 50_000, p50Us: 61.25, hostBusy: 83.4, threads: f, mainSleepsPerCommand: 1000 / 50_000 }]);
  expect(table.split("\n")[2]).toMatch(/^4\s+c\+2\s+50000\s+61\.3\s+83 %\s+50 %\s+0\.02\s+100 %\s+10 %$/);
});
