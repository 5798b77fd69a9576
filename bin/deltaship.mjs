#!/usr/bin/env node
// Runs the TypeScript command line through tsx, so no build step is needed after `npm install`.
import { fileURLToPath } from "node:url";
import { register } from "tsx/esm/api";

register();
const { launch } = await import("../cli/launch.ts");
const code = await launch(process.argv.slice(2), fileURLToPath(import.meta.url));
// Exit explicitly: a command that failed half-way may leave sockets or child handles behind.
process.exit(code);
