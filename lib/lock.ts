/**
 * One owner per controller: an advisory lock (flock) taken before the controller is touched and
 * held until close(). A second process gets ControllerBusyError naming the owner's PID instead of
 * resetting the controller under it. The kernel drops the lock when the owner dies, even by
 * SIGKILL, so a crash never leaves a stale lock behind.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ControllerBusyError, NativeError } from "./errors.ts";
import { cstr, errnoName, native } from "./native.ts";

/** Where lock files live. Defaults to /run/libnvm (tmpfs: gone at reboot, as the locks should be). */
export function lockDir(): string {
  return process.env.LIBNVM_LOCK_DIR ?? "/run/libnvm";
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
   * Take the lock for `name` (a BDF or a device path). With `force`, a lock held by a live process
   * is ignored with a warning: for a hung owner that cannot be killed; the owner's commands will fail.
   * Returns undefined when forced past a holder.
   */
  static acquire(name: string, force = false): OwnerLock | undefined {
    const dir = lockDir();
    const path = join(dir, name.replace(/^\/+/, "").replace(/[/:]/g, "_") + ".lock");
    if (!existsSync(dir)) {
      try {
        mkdirSync(dir, { recursive: true });
        // Sticky and world-writable like /run/lock: owners need not be root (VFIO, disnvm).
        chmodSync(dir, 0o1777);
      } catch (e) {
        // Another process may have made it meanwhile; only a missing directory is an error.
        if (!existsSync(dir)) {
          throw new NativeError(`cannot create the lock directory ${dir}: ${(e as Error).message}; set LIBNVM_LOCK_DIR to a writable directory`, 13, "mkdir", dir);
        }
      }
    }
    const fd = native().nvm_lock_acquire(cstr(path));
    if (fd >= 0) return new OwnerLock(fd, path);
    if (fd !== -16) throw new NativeError(`cannot lock ${path}: ${errnoName(-fd)}`, -fd, "flock", path);
    let pid = 0;
    try {
      pid = parseInt(readFileSync(path, "utf8").trim(), 10) || 0;
    } catch {
      // The owner is releasing it right now; 0 says "unknown".
    }
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
