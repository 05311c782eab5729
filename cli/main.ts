/**
 * `libnvm`: nvme-cli's everyday commands for controllers the kernel's nvme driver no longer holds,
 * through libnvm's backends (sysfs, VFIO, disnvm). One module per group of subcommands; the
 * library does the work, this layer parses, prints and maps failures to exit statuses.
 */
import { commandHelp, errorLine, EXIT, exitCodeFor, parseCommand, type Command } from "./cli.ts";
import { bashCompletion, zshCompletion } from "./commands/completion.ts";
import { errorLog, fwLog, smartLog } from "./commands/logs.ts";
import { format } from "./commands/format.ts";
import { getFeature, setFeature } from "./commands/features.ts";
import { idCtrl, idNs, listNs } from "./commands/identify.ts";
import { compare, dsm, flush, read, write, writeZeroes } from "./commands/io.ts";
import { list } from "./commands/list.ts";
import { discover } from "./commands/discover.ts";
import { doctor, gpuRead, perf, reset } from "./commands/tools.ts";
import pkg from "../package.json" with { type: "json" };

const completion: Command = {
  name: "completion",
  summary: "shell completion script for bash or zsh",
  description:
    "Prints a completion script for every subcommand, option and controller on this machine.\n" +
    "  bash: source <(libnvm completion bash)     or save it as /etc/bash_completion.d/libnvm\n" +
    "  zsh:  source <(libnvm completion zsh)      after compinit, or save it as _libnvm in a directory of $fpath",
  device: false,
  positionals: { name: "shell", values: ["bash", "zsh"] },
  options: {},
  run(ctx) {
    process.stdout.write(ctx.positionals[0] === "bash" ? bashCompletion(COMMANDS) : zshCompletion(COMMANDS));
  },
};

const version: Command = {
  name: "version",
  summary: "libnvm's version",
  description: "Prints the package version and the Bun running it.",
  device: false,
  options: {},
  run() {
    process.stdout.write(`libnvm version ${pkg.version} (bun ${Bun.version})\n`);
  },
};

export const COMMANDS: readonly Command[] = [
  list,
  discover,
  idCtrl,
  idNs,
  listNs,
  smartLog,
  errorLog,
  fwLog,
  getFeature,
  setFeature,
  format,
  read,
  write,
  compare,
  writeZeroes,
  dsm,
  flush,
  perf,
  gpuRead,
  doctor,
  reset,
  completion,
  version,
];

export const EXIT_HELP = `Exit status:
  ${EXIT.OK}  success
  ${EXIT.CONTROLLER}  the controller failed the command (its status, named on stderr), a command timed out, or the controller failed
  ${EXIT.USAGE}  usage: unknown command or option, a missing or malformed value, or a value refused before anything was sent
  ${EXIT.DEVICE}  the device cannot be used as asked: not found, unreachable (NVMe/TCP), bound to another driver, no permission, owned by another process,
     a format libnvm does not transfer (metadata); doctor: no backend can reach it
  ${EXIT.MISMATCH}  compare: the data differ
  ${EXIT.FILE}  a local file could not be read or written
  128+N  ended by signal N (130: SIGINT); the controller was shut down first
`;

function topHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length)) + 2;
  return (
    `Usage: libnvm <command> [<device>] [OPTIONS]\n\n` +
    `nvme-cli's everyday commands for NVMe controllers driven from userspace by libnvm (not bound to the kernel's\n` +
    `nvme driver): same names, same JSON (-o json). <device> is the controller's PCI address (05:00.0),\n` +
    `/dev/disnvmN, smartio:<fdid> (borrowed across a Dolphin SmartIO cluster), or an NVMe/TCP address\n` +
    `nvme+tcp://HOST[:PORT]/SUBNQN; \`libnvm list\` shows the local ones, \`libnvm discover nvme+tcp://HOST[:PORT]\` what a\n` +
    `target offers.\n\nCommands:\n` +
    COMMANDS.map((c) => `  ${c.name.padEnd(width)}${c.summary}`).join("\n") +
    `\n  ${"help".padEnd(width)}help <command> prints a command's options (as does <command> --help)\n\n${EXIT_HELP}`
  );
}

/** Run the command line `argv` (without the program name); resolves to the exit status. */
export async function main(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) {
    process.stderr.write("libnvm: no command given (libnvm --help lists them)\n");
    return EXIT.USAGE;
  }
  if (name === "--help" || name === "-h") {
    process.stdout.write(topHelp());
    return EXIT.OK;
  }
  if (name === "--version" || name === "-V") return main(["version"]);
  if (name === "help") {
    if (rest[0] === undefined) {
      process.stdout.write(topHelp());
      return EXIT.OK;
    }
    return main([rest[0], "--help"]);
  }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) {
    const near = COMMANDS.filter((c) => c.name.startsWith(name.slice(0, 3))).map((c) => c.name);
    process.stderr.write(`libnvm: unknown command "${name}"${near.length ? ` (did you mean ${near.join(" or ")}?)` : ""} (libnvm --help lists them)\n`);
    return EXIT.USAGE;
  }
  try {
    const ctx = parseCommand(cmd, rest);
    if (ctx === "help") {
      process.stdout.write(cmd.help ? await cmd.help() : commandHelp(cmd));
      return EXIT.OK;
    }
    await cmd.run(ctx);
    return typeof process.exitCode === "number" ? process.exitCode : EXIT.OK;
  } catch (e) {
    process.stderr.write(errorLine(name, e) + "\n");
    return exitCodeFor(e);
  }
}
