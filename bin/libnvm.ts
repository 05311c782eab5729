#!/usr/bin/env bun
/** The `libnvm` command (package.json "bin"): `libnvm --help` lists the subcommands. */
import { main } from "../cli/main.ts";

process.exit(await main(process.argv.slice(2)));
