// `deltaship demo --serve`: after the sample set the whole local system keeps running, and a
// deployment started over HTTP (as a user would with curl) goes through to its manifest push,
// followed through the Durable status route. Ctrl-C (SIGINT) then stops everything cleanly.
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { type DemoJson, RUN_LIMIT_MS, STOP_LIMIT_MS, startDemo } from "./run-demo.js";

/** How long the second set may take once started; it ships one small bundle to one device. */
const SET_LIMIT_MS = 2 * 60 * 1000;
const POLL_MS = 250;

let workDir = "";
after(() => (workDir ? rm(workDir, { recursive: true, force: true }) : undefined));

test("--serve keeps the system running: a deployment POSTed afterwards completes and is visible in the status API", async () => {
  workDir = await mkdtemp(join(tmpdir(), "deltaship-demo-serve-"));
  const child = startDemo([
    "--serve",
    "--json",
    "--devices",
    "1",
    "--time-factor",
    "200",
    "--work-dir",
    workDir,
  ]);
  const exited = once(child, "exit");
  const killer = setTimeout(() => child.kill("SIGKILL"), RUN_LIMIT_MS);
  try {
    let stdout = "";
    let stderr = "";
    // Ready once the JSON line is complete on stdout and the serving note is on stderr (two pipes, either order).
    const origin = await new Promise<string>((resolve, reject) => {
      const check = () => {
        const found = /serving on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr);
        if (found && stdout.endsWith("\n")) resolve(found[1]!);
      };
      child.stdout.on("data", (c: Buffer) => {
        stdout += c.toString();
        check();
      });
      child.stderr.on("data", (c: Buffer) => {
        stderr = (stderr + c.toString()).slice(-8000);
        check();
      });
      child.on("exit", (code) => reject(new Error(`demo exited ${code} before serving: ${stderr}`)));
    });
    const first = JSON.parse(stdout) as DemoJson;
    assert.equal(first.outcome, "succeeded");
    assert.match(
      stderr,
      new RegExp(`curl -s -X POST ${origin}/api/deployments .* -d @${workDir}/deployment.json`),
    );

    // The kept request, edited to deploy another image from the container registry to ship-1.
    const request = JSON.parse(await readFile(join(workDir, "deployment.json"), "utf8"));
    const desired = request.manifest.modulesContent.$edgeAgent["properties.desired"];
    const telemetry = desired.modules.telemetry;
    const image = telemetry.settings.image.replace("samples/telemetry:1.1", "samples/runtime:1");
    desired.modules = { runtime: { ...telemetry, settings: { ...telemetry.settings, image } } };
    const response = await fetch(`${origin}/api/deployments`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(request),
    });
    const started = (await response.json()) as { id: string; statusQueryGetUri: string };
    assert.equal(response.status, 202, JSON.stringify(started));
    assert.notEqual(started.id, first.setId);

    let status: { runtimeStatus: string; output?: { state?: string } } = { runtimeStatus: "Pending" };
    const deadline = Date.now() + SET_LIMIT_MS;
    while (!["Completed", "Failed", "Terminated"].includes(status.runtimeStatus) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, POLL_MS));
      status = (await (await fetch(started.statusQueryGetUri)).json()) as typeof status;
    }
    assert.equal(status.runtimeStatus, "Completed", JSON.stringify(status));
    assert.equal(status.output?.state, "succeeded", JSON.stringify(status.output));

    const set = (await (await fetch(`${origin}/api/deployments/${started.id}`)).json()) as {
      items: { device: string; image?: string; state: string }[];
    };
    assert.deepEqual(
      set.items.map((i) => [i.device, i.state]),
      [["ship-1", "arrived"]],
    );
    // The second set pushed ship-1's manifest again and sent its own email.
    assert.deepEqual((await readdir(join(workDir, "iothub-manifests"))).sort(), [
      "001-ship-1.json",
      "002-ship-1.json",
    ]);
    assert.equal((await readdir(join(workDir, "emails"))).length, 2);
    const pushed = JSON.parse(await readFile(join(workDir, "iothub-manifests", "002-ship-1.json"), "utf8"));
    assert.equal(
      pushed.modulesContent.$edgeAgent["properties.desired"].modules.runtime.settings.image,
      "localhost:5000/samples/runtime:1",
    );

    child.kill("SIGINT");
    const [code] = await exited;
    assert.equal(code, 0, stderr);
  } finally {
    clearTimeout(killer);
    if (child.exitCode === null) {
      // SIGINT lets the demo stop its services (Azurite, registries, the broker on 8883); SIGKILL only if it hangs.
      child.kill("SIGINT");
      const hung = setTimeout(() => child.kill("SIGKILL"), STOP_LIMIT_MS);
      await exited.catch(() => undefined);
      clearTimeout(hung);
    }
  }
});
