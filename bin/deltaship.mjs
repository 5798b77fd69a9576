#!/usr/bin/env node
// Runs the TypeScript command line through tsx, so no build step is needed after `npm install`.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../cli/main.ts");
const code = await main(process.argv.slice(2));
// Exit explicitly: a command that failed half-way may leave sockets or child handles behind.
process.exit(code);
