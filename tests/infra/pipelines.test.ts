// Azure Pipelines cannot run here: check that every pipeline file is valid YAML, that every
// template it extends exists, that every script it runs is in the repository, and that every
// workstream manifest is a well-formed IoT Edge deployment template.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { describe, test } from "node:test";
import { parse } from "yaml";

const root = join(import.meta.dirname, "../..");

function files(dir: string, ending: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) =>
    d.isDirectory() ? files(join(dir, d.name), ending) : d.name.endsWith(ending) ? [join(dir, d.name)] : [],
  );
}

/** Every string value anywhere in a parsed document, with the key it sits under. */
function* strings(node: unknown, key = ""): Generator<[string, string]> {
  if (typeof node === "string") yield [key, node];
  else if (Array.isArray(node)) for (const item of node) yield* strings(item, key);
  else if (node !== null && typeof node === "object") {
    for (const [k, v] of Object.entries(node)) yield* strings(v, k);
  }
}

const SCRIPT_REFERENCE = /(?:^|\s)(?:bash|node|sh)\s+(scripts\/[\w./-]+)/g;

describe("pipelines", () => {
  const pipelineFiles = files(join(root, "pipelines"), ".yml");

  test("there is a build pipeline per module and a deployment pipeline", () => {
    const names = pipelineFiles.map((f) => relative(root, f));
    assert.ok(names.includes("pipelines/templates/module-build.yml"));
    assert.ok(names.includes("pipelines/templates/start-deployment.yml"));
    assert.ok(names.filter((n) => n.startsWith("pipelines/modules/")).length >= 3);
  });

  for (const file of pipelineFiles) {
    const name = relative(root, file);
    test(`${name} parses and references only files that exist`, () => {
      const doc = parse(readFileSync(file, "utf8")) as Record<string, unknown>;
      assert.equal(typeof doc, "object");
      assert.ok(doc.jobs || doc.stages || doc.steps, `${name} has no jobs, stages or steps`);
      for (const [key, value] of strings(doc)) {
        if (key === "template") {
          const target = join(dirname(file), value);
          assert.ok(existsSync(target), `${name}: template ${value} does not exist`);
        }
        if (key === "scriptPath") {
          assert.ok(existsSync(join(root, value)), `${name}: scriptPath ${value} does not exist`);
        }
        for (const match of value.matchAll(SCRIPT_REFERENCE)) {
          assert.ok(existsSync(join(root, match[1])), `${name}: script ${match[1]} does not exist`);
        }
      }
    });
  }

  test("module pipelines filter on their own module's path", () => {
    for (const file of pipelineFiles.filter((f) => f.includes("/modules/"))) {
      const doc = parse(readFileSync(file, "utf8")) as { trigger: { paths: { include: string[] } } };
      const [workstream, module] = [
        ...(doc.trigger.paths.include[0].match(/^modules\/([\w-]+)\/([\w-]+)\/\*$/) ?? []),
      ].slice(1);
      assert.ok(
        workstream && module,
        `${relative(root, file)}: first path filter is not modules/<workstream>/<module>/*`,
      );
      assert.equal(relative(join(root, "pipelines/modules"), file), `${workstream}-${module}.yml`);
    }
  });

  test("the script reference check finds references", () => {
    const found = [..."bash scripts/pipelines/test-module.sh x".matchAll(SCRIPT_REFERENCE)].map((m) => m[1]);
    assert.deepEqual(found, ["scripts/pipelines/test-module.sh"]);
  });
});

describe("workstream manifests", () => {
  const manifests = files(join(root, "manifests"), "deployment.template.json");

  test("there is one per workstream", () => {
    assert.ok(manifests.length >= 3);
  });

  for (const file of manifests) {
    test(`${relative(root, file)} is an IoT Edge deployment with the registry and reconstruction modules`, () => {
      const doc = JSON.parse(readFileSync(file, "utf8"));
      const agent = doc.modulesContent.$edgeAgent["properties.desired"];
      assert.equal(agent.schemaVersion, "1.1");
      assert.ok(agent.systemModules.edgeAgent.settings.image);
      assert.ok(agent.systemModules.edgeHub.settings.image);
      assert.ok(agent.modules.localRegistry, "no localRegistry module");
      assert.ok(agent.modules.imageReconstruction, "no imageReconstruction module");
      for (const [name, module] of Object.entries<{ settings: { image: string; createOptions: string } }>(
        agent.modules,
      )) {
        assert.equal(typeof module.settings.image, "string", `${name} has no image`);
        // createOptions is a JSON string in IoT Edge's format.
        JSON.parse(module.settings.createOptions);
      }
      const routes = doc.modulesContent.$edgeHub["properties.desired"].routes;
      assert.ok(
        Object.values<string>(routes).some((r) => r.includes("/modules/imageReconstruction/outputs/reports")),
        "no route carries the reconstruction module's reports upstream",
      );
    });
  }
});
