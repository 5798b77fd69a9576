// The real @azure/communication-email client against a local HTTPS stand-in for Communication
// Services: no Azure account is reachable from test machines. The stand-in checks the SDK's
// HMAC-SHA256 request signature with the configured access key and answers the send operation
// like the service: 202 with an operation-location, then Running, then the final status.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { createEmailSender, type EmailSender } from "../../adapters/email.js";
import {
  emailResponder,
  type HttpsStandin,
  makeTestCertificates,
  startHttpsStandin,
  type TestCertificates,
} from "../support/https-standin.js";

const ACCESS_KEY = Buffer.from("deltaship-test-access-key").toString("base64");
const SENDER = "DoNotReply@deltaship.example";

let tls: TestCertificates;
let service: HttpsStandin;
let failing: HttpsStandin;

before(async () => {
  tls = makeTestCertificates();
  service = await startHttpsStandin(tls, emailResponder({ accessKey: ACCESS_KEY, runningPolls: 2 }));
  failing = await startHttpsStandin(tls, emailResponder({ accessKey: ACCESS_KEY, finalStatus: "Failed" }));
});
after(async () => {
  await service?.close();
  await failing?.close();
  tls?.dispose();
});

function senderFor(standin: HttpsStandin, accessKey = ACCESS_KEY): EmailSender {
  return createEmailSender(
    { communicationEndpoint: standin.origin, communicationAccessKey: accessKey, emailSenderAddress: SENDER },
    // The stand-in's CA is passed the way the SDK's pipeline honours it; production uses the system store.
    { clientOptions: { tlsOptions: { ca: tls.caPem }, retryOptions: { maxRetries: 0 } }, pollIntervalMs: 10 },
  );
}

describe("email adapter (real @azure/communication-email, local stand-in)", () => {
  it("sends the message and polls the operation until it succeeds", async () => {
    service.requests.length = 0;
    const id = await senderFor(service).sendEmail({
      to: { address: "ana@fleet.example", displayName: "Ana Lima" },
      subject: "Deployment set 42 succeeded",
      text: "All 3 images arrived on 2 devices.",
      html: "<p>All 3 images arrived on 2 devices.</p>",
    });
    assert.deepEqual(
      service.requests.map((r) => `${r.method} ${r.path}`),
      // Two polls answer Running, the third Succeeded.
      ["POST /emails:send", ...Array(3).fill(`GET /emails/operations/${id}`)],
    );
    const [send] = service.requests;
    assert.equal(send.query["api-version"], "2025-09-01");
    assert.match(
      send.headers.authorization,
      /^HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=/,
    );
    assert.deepEqual(send.json, {
      senderAddress: SENDER,
      content: {
        subject: "Deployment set 42 succeeded",
        plainText: "All 3 images arrived on 2 devices.",
        html: "<p>All 3 images arrived on 2 devices.</p>",
      },
      recipients: { to: [{ address: "ana@fleet.example", displayName: "Ana Lima" }] },
    });
  });

  it("leaves html out when the message has none", async () => {
    service.requests.length = 0;
    await senderFor(service).sendEmail({ to: { address: "ana@fleet.example" }, subject: "s", text: "t" });
    assert.deepEqual(service.requests[0].json, {
      senderAddress: SENDER,
      content: { subject: "s", plainText: "t" },
      recipients: { to: [{ address: "ana@fleet.example" }] },
    });
  });

  it("fails with the service's reason when the send operation fails", async () => {
    await assert.rejects(
      senderFor(failing).sendEmail({ to: { address: "nobody@fleet.example" }, subject: "s", text: "t" }),
      (error: Error) => {
        assert.equal(error.name, "EmailError");
        assert.match(error.message, /^email to nobody@fleet\.example was not sent: .*recipient rejected/);
        return true;
      },
    );
  });

  it("names the settings to check when the access key is wrong", async () => {
    const wrongKey = Buffer.from("wrong").toString("base64");
    await assert.rejects(
      senderFor(service, wrongKey).sendEmail({
        to: { address: "ana@fleet.example" },
        subject: "s",
        text: "t",
      }),
      (error: Error) => {
        assert.equal(error.name, "EmailError");
        assert.match(error.message, /^Communication Services refused the email to ana@fleet\.example: /);
        assert.match(error.message, /HMAC signature does not verify/);
        assert.match(
          error.message,
          /check COMMUNICATION_SERVICES_ENDPOINT, COMMUNICATION_SERVICES_ACCESS_KEY/,
        );
        return true;
      },
    );
  });
});
