/** examples/doctor.ts on a machine set up right and set up wrong: what works, and the command that fixes what does not. */
import { expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { diagnose } from "../../lib/diagnose.ts";
import { ctrlAddress, REPO } from "./common.ts";

function doctor(args: string[], asNobody = false) {
  const cmd = ["bun", "examples/doctor.ts", `--ctrl=${ctrlAddress()}`, ...args];
  const p = Bun.spawnSync(asNobody ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ...cmd] : cmd, { cwd: REPO, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

test("an unbound controller in a guest without IOMMU: sysfs works; VFIO and disnvm say what to run", () => {
  const bdf = ctrlAddress();
  const d = diagnose(bdf);
  expect(d.error).toBeUndefined();
  expect(d.device?.driver).toBeNull();
  const byKind = Object.fromEntries(d.paths.map((p) => [p.kind, p]));
  expect(byKind.sysfs!.possible).toBe(true);
  expect(byKind.vfio!.possible).toBe(false);
  expect(byKind.vfio!.problems.join()).toContain("IOMMU is off");
  expect(byKind.vfio!.fixes.join()).toContain("intel_iommu=on");
  expect(byKind.disnvm!.possible).toBe(false);
  expect(byKind.disnvm!.fixes).toContain(`echo disnvm > /sys/bus/pci/devices/${bdf}/driver_override`);
  expect(d.recommended).toBe("sysfs");

  const r = doctor([]);
  expect(r.code).toBe(0);
  expect(r.out).toContain("sysfs   works now");
  expect(r.out).toContain("vfio    not possible: no IOMMU groups");
  expect(r.out).toContain(`use:    libnvm id-ctrl ${bdf}`);
  const j = JSON.parse(doctor(["--json"]).out);
  expect(j.recommended).toBe("sysfs");
});

test("bound to the kernel's nvme driver: sysfs is not possible, and the fix is the unbind command", () => {
  const bdf = ctrlAddress();
  const modroot = process.env.LIBNVM_VM_MODROOT;
  if (!modroot) throw new Error("LIBNVM_VM_MODROOT is not set");
  expect(Bun.spawnSync(["modprobe", "-d", modroot, "nvme"]).exitCode).toBe(0);
  try {
    const deadline = Date.now() + 30_000;
    while (diagnose(bdf).device?.driver !== "nvme" && Date.now() < deadline) Bun.sleepSync(50);
    const r = doctor([]);
    expect(r.code).toBe(1);
    expect(r.out).toContain("sysfs   not possible: bound to nvme");
    expect(r.out).toContain(`fix: echo ${bdf} > /sys/bus/pci/drivers/nvme/unbind`);
  } finally {
    writeFileSync(`/sys/bus/pci/drivers/nvme/unbind`, bdf);
    Bun.spawnSync(["rmmod", "nvme"]);
  }
});

test("not root: sysfs needs CAP_SYS_ADMIN, and doctor says to run as root", () => {
  const r = doctor([], true);
  expect(r.out).toContain("sysfs   not possible: needs root (CAP_SYS_ADMIN)");
  expect(r.out).toContain(`sudo libnvm id-ctrl ${ctrlAddress()}`);
  expect(r.code).toBe(1);
});

test("the GPU side: without a CUDA driver doctor says so and how to fix it; with one (the mock) it lists the GPUs and names what the controller still lacks", () => {
  const none = Bun.spawnSync(["bun", "examples/doctor.ts", `--ctrl=${ctrlAddress()}`], {
    cwd: REPO,
    env: { ...process.env, LIBNVM_LIBCUDA: "/nonexistent/libcuda.so.1" },
    stdout: "pipe",
  });
  const out = none.stdout.toString();
  expect(none.exitCode).toBe(0); // the controller paths decide the exit code
  expect(out).toContain("gpu     not possible: no CUDA driver; the controller is not bound: only the disnvm module imports dma-bufs");
  expect(out).toContain("fix: install NVIDIA's driver");
  expect(out).toContain("cuda:   no driver");

  const mock = `${REPO}/test/cuda/build/libcuda.so.1`;
  const j = JSON.parse(
    Bun.spawnSync(["bun", "examples/doctor.ts", `--ctrl=${ctrlAddress()}`, "--json"], { cwd: REPO, env: { ...process.env, LIBNVM_LIBCUDA: mock }, stdout: "pipe" }).stdout.toString(),
  );
  expect(j.gpu.driver.found).toBe(true);
  expect(j.gpu.devices.length).toBeGreaterThan(0);
  expect(j.gpu.devices[0].dmaBufSupported).toBe(true);
  expect(j.gpu.possible).toBe(false);
  expect(j.gpu.problems).toEqual(["the controller is not bound: only the disnvm module imports dma-bufs (VFIO type1 cannot)"]);
  // --skip-gpu leaves the driver alone.
  const skipped = JSON.parse(Bun.spawnSync(["bun", "examples/doctor.ts", `--ctrl=${ctrlAddress()}`, "--json", "--skip-gpu"], { cwd: REPO, stdout: "pipe" }).stdout.toString());
  expect(skipped.gpu).toBeUndefined();
});
