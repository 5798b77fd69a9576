import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  compactTime,
  decidePriority,
  globMatch,
  imageLabels,
  loadPriorityRules,
  MAX_IMAGE_LABELS,
  MAX_RULES_FILE_BYTES,
  outboxNamePrefix,
  outboxOrder,
  PRIORITY_CLASSES,
  type PriorityAttributes,
  type PriorityDecision,
  PriorityRulesError,
  parsePriorityRules,
  requesterGroups,
} from "../../config/priorities.js";
import { PRIORITY_CLASSES as REQUEST_CLASSES } from "../../functions/deployments/request.js";
import { PRIORITY_ORDER } from "../../local/link.js";

const AT = "2026-11-28T09:00:00.000Z";
const rules = loadPriorityRules();

function set(
  modules: PriorityAttributes["modules"],
  extra: Partial<PriorityAttributes> = {},
): PriorityAttributes {
  return { modules, requestedAt: AT, ...extra };
}
const temp = (labels: Record<string, string> = {}) => ({ module: "tempmonitor", labels });
const dash = (labels: Record<string, string> = {}) => ({ module: "dashboard", labels });

describe("the shipped rules (rules/priorities.json)", () => {
  const table: [string, PriorityAttributes, Omit<PriorityDecision, "rulesVersion">][] = [
    [
      "a tempmonitor security fix is critical within 6 hours, whatever was asked",
      set([dash(), temp({ "deltaship.priority": "security" })], { requested: "bulk" }),
      { class: "critical", rule: "cold-chain-security-fix", deadline: "2026-11-28T15:00:00.000Z" },
    ],
    [
      "module and label must hold for the same module",
      set([temp(), dash({ "deltaship.priority": "security" })]),
      { class: "high", rule: "security-fix", deadline: "2026-11-29T09:00:00.000Z" },
    ],
    [
      "an image labelled critical is critical for anyone",
      set([dash({ "deltaship.priority": "critical" })], { requesterEmail: "intern@example.com" }),
      { class: "critical", rule: "image-says-critical", deadline: "2026-11-28T21:00:00.000Z" },
    ],
    [
      "fleet ops may ask for critical",
      set([dash()], { requesterEmail: "Fleet-Ops@Deltaship.example", requested: "critical" }),
      { class: "critical", rule: "trusted-requesters" },
    ],
    [
      "a whole domain can be a group",
      set([dash()], { requesterEmail: "ana@ops.deltaship.example", requested: "bulk" }),
      { class: "bulk", rule: "trusted-requesters" },
    ],
    [
      "trusted requesters asking nothing get normal",
      set([dash()], { requesterEmail: "security@deltaship.example" }),
      { class: "normal", rule: "trusted-requesters" },
    ],
    [
      "a dashboard workstream is bulk even when asked for high",
      set([dash({ "deltaship.workstream": "dashboards" })], {
        requested: "high",
        requesterEmail: "a@b.example",
      }),
      { class: "bulk", rule: "cosmetic-bulk", cappedFrom: "high" },
    ],
    [
      "anyone else asking critical is capped to high",
      set([temp()], { requested: "critical", requesterEmail: "someone@example.com" }),
      { class: "high", rule: "requested-up-to-high", cappedFrom: "critical" },
    ],
    [
      "anyone else asking bulk gets bulk",
      set([temp()], { requested: "bulk", requesterEmail: "someone@example.com" }),
      { class: "bulk", rule: "requested-up-to-high" },
    ],
    [
      "a request with no class and no matching label is normal",
      set([temp({ "deltaship.priority": "low" })]),
      { class: "normal", rule: "requested-up-to-high" },
    ],
  ];
  for (const [name, attributes, expected] of table) {
    it(name, () => {
      assert.deepEqual(decidePriority(rules, attributes), { ...expected, rulesVersion: "2026-11-28.1" });
    });
  }

  it("names the same classes, in the same order, as requests and the local link", () => {
    assert.deepEqual([...PRIORITY_CLASSES], [...REQUEST_CLASSES]);
    assert.deepEqual([...PRIORITY_CLASSES], [...PRIORITY_ORDER]);
  });
});

describe("decidePriority on small rule sets", () => {
  const base = {
    version: "t1",
    groups: { ops: ["ops@example.com"] },
    default: { class: "bulk" as const, deadline: "P2D" },
  };

  it("uses the first matching rule, not the most urgent one", () => {
    const r = parsePriorityRules({
      ...base,
      rules: [
        { id: "first", when: { module: ["a*"] }, class: "normal" },
        { id: "second", when: { module: ["ab"] }, class: "critical" },
      ],
    });
    assert.deepEqual(decidePriority(r, set([{ module: "ab" }])), {
      class: "normal",
      rule: "first",
      rulesVersion: "t1",
    });
  });

  it("falls back to the default with its deadline when no rule matches", () => {
    const r = parsePriorityRules({ ...base, rules: [{ id: "x", when: { module: ["x"] }, class: "high" }] });
    assert.deepEqual(decidePriority(r, set([{ module: "y" }], { requested: "critical" })), {
      class: "bulk",
      rule: "default",
      rulesVersion: "t1",
      deadline: "2026-11-30T09:00:00.000Z",
      cappedFrom: "critical",
    });
  });

  it("matches on the requested class and the requester group together", () => {
    const r = parsePriorityRules({
      ...base,
      rules: [
        { id: "ops-critical", when: { requested: ["critical"], requesterGroup: ["ops"] }, class: "critical" },
        { id: "others-critical", when: { requested: ["critical"] }, class: "high" },
      ],
    });
    const ask = (email: string) =>
      decidePriority(r, set([{ module: "m" }], { requested: "critical", requesterEmail: email })).rule;
    assert.equal(ask("ops@example.com"), "ops-critical");
    assert.equal(ask("dev@example.com"), "others-critical");
    assert.equal(decidePriority(r, set([{ module: "m" }])).rule, "default");
  });

  it("needs every label of a rule on one module", () => {
    const r = parsePriorityRules({
      ...base,
      rules: [{ id: "both", when: { labels: { a: ["1"], b: ["2*"] } }, class: "high" }],
    });
    assert.equal(
      decidePriority(
        r,
        set([
          { module: "m", labels: { a: "1" } },
          { module: "n", labels: { b: "2" } },
        ]),
      ).rule,
      "default",
    );
    assert.equal(decidePriority(r, set([{ module: "m", labels: { a: "1", b: "2x" } }])).rule, "both");
  });
});

describe("helpers", () => {
  it("globMatch treats * as any run and everything else literally", () => {
    const cases: [string, string, boolean][] = [
      ["temp*", "tempmonitor", true],
      ["temp*", "atemp", false],
      ["*", "", true],
      ["a*b*c", "abc", true],
      ["a*b*c", "acb", false],
      ["a*a", "a", false],
      ["a.b", "axb", false],
      ["exact", "exact", true],
    ];
    for (const [pattern, value, expected] of cases)
      assert.equal(globMatch(pattern, value), expected, `${pattern} ~ ${value}`);
  });

  it("requesterGroups compares emails case-insensitively and never matches a lookalike domain", () => {
    assert.deepEqual([...requesterGroups(rules, "X@OPS.deltaship.example")], ["fleet-ops"]);
    assert.deepEqual([...requesterGroups(rules, "x@evilops.deltaship.example")], []);
    assert.deepEqual([...requesterGroups(rules, undefined)], []);
  });

  it("imageLabels keeps string labels within the limits", () => {
    const labels: Record<string, unknown> = { "deltaship.priority": "security", n: 3, long: "v".repeat(257) };
    assert.deepEqual(imageLabels(JSON.stringify({ config: { Labels: labels } })), {
      "deltaship.priority": "security",
    });
    assert.deepEqual(imageLabels("not json"), {});
    assert.deepEqual(imageLabels(JSON.stringify({ config: { Labels: null } })), {});
    const many = Object.fromEntries(
      Array.from({ length: 40 }, (_, i) => [`k${String(i).padStart(2, "0")}`, "v"]),
    );
    const kept = imageLabels(new TextEncoder().encode(JSON.stringify({ config: { Labels: many } })));
    assert.equal(Object.keys(kept).length, MAX_IMAGE_LABELS);
    assert.equal(Object.keys(kept).at(-1), "k31");
  });

  it("outboxOrder takes the earlier of the rule's and the set's deadline", () => {
    const decision: PriorityDecision = {
      class: "critical",
      rule: "r",
      rulesVersion: "1",
      deadline: "2026-11-28T15:00:00.000Z",
    };
    assert.deepEqual(outboxOrder(decision, "2026-12-12T09:00:00.000Z", AT), {
      priority: "critical",
      sortKey: "20261128T150000Z-20261128T090000Z",
    });
    assert.deepEqual(
      outboxOrder(decision, "2026-11-28T10:00:00Z", AT).sortKey,
      "20261128T100000Z-20261128T090000Z",
    );
    assert.equal(
      outboxNamePrefix({ priority: "bulk", sortKey: "20261128T100000Z-20261128T090000Z" }),
      "p3-bulk-20261128T100000Z-20261128T090000Z-",
    );
    assert.equal(compactTime("2026-11-28T09:00:01.500Z"), "20261128T090001Z");
  });

  it("name prefixes sort in serving order", () => {
    const names = ["bulk", "normal", "critical", "high"].map((c) =>
      outboxNamePrefix({ priority: c as never, sortKey: "20261128T100000Z-20261128T090000Z" }),
    );
    assert.deepEqual(
      names.sort().map((n) => n.split("-")[1]),
      ["critical", "high", "normal", "bulk"],
    );
  });
});

describe("refusing rules files", () => {
  const valid = { version: "v1", rules: [], default: { class: "normal" } };
  const refusals: [string, unknown, string[]][] = [
    [
      "no version",
      { rules: [], default: { class: "normal" } },
      ["the file must have required property 'version'"],
    ],
    [
      "an unknown class",
      { ...valid, default: { class: "urgent" } },
      ["/default/class must be one of critical, high, normal, bulk, requested"],
    ],
    [
      "an unknown field in a condition",
      { ...valid, rules: [{ id: "a", when: { modul: ["x"] }, class: "high" }] },
      ['/rules/0/when: unknown field "modul"'],
    ],
    [
      "a malformed deadline",
      { ...valid, rules: [{ id: "a", when: {}, class: "high", deadline: "6 hours" }] },
      [
        '/rules/0/deadline must match pattern "^P(?:\\d+W)?(?:\\d+D)?(?:T(?:\\d+H)?(?:\\d+M)?(?:\\d+(?:\\.\\d+)?S)?)?$"',
      ],
    ],
    [
      "a repeated id, an undefined group, a zero deadline, a class above its own max",
      {
        ...valid,
        rules: [
          { id: "a", when: { requesterGroup: ["nobody"] }, class: "high" },
          { id: "a", when: {}, class: "critical", max: "normal", deadline: "PT0S" },
        ],
      },
      [
        'rules[0] (a): requesterGroup "nobody" is not defined under groups; add it or fix the name',
        "rules[1] (a): id repeats an earlier rule; give every rule its own id",
        "rules[1] (a): deadline PT0S must be a positive duration such as PT6H",
        "rules[1] (a): class critical is more urgent than its own max normal; lower the class",
      ],
    ],
    [
      "the reserved id",
      { ...valid, rules: [{ id: "default", when: {}, class: "high" }] },
      ['rules[0] (default): the id "default" is reserved for the default decision'],
    ],
  ];
  for (const [name, json, problems] of refusals) {
    it(`refuses ${name}`, () => {
      assert.throws(
        () => parsePriorityRules(json, "t.json"),
        (error: unknown) => {
          assert.ok(error instanceof PriorityRulesError);
          assert.deepEqual(error.problems, problems);
          assert.match(
            error.message,
            /^priority rules t\.json are not valid: .*; fix the file \(schema: rules\/schema\.json\) and restart$/,
          );
          return true;
        },
      );
    });
  }

  it("refuses a file that is not JSON, is missing, or is too large", () => {
    const dir = mkdtempSync(join(tmpdir(), "rules-"));
    writeFileSync(join(dir, "bad.json"), "{ version: 1 }");
    assert.throws(() => loadPriorityRules(join(dir, "bad.json")), /expected JSON, found a parse error/);
    assert.throws(() => loadPriorityRules(join(dir, "none.json")), /the file cannot be read: ENOENT/);
    writeFileSync(join(dir, "big.json"), " ".repeat(MAX_RULES_FILE_BYTES + 1));
    assert.throws(
      () => loadPriorityRules(join(dir, "big.json")),
      new RegExp(`expected at most ${MAX_RULES_FILE_BYTES} bytes`),
    );
  });
});
