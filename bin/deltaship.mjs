#!/usr/bin/env node
// Runs the TypeScript command line through tsx, so no build step is needed after `npm install`.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../cli/main.ts");
process.exitCode = await main(process.argv.slice(2));
