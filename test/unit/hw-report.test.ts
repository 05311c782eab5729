/**
 * test/vm/hw.ts reads bun's output from the guest: the summary decides pass or fail, and each
 * failed test is repeated, with its error, at the end of the run (CI keeps only a log's tail).
 */
import { expect, test } from "bun:test";
import { failedTests, parseBunSummary } from "../vm/hw.ts";

const OUTPUT = [
  "bun test v1.4.5 (a7733435c)",
  "",
  "test/hw-share/share.test.ts:",
  "(pass) first [10.00ms]",
  "42 |   expect(x).toBe(1);",
  "error: expect(received).toBe(expected)",
  "Expected: 1",
  "Received: 2",
  "(fail) second [20.00ms]",
  "(pass) third [1.00ms]",
  "",
  "test/hw-share/other.test.ts:",
  "error: thrown outside",
  "(fail) fourth [3.00ms]",
  "",
  " 2 pass",
  " 2 fail",
  " 9 expect() calls",
  "Ran 4 tests across 2 files. [1.00s]",
].join("\n");

test("each failed test comes with the lines bun printed for it, and nothing of the tests that passed", () => {
  const f = failedTests(OUTPUT);
  expect(f).toEqual([
    ["42 |   expect(x).toBe(1);", "error: expect(received).toBe(expected)", "Expected: 1", "Received: 2", "(fail) second [20.00ms]"].join("\n"),
    ["error: thrown outside", "(fail) fourth [3.00ms]"].join("\n"),
  ]);
  // A long error keeps its head (what failed) and its tail (where).
  expect(failedTests(OUTPUT, 3)[0]).toBe(["42 |   expect(x).toBe(1);", "error: expect(received).toBe(expected)", "... (1 lines left out) ...", "Received: 2", "(fail) second [20.00ms]"].join("\n"));
  expect(failedTests(OUTPUT.replaceAll("(fail)", "(pass)"))).toEqual([]);
});

test("the summary counts what bun ran", () => {
  expect(parseBunSummary(OUTPUT)).toMatchObject({ pass: 2, fail: 2, ran: 4 });
});
