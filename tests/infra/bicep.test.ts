// Checks the Azure templates without a Bicep compiler (none runs here): every .bicep file must
// parse with tree-sitter-bicep, module paths must exist, and the Function App must set every app
// setting that config/settings.ts reads.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import { before, describe, test } from "node:test";
import { Language, type Node, Parser } from "web-tree-sitter";
import { APP_SETTINGS } from "../../config/settings.js";

const root = join(import.meta.dirname, "../..");
const bicepDir = join(root, "bicep");
const require = createRequire(import.meta.url);

function bicepFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) =>
    d.isDirectory() ? bicepFiles(join(dir, d.name)) : d.name.endsWith(".bicep") ? [join(dir, d.name)] : [],
  );
}

function firstError(node: Node): Node | undefined {
  if (node.isError || node.isMissing) return node;
  for (const child of node.children) {
    if (child?.hasError) return firstError(child) ?? child;
  }
  return undefined;
}

let parser: Parser;

before(async () => {
  await Parser.init();
  const wasm = join(dirname(require.resolve("tree-sitter-bicep/package.json")), "tree-sitter-bicep.wasm");
  parser = new Parser();
  parser.setLanguage(await Language.load(wasm));
});

function parse(text: string) {
  const tree = parser.parse(text);
  assert.ok(tree, "tree-sitter returned no tree");
  return tree;
}

describe("Bicep templates", () => {
  test("the syntax check catches a broken template", () => {
    const tree = parse(
      "param location string = \nresource sa 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n",
    );
    assert.equal(tree.rootNode.hasError, true);
  });

  const files = bicepFiles(bicepDir);

  test("main.bicep and its modules exist", () => {
    const names = files.map((f) => relative(bicepDir, f)).sort();
    assert.ok(names.includes("main.bicep"));
    assert.ok(names.length >= 8, `expected main.bicep and its modules, found ${names.join(", ")}`);
  });

  for (const file of files) {
    test(`${relative(root, file)} parses without syntax errors`, () => {
      const tree = parse(readFileSync(file, "utf8"));
      const error = firstError(tree.rootNode);
      assert.equal(
        error,
        undefined,
        error &&
          `syntax error at line ${error.startPosition.row + 1}, column ${error.startPosition.column + 1}: ${error.text.slice(0, 80)}`,
      );
    });
  }

  test("every module main.bicep references exists", () => {
    const main = readFileSync(join(bicepDir, "main.bicep"), "utf8");
    const paths = [...main.matchAll(/^module \w+ '([^']+)'/gm)].map((m) => m[1]);
    assert.ok(paths.length >= 7);
    for (const path of paths) assert.ok(existsSync(join(bicepDir, path)), `module ${path} is missing`);
  });

  test("main.bicepparam sets only parameters main.bicep declares, and every required one", () => {
    const main = readFileSync(join(bicepDir, "main.bicep"), "utf8");
    const declared = new Map(
      [...main.matchAll(/^param (\w+) \w+( =)?/gm)].map((m) => [m[1], m[2] !== undefined] as const),
    );
    const params = readFileSync(join(bicepDir, "main.bicepparam"), "utf8");
    const set = [...params.matchAll(/^param (\w+) =/gm)].map((m) => m[1]);
    for (const name of set) assert.ok(declared.has(name), `main.bicepparam sets unknown parameter ${name}`);
    for (const [name, hasDefault] of declared) {
      if (!hasDefault)
        assert.ok(set.includes(name), `main.bicepparam does not set required parameter ${name}`);
    }
  });

  test("the Function App sets every app setting the code reads", () => {
    const text = readFileSync(join(bicepDir, "modules/functionapp.bicep"), "utf8");
    const set = new Set([...text.matchAll(/\{\s*name: '([A-Za-z0-9_]+)'/g)].map((m) => m[1]));
    const missing: string[] = [];
    for (const spec of Object.values(APP_SETTINGS)) {
      // A trigger the host reads may use an identity-based connection: NAME__fullyQualifiedNamespace.
      const identityForm = [...set].some((name) => name.startsWith(`${spec.name}__`));
      if (!set.has(spec.name) && !(spec.readByHost && identityForm)) missing.push(spec.name);
    }
    assert.deepEqual(missing, [], `functionapp.bicep does not set: ${missing.join(", ")}`);
  });
});
