/** `deltaship demo` (npm start): a whole deployment set on this machine; see local/demo.ts. */
import { runDemoCommand } from "../local/demo-cli.js";

export function run(args: string[]): Promise<number> {
  return runDemoCommand(args);
}
