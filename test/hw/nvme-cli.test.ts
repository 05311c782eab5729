/**
 * `libnvm ... -o json` against nvme-cli's JSON for the same controller in the same boot: Debian's
 * nvme-cli (the host's, through the guest's root) runs while the kernel's nvme driver holds the
 * controller; then the driver lets go of it and libnvm runs the same commands. Compared key by
 * key: the same keys in the same order, the same JSON types, the same values.
 *
 * Keys that depend on the driver rather than the controller, and how they are compared:
 * - list: "DevicePath" is the kernel's block device (/dev/nvme0n1) for nvme-cli and the controller's
 *   address for libnvm (there is no block device); the entries' order is the kernel's sysfs order,
 *   so entries are matched by "NameSpace". libnvm adds a top-level "Controllers" array nvme-cli
 *   does not print (scripts reading "Devices" are unaffected).
 * - fw-log: the one top-level key is the kernel's device name ("nvme0") for nvme-cli and the
 *   controller's address for libnvm; the objects under it are compared whole.
 * Everything else (id-ctrl, id-ns of each namespace, smart-log and -H, error-log, list-ns) must be
 * equal. Nothing does I/O between the two runs, so the SMART counters are equal too.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, readlinkSync, writeFileSync } from "node:fs";
import { basename } from "node:path";
import { ctrlAddress, libnvm, requireExpected } from "./common.ts";

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** nvme-cli's JSON for each comparison, captured while the kernel driver held the controller. */
const theirs: Record<string, Json> = {};
/** The kernel's name for the controller (nvme0). */
let kernelName = "";
/** What libnvm said while the kernel driver held the controller. */
let whileBound: { idCtrl: ReturnType<typeof libnvm>; list: Json } | undefined;

const driverOf = (bdf: string) => {
  try {
    return basename(readlinkSync(`/sys/bus/pci/devices/${bdf}/driver`));
  } catch {
    return null;
  }
};

function nvme(args: string[]): Json {
  const p = Bun.spawnSync(["nvme", ...args], { stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`nvme ${args.join(" ")} exited ${p.exitCode}: ${p.stderr.toString()}`);
  return JSON.parse(p.stdout.toString());
}

function release(): void {
  const bdf = ctrlAddress();
  if (driverOf(bdf) === "nvme") writeFileSync("/sys/bus/pci/drivers/nvme/unbind", bdf);
  Bun.spawnSync(["rmmod", "nvme"]);
}

beforeAll(() => {
  const bdf = ctrlAddress();
  const nsids = requireExpected().namespaces.map((n) => n.nsid);
  const modroot = process.env.LIBNVM_VM_MODROOT;
  if (!modroot) throw new Error("LIBNVM_VM_MODROOT is not set: this test loads the guest kernel's nvme driver");
  const which = Bun.spawnSync(["nvme", "version"], { stdout: "pipe", stderr: "pipe" });
  if (which.exitCode !== 0) throw new Error("nvme-cli is not installed: bash test/vm/setup.sh installs Debian's nvme-cli");
  const load = Bun.spawnSync(["modprobe", "-d", modroot, "nvme"], { stderr: "pipe" });
  if (load.exitCode !== 0) throw new Error(`modprobe nvme failed: ${load.stderr.toString()}`);
  try {
    // The driver binds, creates the controller, then one block device per namespace: wait for all.
    const deadline = Date.now() + 30_000;
    const ready = () => {
      if (driverOf(bdf) !== "nvme") return false;
      kernelName = (() => {
        try {
          return Bun.spawnSync(["ls", `/sys/bus/pci/devices/${bdf}/nvme`], { stdout: "pipe" }).stdout.toString().trim();
        } catch {
          return "";
        }
      })();
      return kernelName !== "" && nsids.every((n) => existsSync(`/dev/${kernelName}n${n}`));
    };
    while (!ready()) {
      if (Date.now() > deadline) throw new Error(`the kernel's nvme driver did not bind ${bdf} and create its namespaces within 30 s`);
      Bun.sleepSync(50);
    }
    const dev = `/dev/${kernelName}`;
    theirs["id-ctrl"] = nvme(["id-ctrl", dev, "-o", "json"]);
    for (const n of nsids) theirs[`id-ns ${n}`] = nvme(["id-ns", dev, "-n", String(n), "-o", "json"]);
    theirs["list-ns"] = nvme(["list-ns", dev, "-o", "json"]);
    // The kernel reads the partition tables after the namespaces appear: wait until the read
    // counters hold still, so nothing counts between nvme-cli's SMART log and libnvm's.
    let last = "";
    for (;;) {
      const now = JSON.stringify(nvme(["smart-log", dev, "-o", "json"]));
      if (now === last) break;
      if (Date.now() > deadline) throw new Error("the SMART log's counters did not settle within 30 s of binding");
      last = now;
      Bun.sleepSync(200);
    }
    theirs["smart-log"] = nvme(["smart-log", dev, "-o", "json"]);
    theirs["smart-log -H"] = nvme(["smart-log", dev, "-H", "-o", "json"]);
    theirs["error-log"] = nvme(["error-log", dev, "-o", "json"]);
    theirs["fw-log"] = nvme(["fw-log", dev, "-o", "json"]);
    theirs.list = nvme(["list", "-o", "json"]);
    whileBound = { idCtrl: libnvm(["id-ctrl", bdf]), list: JSON.parse(libnvm(["list", "-o", "json"]).out) };
  } finally {
    release();
  }
  if (driverOf(bdf) !== null) throw new Error(`${bdf} is still bound to ${driverOf(bdf)} after unbind`);
});

afterAll(release);

const typeOf = (v: Json) => (v === null ? "null" : Array.isArray(v) ? "array" : typeof v);

/** Every difference between nvme-cli's value and ours: keys, their order, JSON types, values. */
function differences(a: Json, b: Json, path = ""): string[] {
  if (typeOf(a) !== typeOf(b)) return [`${path || "."}: nvme-cli has ${typeOf(a)} ${JSON.stringify(a)}, libnvm ${typeOf(b)} ${JSON.stringify(b)}`];
  if (Array.isArray(a)) {
    const bb = b as Json[];
    if (a.length !== bb.length) return [`${path}: nvme-cli has ${a.length} entries, libnvm ${bb.length}`];
    return a.flatMap((x, i) => differences(x, bb[i]!, `${path}[${i}]`));
  }
  if (a !== null && typeof a === "object") {
    const bo = b as { [k: string]: Json };
    const ka = Object.keys(a);
    const kb = Object.keys(bo);
    if (ka.join() !== kb.join()) {
      const missing = ka.filter((k) => !(k in bo));
      const extra = kb.filter((k) => !(k in a));
      return [`${path || "."}: keys differ${missing.length ? `; libnvm lacks ${missing.join(", ")}` : ""}${extra.length ? `; libnvm adds ${extra.join(", ")}` : ""}${!missing.length && !extra.length ? `; order ${ka.join(",")} vs ${kb.join(",")}` : ""}`];
    }
    return ka.flatMap((k) => differences(a[k]!, bo[k]!, `${path}.${k}`));
  }
  return a === b ? [] : [`${path}: nvme-cli ${JSON.stringify(a)}, libnvm ${JSON.stringify(b)}`];
}

function ours(args: string[]): Json {
  const r = libnvm([...args, "-o", "json"]);
  if (r.code !== 0) throw new Error(`libnvm ${args.join(" ")} -o json exited ${r.code}: ${r.err}`);
  return JSON.parse(r.out);
}

test("while the kernel's nvme driver holds the controller: libnvm refuses it (exit 3, the unbind command) and list says so", () => {
  const bdf = ctrlAddress();
  expect(whileBound!.idCtrl.code).toBe(3);
  expect(whileBound!.idCtrl.err).toContain(`${bdf} is bound to the kernel driver nvme; unbind it first: echo ${bdf} > /sys/bus/pci/devices/${bdf}/driver/unbind`);
  const c = (whileBound!.list as { Controllers: { Address: string; Driver: string; Note: string; SerialNumber: string }[] }).Controllers.find((x) => x.Address === bdf)!;
  expect(c.Driver).toBe("nvme");
  expect(c.SerialNumber).toBe(requireExpected().serial);
  expect(c.Note).toContain(`bound to nvme as ${kernelName}`);
  expect((whileBound!.list as { Devices: unknown[] }).Devices).toEqual([]);
});

test("id-ctrl -o json: equal to nvme-cli's, key by key", () => {
  expect(differences(theirs["id-ctrl"]!, ours(["id-ctrl", ctrlAddress()]))).toEqual([]);
});

test("id-ns -o json of every namespace: equal to nvme-cli's, key by key", () => {
  for (const n of requireExpected().namespaces) {
    expect(differences(theirs[`id-ns ${n.nsid}`]!, ours(["id-ns", ctrlAddress(), "-n", String(n.nsid)]))).toEqual([]);
  }
});

test("smart-log -o json, and with -H: equal to nvme-cli's, key by key, counters included", () => {
  expect(differences(theirs["smart-log"]!, ours(["smart-log", ctrlAddress()]))).toEqual([]);
  expect(differences(theirs["smart-log -H"]!, ours(["smart-log", ctrlAddress(), "-H"]))).toEqual([]);
});

test("list -o json: each namespace's entry equal to nvme-cli's but DevicePath (the driver's device node)", () => {
  const t = (theirs.list as { Devices: { [k: string]: Json }[] }).Devices;
  const o = ours(["list"]) as { Devices: { [k: string]: Json }[]; Controllers: Json };
  expect(Object.keys(o)).toEqual(["Devices", "Controllers"]);
  expect(o.Devices.map((d) => d.NameSpace).sort()).toEqual(t.map((d) => d.NameSpace).sort());
  for (const theirEntry of t) {
    const ourEntry = o.Devices.find((d) => d.NameSpace === theirEntry.NameSpace)!;
    expect(theirEntry.DevicePath).toBe(`/dev/${kernelName}n${theirEntry.NameSpace}`);
    expect(ourEntry.DevicePath).toBe(ctrlAddress());
    expect(differences(theirEntry, { ...ourEntry, DevicePath: theirEntry.DevicePath! })).toEqual([]);
  }
});

test("error-log, list-ns -o json: equal; fw-log: equal under the device's name (nvme-cli's nvme0, libnvm's address)", () => {
  expect(differences(theirs["error-log"]!, ours(["error-log", ctrlAddress()]))).toEqual([]);
  expect(differences(theirs["list-ns"]!, ours(["list-ns", ctrlAddress()]))).toEqual([]);
  const fw = theirs["fw-log"] as { [k: string]: Json };
  expect(Object.keys(fw)).toEqual([kernelName]);
  const o = ours(["fw-log", ctrlAddress()]) as { [k: string]: Json };
  expect(Object.keys(o)).toEqual([ctrlAddress()]);
  expect(differences(fw[kernelName]!, o[ctrlAddress()]!)).toEqual([]);
});
