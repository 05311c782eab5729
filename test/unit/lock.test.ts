/**
 * The owner lock (lib/lock.ts, c/src/lock.c): one holder, named by PID; and nothing anyone else
 * planted in or around the lock directory is followed, written, or allowed to keep root out.
 * Runs as root on the host (chown to nobody, setpriv) with LIBNVM_LOCK_DIR under a temp dir.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { chmodSync, chownSync, existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ControllerBusyError, PermissionError } from "../../lib/errors.ts";

const NOBODY = 65534;
const root = mkdtempSync(join(tmpdir(), "libnvm-lock-"));
// Other users must reach the directories the non-root tests use (mkdtemp makes 0700).
chmodSync(root, 0o755);
const dir = join(root, "locks");
process.env.LIBNVM_LOCK_DIR = dir;
const { OwnerLock, prepareLockDir, DEFAULT_LOCK_DIR } = await import("../../lib/lock.ts");
const LOCK_TS = join(import.meta.dir, "../../lib/lock.ts");
afterAll(() => rmSync(root, { recursive: true, force: true }));
afterEach(() => {
  process.env.LIBNVM_LOCK_DIR = dir;
});

function refusal(f: () => unknown): Error {
  try {
    f();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a refusal");
}

/** A fresh lock directory of ours, mode 0755, as LIBNVM_LOCK_DIR. */
let n = 0;
function freshDir(mode = 0o755): string {
  const d = join(root, `d${n++}`);
  mkdirSync(d);
  chmodSync(d, mode);
  process.env.LIBNVM_LOCK_DIR = d;
  return d;
}

/** Run `code` (an async function body that gets `OwnerLock`) in another Bun process, optionally as nobody. */
function spawnBun(code: string, opts: { asNobody?: boolean; env?: Record<string, string | undefined> } = {}) {
  const script = `const { OwnerLock } = await import(${JSON.stringify(LOCK_TS)});\n${code}`;
  const cmd = [process.execPath, "-e", script];
  return Bun.spawn(opts.asNobody ? ["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", ...cmd] : cmd, {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, BUN_RUNTIME_TRANSPILER_CACHE_PATH: "0", HOME: "/", ...opts.env },
  });
}

describe("the normal path", () => {
  test("creates the directory (0755) and a 0600 file of ours holding our PID; a second acquire is ControllerBusyError naming it", () => {
    const a = OwnerLock.acquire("0000:05:00.0")!;
    expect(statSync(dir).mode & 0o7777).toBe(0o755);
    expect(a.path).toBe(join(dir, "0000_05_00.0.lock"));
    const st = lstatSync(a.path);
    expect(st.isFile()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect(st.uid).toBe(process.geteuid!());
    expect(readFileSync(a.path, "utf8").trim()).toBe(String(process.pid));
    const err = refusal(() => OwnerLock.acquire("0000:05:00.0"));
    expect(err).toBeInstanceOf(ControllerBusyError);
    expect((err as ControllerBusyError).pid).toBe(process.pid);
    expect(err.message).toContain(`in use by process ${process.pid}`);
    expect(err.message).toContain("--force");
    // Another controller is independent.
    const b = OwnerLock.acquire("/dev/disnvm1")!;
    expect(b.path).toBe(join(dir, "dev_disnvm1.lock"));
    b.release();
    a.release();
    a.release(); // idempotent
    expect(readFileSync(a.path, "utf8")).toBe(""); // no stale PID for the next reader
    OwnerLock.acquire("0000:05:00.0")!.release();
  });

  test("a holder in another process: ControllerBusyError with that process's PID; free again once it exits", async () => {
    const child = spawnBun(`OwnerLock.acquire("0000:07:00.0"); console.log("ready"); await Bun.sleep(60_000);`);
    try {
      const reader = child.stdout.getReader();
      const first = await Promise.race([reader.read(), Bun.sleep(20_000).then(() => undefined)]);
      expect(new TextDecoder().decode(first?.value)).toContain("ready");
      const err = refusal(() => OwnerLock.acquire("0000:07:00.0"));
      expect(err).toBeInstanceOf(ControllerBusyError);
      expect((err as ControllerBusyError).pid).toBe(child.pid);
      expect(err.message).toContain(`(see /proc/${child.pid}/cmdline)`);
    } finally {
      child.kill("SIGKILL");
      await child.exited;
    }
    OwnerLock.acquire("0000:07:00.0")!.release();
  });

  test("force goes past a live owner without taking the lock", () => {
    const a = OwnerLock.acquire("0000:06:00.0")!;
    expect(OwnerLock.acquire("0000:06:00.0", true)).toBeUndefined();
    a.release();
  });

  test("an old 0666 file of ours is taken back to 0600 before it is locked", () => {
    const d = freshDir();
    const path = join(d, "0000_08_00.0.lock");
    writeFileSync(path, "123\n");
    chmodSync(path, 0o666);
    const l = OwnerLock.acquire("0000:08:00.0")!;
    expect(lstatSync(path).mode & 0o777).toBe(0o600);
    expect(readFileSync(path, "utf8").trim()).toBe(String(process.pid));
    l.release();
  });
});

describe("what others plant is refused, and nothing is written through it", () => {
  test("a symlink at the lock path: PermissionError naming it; its target keeps its bytes and mode", () => {
    const d = freshDir();
    const target = join(root, "precious");
    writeFileSync(target, "do not truncate me\n");
    chmodSync(target, 0o644);
    symlinkSync(target, join(d, "0000_05_00.0.lock"));
    const err = refusal(() => OwnerLock.acquire("0000:05:00.0"));
    expect(err).toBeInstanceOf(PermissionError);
    expect(err.message).toContain("is a symbolic link: refused, nothing was written through it");
    expect(err.message).toContain(`rm ${join(d, "0000_05_00.0.lock")}`);
    expect(readFileSync(target, "utf8")).toBe("do not truncate me\n");
    expect(statSync(target).mode & 0o777).toBe(0o644);
    // A dangling one is not followed to create a file either.
    const missing = join(root, "would-be-created");
    symlinkSync(missing, join(d, "0000_09_00.0.lock"));
    expect(() => OwnerLock.acquire("0000:09:00.0")).toThrow(PermissionError);
    expect(existsSync(missing)).toBe(false);
  });

  test("a file owned by another user (nobody): refused, its content untouched", () => {
    const d = freshDir();
    const path = join(d, "0000_05_00.0.lock");
    writeFileSync(path, "4242\n");
    chmodSync(path, 0o644);
    chownSync(path, NOBODY, NOBODY);
    const err = refusal(() => OwnerLock.acquire("0000:05:00.0"));
    expect(err).toBeInstanceOf(PermissionError);
    expect(err.message).toContain(`is owned by uid ${NOBODY}, not root: refused, nothing was written to it`);
    expect(readFileSync(path, "utf8")).toBe("4242\n");
    expect(lstatSync(path).mode & 0o777).toBe(0o644);
  });

  test("a hard link to another file: refused, that file untouched", () => {
    const d = freshDir();
    const other = join(root, "hardlinked");
    writeFileSync(other, "keep\n");
    linkSync(other, join(d, "0000_05_00.0.lock"));
    const err = refusal(() => OwnerLock.acquire("0000:05:00.0"));
    expect(err).toBeInstanceOf(PermissionError);
    expect(err.message).toContain("2 links");
    expect(readFileSync(other, "utf8")).toBe("keep\n");
  });

  test("a FIFO at the lock path: refused at once (the open does not wait for a writer)", () => {
    const d = freshDir();
    expect(Bun.spawnSync(["mkfifo", join(d, "0000_05_00.0.lock")]).exitCode).toBe(0);
    const t0 = performance.now();
    const err = refusal(() => OwnerLock.acquire("0000:05:00.0"));
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(err).toBeInstanceOf(PermissionError);
    expect(err.message).toContain("not a regular file");
  });

  test("a group- or world-writable lock directory is refused with the chmod that fixes it; nothing is created in it", () => {
    for (const mode of [0o777, 0o1777, 0o775]) {
      const d = freshDir(mode);
      const err = refusal(() => OwnerLock.acquire("0000:05:00.0"));
      expect(err).toBeInstanceOf(PermissionError);
      expect(err.message).toContain(`chmod go-w ${d}`);
      expect(readdirSync(d)).toEqual([]);
      expect(statSync(d).mode & 0o7777).toBe(mode); // an override directory is never changed
    }
  });

  test("a lock directory of another user, or a symlink to one, is refused", () => {
    const d = freshDir();
    chownSync(d, NOBODY, NOBODY);
    const err = refusal(() => OwnerLock.acquire("0000:05:00.0"));
    expect(err).toBeInstanceOf(PermissionError);
    expect(err.message).toContain(`belongs to uid ${NOBODY}, not root`);
    const link = join(root, "dirlink");
    symlinkSync(freshDir(), link);
    process.env.LIBNVM_LOCK_DIR = link;
    expect(refusal(() => OwnerLock.acquire("0000:05:00.0")).message).toContain("is a symbolic link");
  });

  test("another user can neither hold our lock file nor add files to the directory", () => {
    const l = OwnerLock.acquire("0000:0a:00.0")!;
    l.release(); // free: only the file's mode keeps nobody out now
    const hold = Bun.spawnSync(["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", "flock", "-n", l.path, "true"], { stderr: "pipe" });
    expect(hold.exitCode).not.toBe(0);
    expect(hold.stderr.toString()).toContain("Permission denied");
    const plant = Bun.spawnSync(["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", "touch", join(dir, "planted.lock")], { stderr: "pipe" });
    expect(plant.exitCode).not.toBe(0);
    expect(existsSync(join(dir, "planted.lock"))).toBe(false);
  });
});

describe("root's /run/libnvm as older versions left it", () => {
  test("mode 1777 is tightened to 0755 and what others planted or could have opened is removed; targets untouched", () => {
    const d = join(root, "old-run-libnvm");
    mkdirSync(d);
    chmodSync(d, 0o1777);
    const target = join(root, "shadow-like");
    writeFileSync(target, "secret\n");
    symlinkSync(target, join(d, "0000_05_00.0.lock"));
    writeFileSync(join(d, "0000_06_00.0.lock"), "1\n");
    chownSync(join(d, "0000_06_00.0.lock"), NOBODY, NOBODY);
    writeFileSync(join(d, "0000_07_00.0.lock"), "2\n"); // root's, but 0666 as older versions made them
    chmodSync(join(d, "0000_07_00.0.lock"), 0o666);
    writeFileSync(join(d, "0000_08_00.0.lock"), "3\n"); // root's 0600: this version's, kept
    chmodSync(join(d, "0000_08_00.0.lock"), 0o600);
    prepareLockDir(d, 0, true);
    expect(statSync(d).mode & 0o7777).toBe(0o755);
    expect(readdirSync(d).sort()).toEqual(["0000_08_00.0.lock"]);
    expect(readFileSync(target, "utf8")).toBe("secret\n");
    // Without `migrate` (an override directory) the same state is refused instead.
    chmodSync(d, 0o1777);
    expect(() => prepareLockDir(d, 0, false)).toThrow(PermissionError);
    expect(statSync(d).mode & 0o7777).toBe(0o1777);
  });

  test("not root: VFIO and disnvm need no lock (the kernel admits one holder); sysfs is told to run as root", async () => {
    expect(DEFAULT_LOCK_DIR).toBe("/run/libnvm");
    const p = spawnBun(
      `const r = {};
       for (const kind of ["vfio", "disnvm", "sysfs"]) {
         try { r[kind] = OwnerLock.acquire("0000:05:00.0", false, kind) === undefined ? "no lock" : "locked"; }
         catch (e) { r[kind] = e.name + ": " + e.message; }
       }
       console.log(JSON.stringify(r));`,
      { asNobody: true, env: { LIBNVM_LOCK_DIR: undefined } },
    );
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    expect({ code, err }).toEqual({ code: 0, err: "" });
    const r = JSON.parse(out);
    expect(r.vfio).toBe("no lock");
    expect(r.disnvm).toBe("no lock");
    expect(r.sysfs).toMatch(/^PermissionError: the sysfs backend needs root: .*run with sudo/);
  });

  test("not root with a LIBNVM_LOCK_DIR of its own: the lock works as for root", async () => {
    const d = join(root, "nobody-locks");
    mkdirSync(d);
    chmodSync(d, 0o700);
    chownSync(d, NOBODY, NOBODY);
    const p = spawnBun(`const l = OwnerLock.acquire("0000:05:00.0", false, "vfio"); console.log(l.path); l.release();`, { asNobody: true, env: { LIBNVM_LOCK_DIR: d } });
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    expect({ code, err }).toEqual({ code: 0, err: "" });
    expect(out.trim()).toBe(join(d, "0000_05_00.0.lock"));
    expect(lstatSync(out.trim()).uid).toBe(NOBODY);
  });
});
