/**
 * Reserving 2 MiB hugepages on demand, and giving them back.
 *
 * A fresh machine has none (nr_hugepages 0), so the first hugetlb mapping fails with ENOMEM. A
 * process that may write the pool's size (root) raises it by what it lacks, says so once on
 * stderr, and lowers it again on close: never below what it found, and never by more pages than
 * are free and unpromised, so no page another process maps or has reserved is taken.
 * The counters are the kernel's (Documentation/admin-guide/mm/hugetlbpage.rst): nr_hugepages is
 * the persistent pool, free_hugepages what nobody maps, resv_hugepages the free pages already
 * promised to mappings that have not touched them yet.
 *
 * Two libnvm processes raising the pool at the same time each count the other's pages in "what was
 * there before", so one of them may leave its pages reserved: wasted memory until someone lowers
 * it, never a page taken from under a user. A process killed by SIGKILL leaves its raise in place
 * (the pages themselves are free again and the next run uses them without raising).
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DeviceError, NativeError, PermissionError } from "../errors.ts";

/** The 2 MiB pool, whatever the default hugepage size is (nvm_dma_alloc maps with MAP_HUGE_2MB). */
export const HUGEPAGES_2M_DIR = "/sys/kernel/mm/hugepages/hugepages-2048kB";

/** The kernel's counters of one hugepage pool. */
export interface HugepageCounters {
  /** Where the pool's size is written, for the commands in messages. */
  readonly path: string;
  /** nr_hugepages. */
  total(): number;
  /** Write nr_hugepages; throws the write's error (EACCES, EROFS, ...). */
  setTotal(n: number): void;
  /** free_hugepages. */
  free(): number;
  /** resv_hugepages. */
  reserved(): number;
}

/** The counters under `dir` (a /sys/kernel/mm/hugepages/hugepages-<size>kB directory). */
export function sysfsCounters(dir = HUGEPAGES_2M_DIR): HugepageCounters {
  const read = (name: string) => {
    const path = join(dir, name);
    try {
      return Number(readFileSync(path, "utf8").trim());
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT") {
        throw new DeviceError(`${path} does not exist: this kernel has no 2 MiB hugepages (CONFIG_HUGETLBFS off, or not x86_64); the sysfs backend needs them`);
      }
      throw new NativeError(`cannot read ${path}: ${code}`, (e as NodeJS.ErrnoException).errno ?? 5, "read", path);
    }
  };
  const path = join(dir, "nr_hugepages");
  return {
    path,
    total: () => read("nr_hugepages"),
    setTotal: (n: number) => writeFileSync(path, `${n}\n`),
    free: () => read("free_hugepages"),
    reserved: () => read("resv_hugepages"),
  };
}

/** Where the one-time notice goes; `said` makes it once per process. */
export interface Notice {
  said: boolean;
  say(line: string): void;
}

const stderrNotice: Notice = { said: false, say: (line) => void process.stderr.write(line + "\n") };

const permanently = (n: number) =>
  `to reserve them permanently: echo 'vm.nr_hugepages = ${n}' > /etc/sysctl.d/80-libnvm.conf && sysctl --system (2 MiB is x86_64's default hugepage size), or boot with hugepagesz=2M hugepages=${n}`;

/** What one owner (a backend) added to the pool, to give back on close. */
export class HugepageReservation {
  readonly #counters: HugepageCounters;
  readonly #notice: Notice;
  /** nr_hugepages when this reservation first raised it: release() never goes below. */
  #before = 0;
  #raised = 0;

  constructor(counters: HugepageCounters = sysfsCounters(), notice: Notice = stderrNotice) {
    this.#counters = counters;
    this.#notice = notice;
  }

  /** Pages this reservation added and has not given back. */
  get raised(): number {
    return this.#raised;
  }

  /**
   * Make room for `count` more hugepages after a mapping failed for lack of them: raise the pool by
   * what the free, unpromised pages lack (at least 1). PermissionError when this process may not
   * write the pool's size, DeviceError when the kernel cannot find the memory; both name the command.
   */
  raise(count: number): void {
    const c = this.#counters;
    const total = c.total();
    const spare = Math.max(0, c.free() - c.reserved());
    const need = Math.max(1, count - spare);
    const want = total + need;
    try {
      c.setTotal(want);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? String(e);
      if (code === "EACCES" || code === "EPERM" || code === "EROFS") {
        throw new PermissionError(
          `no free 2 MiB hugepage for DMA memory (${count} needed, ${spare} free), and this process may not reserve any (${code} writing ${c.path}): ` +
            `reserve them as root: echo ${want} > ${c.path} (${permanently(want)})`,
        );
      }
      throw new NativeError(`cannot write ${c.path}: ${code}`, (e as NodeJS.ErrnoException).errno ?? 5, "write", c.path);
    }
    const now = c.total();
    if (now < want) {
      // The kernel found fewer free 2 MiB ranges than asked: give back the partial gain, unless
      // someone changed the pool meanwhile.
      if (now > total) {
        try {
          c.setTotal(total);
        } catch {
          // We just wrote it; if that no longer works, the pages merely stay reserved.
        }
      }
      throw new DeviceError(
        `the kernel could not supply ${need} more 2 MiB hugepage(s) for DMA memory (asked ${c.path} to go from ${total} to ${want}, got ${now}): memory is too fragmented. ` +
          `Compact it and try again: echo 1 > /proc/sys/vm/compact_memory; echo ${want} > ${c.path}; or reserve them at boot with hugepagesz=2M hugepages=${want}`,
      );
    }
    if (this.#raised === 0) this.#before = total;
    this.#raised += need;
    if (!this.#notice.said) {
      this.#notice.said = true;
      this.#notice.say(
        `libnvm: no free 2 MiB hugepage for DMA memory: raised ${c.path} from ${total} to ${want} (${need} page${need === 1 ? "" : "s"}, more as needed), given back on close; ${permanently(Math.max(want, 64))}`,
      );
    }
  }

  /**
   * Give back what raise() added: read the counters first and lower the pool by at most the free,
   * unpromised pages, never below what it was before the first raise. Pages still mapped (DMA
   * memory abandoned to a controller that may still write it) stay reserved.
   */
  release(): void {
    if (this.#raised === 0) return;
    const c = this.#counters;
    const raised = this.#raised;
    this.#raised = 0;
    const total = c.total();
    const spare = Math.max(0, c.free() - c.reserved());
    const down = Math.min(raised, spare, total - this.#before);
    if (down <= 0) return;
    try {
      c.setTotal(total - down);
    } catch {
      // It could be raised, so it can normally be lowered; if not, the pages stay reserved, which is safe.
    }
  }
}
