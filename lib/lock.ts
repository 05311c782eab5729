/**
 * One owner per controller: an advisory lock (flock) taken before the controller is touched and
 * held until close(). A second process gets ControllerBusyError naming the owner's PID instead of
 * resetting the controller under it. The kernel drops the lock when the owner dies, even by
 * SIGKILL, so a crash never leaves a stale lock behind.
 *
 * Nobody but the owner of the lock directory may put anything in it: a world-writable directory
 * would let any user plant a symlink where root then writes, or create and hold the lock file to
 * keep root out. So /run/libnvm is root's, mode 0755, and its files are root's, mode 0600 (flock
 * needs only a read descriptor: a file others may read is one they may hold). A directory named by
 * LIBNVM_LOCK_DIR must be the current user's and writable by nobody else.
 *
 * Processes that are not root cannot create files in /run/libnvm. They need none for the VFIO and
 * disnvm backends, which are the only ones they can use: the kernel itself admits one holder at a
 * time of /dev/vfio/<group> (a second open is EBUSY) and of /dev/disnvmN (the module's open is
 * exclusive), and both backends name the holder from /proc; SISCI admits one exclusive borrower of a
 * SmartIO device in the whole cluster. The sysfs backend has no such guard in
 * the kernel, so it takes the lock, which needs root (it needs root for pagemap anyway).
 */
import { chmodSync, lstatSync, mkdirSync, readdirSync, unlinkSync, type Stats } from "node:fs";
import { join } from "node:path";
import type { BackendKind } from "./backends/types.ts";
import { ControllerBusyError, NativeError, PermissionError } from "./errors.ts";
import { cstr, errnoName, native, scratch } from "./native.ts";

/** The lock directory when LIBNVM_LOCK_DIR is not set: tmpfs, so gone at reboot as the locks should be. */
export const DEFAULT_LOCK_DIR = "/run/libnvm";

const ELOOP = 40;
const EPERM = 1;
const EBUSY = 16;
const EACCES = 13;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

/** Where lock files live: $LIBNVM_LOCK_DIR, else /run/libnvm. */
export function lockDir(): string {
  return process.env.LIBNVM_LOCK_DIR || DEFAULT_LOCK_DIR;
}

const euid = () => process.geteuid?.() ?? 0;

function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new NativeError(`cannot stat ${path}: ${(e as Error).message}`, (e as NodeJS.ErrnoException).errno ?? 5, "lstat", path);
  }
}

const octal = (mode: number) => (mode & 0o7777).toString(8).padStart(4, "0");
const ownerName = (uid: number) => (uid === 0 ? "root" : `uid ${uid}`);

/**
 * Make `dir` ready for lock files and check it: created if missing (mode 0755), a real directory
 * (not a symlink) owned by `owner` and writable by nobody else. With `migrate` (root's default
 * directory), one left group/world-writable by an older libnvm is tightened to 0755 and every entry
 * in it that is not a regular root-owned file with one link and mode 0600 is removed: anyone may
 * have planted or opened those. Refusals are PermissionError with the command that fixes them.
 */
export function prepareLockDir(dir: string, owner: number, migrate = false): void {
  let st = lstatOrUndefined(dir);
  if (!st) {
    try {
      mkdirSync(dir, { recursive: dir !== DEFAULT_LOCK_DIR, mode: 0o755 });
    } catch (e) {
      // Another process may have made it meanwhile; it is checked below like any other.
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") {
        const fix = owner === 0 ? "run as root" : "set LIBNVM_LOCK_DIR to a directory of your own";
        throw new PermissionError(`cannot create the lock directory ${dir} (${(e as NodeJS.ErrnoException).code}): ${fix}`);
      }
    }
    st = lstatSync(dir);
  }
  if (st.isSymbolicLink() || !st.isDirectory()) {
    throw new PermissionError(`the lock directory ${dir} is ${st.isSymbolicLink() ? "a symbolic link" : "not a directory"}: refused (it could lead anywhere); remove it: rm ${dir}`);
  }
  if (st.uid !== owner) {
    throw new PermissionError(
      `the lock directory ${dir} belongs to ${ownerName(st.uid)}, not ${ownerName(owner)}: whoever owns it can plant or hold lock files. ` +
        (dir === DEFAULT_LOCK_DIR ? `Remove it as root: rm -rf ${dir}` : `Use a directory of your own for LIBNVM_LOCK_DIR, or: chown ${owner} ${dir}`),
    );
  }
  if ((st.mode & 0o022) !== 0) {
    if (!migrate) {
      throw new PermissionError(`the lock directory ${dir} is writable by ${st.mode & 0o002 ? "everyone" : "its group"} (mode ${octal(st.mode)}): anyone there could plant or hold lock files. Fix: chmod go-w ${dir}`);
    }
    tighten(dir, st.mode);
  }
}

/** Root's /run/libnvm as an older libnvm left it (mode 1777): make it root's alone again. */
function tighten(dir: string, mode: number): void {
  // First the mode, so nothing new can be planted while the old entries are looked at.
  chmodSync(dir, 0o755);
  let removed = 0;
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    const st = lstatOrUndefined(path);
    // A file of this version: root's, one link, 0600 (another process may have made it just now).
    if (!st || (st.isFile() && st.uid === 0 && st.nlink === 1 && (st.mode & 0o077) === 0)) continue;
    // unlink removes a symlink itself, never its target.
    unlinkSync(path);
    removed++;
  }
  process.stderr.write(
    `libnvm: ${dir} was mode ${octal(mode)} (left by an older libnvm): now 0755${removed ? `, and the ${removed} entr${removed === 1 ? "y" : "ies"} anyone could have planted or opened there removed` : ""}\n`,
  );
}

export class OwnerLock {
  #fd: number;

  private constructor(
    fd: number,
    readonly path: string,
  ) {
    this.#fd = fd;
  }

  /**
   * Take the lock for `name` (a BDF or a device path), for a controller reached through `backend`.
   * With `force`, a lock held by a live process is ignored with a warning: for a hung owner that
   * cannot be killed; the owner's commands will fail. Returns undefined when forced past a holder,
   * or when a process that is not root opens through VFIO or disnvm (the kernel admits one holder).
   */
  static acquire(name: string, force = false, backend: BackendKind = "sysfs"): OwnerLock | undefined {
    const dir = lockDir();
    const uid = euid();
    const isDefault = dir === DEFAULT_LOCK_DIR;
    if (isDefault && uid !== 0) {
      if (backend === "vfio" || backend === "disnvm" || backend === "smartio") return undefined;
      throw new PermissionError(
        `the ${backend} backend needs root: its owner lock lives in root's ${dir}, and /proc/self/pagemap hides physical addresses from others; run with sudo`,
      );
    }
    prepareLockDir(dir, uid, isDefault && uid === 0);
    const path = join(dir, name.replace(/^\/+/, "").replace(/[/:]/g, "_") + ".lock");
    const out = scratch();
    const fd = native().nvm_lock_acquire(cstr(path), out.ptr);
    if (fd >= 0) return new OwnerLock(fd, path);
    const errno = -fd;
    if (errno === ELOOP) {
      throw new PermissionError(`${path} is a symbolic link: refused, nothing was written through it. Remove it: rm ${path}`);
    }
    if (errno === EPERM && out.u32[3] === 1) {
      const [mode, fuid, nlink] = [out.u32[0]!, out.u32[1]!, out.u32[2]!];
      const what =
        (mode & S_IFMT) !== S_IFREG
          ? `not a regular file (mode ${(mode & S_IFMT) === S_IFLNK ? "symlink" : "0" + (mode & S_IFMT).toString(8)})`
          : fuid !== uid
            ? `owned by ${ownerName(fuid)}, not ${ownerName(uid)}`
            : `a file with ${nlink} links (a hard link to another file)`;
      throw new PermissionError(`${path} is ${what}: refused, nothing was written to it. Remove it: rm ${path}`);
    }
    if (errno === EACCES) {
      throw new PermissionError(`cannot open ${path}: permission denied (someone else's file in a directory of ours); remove it: rm ${path}`);
    }
    if (errno !== EBUSY) throw new NativeError(`cannot lock ${path}: ${errnoName(errno)}`, errno, "flock", path);
    const pid = out.u32[4]!;
    const who = pid ? `process ${pid}` : "another process";
    if (force) {
      process.stderr.write(
        `libnvm: force: ${name} is owned by ${who}; resetting it anyway. That process's commands will fail and its DMA memory is no longer used by the controller.\n`,
      );
      return undefined;
    }
    throw new ControllerBusyError(
      `${name} is in use by ${who}${pid ? ` (see /proc/${pid}/cmdline)` : ""}: close it there first; if that process hangs, kill it, or open with force (--force) to reset the controller under it`,
      pid,
    );
  }

  release(): void {
    if (this.#fd < 0) return;
    native().nvm_lock_release(this.#fd);
    this.#fd = -1;
  }
}
