import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { describe, it } from "node:test";
import { parseIsoDuration } from "../../config/duration.js";
import { APP_SETTINGS, loadSettings, SettingsError } from "../../config/settings.js";

const ed25519Pem = generateKeyPairSync("ed25519")
  .privateKey.export({ type: "pkcs8", format: "pem" })
  .toString();

const validEnv = {
  AzureWebJobsStorage: "UseDevelopmentStorage=true",
  IOTHUB_CONNECTION_STRING:
    "HostName=hub.azure-devices.net;SharedAccessKeyName=registryReadWrite;SharedAccessKey=a2V5",
  COMMUNICATION_SERVICES_ENDPOINT: "https://mail.communication.azure.com/",
  COMMUNICATION_SERVICES_ACCESS_KEY: "a2V5a2V5",
  EMAIL_SENDER_ADDRESS: "DoNotReply@example.com",
  ACR_URL: "https://fleet.azurecr.io",
  BUNDLE_SIGNING_KEY: ed25519Pem,
  BUNDLE_SIGNING_KEY_ID: "fleet-2026",
};

describe("loadSettings", () => {
  it("reads the required settings and fills every default", () => {
    const settings = loadSettings(validEnv);
    assert.equal(settings.iotHubHostName, "hub.azure-devices.net");
    assert.equal(settings.communicationEndpoint, "https://mail.communication.azure.com");
    assert.equal(settings.localRegistryAddress, "localhost:5000");
    assert.deepEqual(settings.defaultDeadline, { iso: "P14D", ms: 14 * 24 * 3600 * 1000 });
    assert.deepEqual(settings.signingKey, { id: "fleet-2026", pem: ed25519Pem });
    assert.equal(settings.manifestsContainer, "manifests");
    assert.equal(settings.outboxContainer, "outbox");
    assert.equal(settings.deviceBatchSize, 100);
    assert.equal(settings.queryPageSize, 100);
    assert.equal(settings.acrUsername, "");
  });

  it("names every missing required setting in one error", () => {
    const error = captureError(() => loadSettings({}));
    const required = Object.values(APP_SETTINGS)
      .filter((s) => s.default === undefined && !("readByHost" in s && s.readByHost))
      .map((s) => s.name);
    assert.deepEqual(
      error.problems.map((p) => p.split(" ")[0]),
      required,
    );
    assert.match(
      error.message,
      /^8 app setting\(s\) missing or malformed:\n- AzureWebJobsStorage is not set/,
    );
  });

  it("rejects malformed values with what was expected and found, without leaking secrets", () => {
    const rsaPem = generateKeyPairSync("rsa", { modulusLength: 1024 })
      .privateKey.export({ type: "pkcs8", format: "pem" })
      .toString();
    const error = captureError(() =>
      loadSettings({
        ...validEnv,
        IOTHUB_CONNECTION_STRING: "HostName=hub.azure-devices.net;SharedAccessKey=c2VjcmV0",
        COMMUNICATION_SERVICES_ENDPOINT: "http://mail.example",
        DEFAULT_DEADLINE: "P1M",
        BUNDLE_SIGNING_KEY: rsaPem,
        DEVICE_BATCH_SIZE: "0",
        ACR_USERNAME: "puller",
        OUTBOX_CONTAINER: "Out_Box",
        LOCAL_REGISTRY_ADDRESS: "http://localhost:5000",
      }),
    );
    assert.deepEqual(error.problems, [
      'IOTHUB_CONNECTION_STRING should be an IoT Hub service connection string HostName=…;SharedAccessKeyName=…;SharedAccessKey=…, found "hostname=…;sharedaccesskey=…"',
      'COMMUNICATION_SERVICES_ENDPOINT should be an https:// URL, found "http://mail.example"',
      "ACR_USERNAME and ACR_PASSWORD must be set together (or both left empty for anonymous pull)",
      'LOCAL_REGISTRY_ADDRESS should be host or host:port, such as localhost:5000, found "http://localhost:5000"',
      'DEFAULT_DEADLINE should be a positive ISO 8601 duration such as P14D or PT36H, found "P1M"',
      'BUNDLE_SIGNING_KEY should be an Ed25519 private key in PKCS#8 PEM (openssl genpkey -algorithm ed25519), found "<rsa key>"',
      'OUTBOX_CONTAINER should be a blob container name (3-63 of a-z, 0-9, single hyphens), found "Out_Box"',
      'DEVICE_BATCH_SIZE should be a whole number from 1 to 1000, found "0"',
    ]);
    assert.doesNotMatch(error.message, /c2VjcmV0/);
  });

  it("accepts a PEM with escaped newlines, as app settings often hold it", () => {
    const settings = loadSettings({ ...validEnv, BUNDLE_SIGNING_KEY: ed25519Pem.replace(/\n/g, "\\n") });
    assert.equal(settings.signingKey.pem, ed25519Pem);
  });
});

describe("parseIsoDuration", () => {
  const cases: [string, number | undefined][] = [
    ["P14D", 14 * 86_400_000],
    ["PT36H", 36 * 3_600_000],
    ["P1W", 7 * 86_400_000],
    ["P1DT12H30M", 86_400_000 + 12 * 3_600_000 + 30 * 60_000],
    ["PT1.5S", 1500],
    ["P", undefined],
    ["PT", undefined],
    ["P1M", undefined],
    ["14 days", undefined],
  ];
  for (const [text, ms] of cases) {
    it(`${text} → ${ms}`, () => assert.equal(parseIsoDuration(text), ms));
  }
});

function captureError(fn: () => unknown): SettingsError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof SettingsError, `expected a SettingsError, got ${String(error)}`);
    return error;
  }
  assert.fail("expected loadSettings to throw");
}
