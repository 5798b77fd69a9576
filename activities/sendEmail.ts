/** sendEmail: tells the requester how the set ended; on failure, which image failed on which device and why. */
import type { EmailMessage } from "../adapters/email.js";
import type { ActivityDeps } from "./deps.js";
import type { SendEmailInput, SendEmailOutput } from "./names.js";

/** Failures listed in one email; the rest are counted and the query API has them all. */
export const MAX_EMAIL_FAILURES = 200;

function megabytes(bytes: number): string {
  return `${(bytes / 1_000_000).toFixed(1)} MB`;
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Subject and bodies of the email for a finished set. Pure. */
export function composeEmail(input: SendEmailInput): EmailMessage {
  const imageName = new Map(input.images.map((image) => [image.digest, `${image.module} (${image.ref})`]));
  const saved =
    input.fullBytes > 0
      ? `${megabytes(input.bytesPlanned)} planned instead of ${megabytes(input.fullBytes)} for full pulls`
      : "nothing to transfer: every image was already on every device";
  const images = input.images.map((image) => `- ${image.module}: ${image.ref} (${image.digest})`);
  const lines: string[] = [];
  let subject: string;
  if (input.outcome === "succeeded") {
    subject = `Deployment set ${input.setId} succeeded on ${input.deviceCount} devices`;
    lines.push(
      `Hello ${input.requestedBy.name},`,
      "",
      `Every image of deployment set ${input.setId} arrived on all ${input.deviceCount} devices, ` +
        "and the deployment manifest was pushed to each of them.",
      "",
      "Images:",
      ...images,
      "",
      `Transfer: ${saved}.`,
    );
  } else {
    const devices = new Set(input.failures.map((f) => f.device)).size;
    const count = Math.max(input.failureCount, input.failures.length);
    subject =
      count === 0
        ? `Deployment set ${input.setId} failed`
        : count > input.failures.length
          ? `Deployment set ${input.setId} failed: ${count} image(s) on ${devices} or more device(s)`
          : `Deployment set ${input.setId} failed: ${count} image(s) on ${devices} device(s)`;
    lines.push(
      `Hello ${input.requestedBy.name},`,
      "",
      `Deployment set ${input.setId} failed. No deployment manifest was pushed to any device.`,
    );
    if (input.reason) lines.push("", `Reason: ${input.reason}`);
    if (input.failures.length > 0) {
      lines.push("", "Failed (device: image: reason):");
      const listed = input.failures.slice(0, MAX_EMAIL_FAILURES);
      for (const failure of listed) {
        lines.push(
          `- ${failure.device}: ${imageName.get(failure.digest) ?? failure.digest}: ${failure.reason}`,
        );
      }
      if (count > listed.length) {
        lines.push(`- … and ${count - listed.length} more; GET /api/deployments/${input.setId} lists all`);
      }
    }
    lines.push("", "Images:", ...images);
  }
  const text = `${lines.join("\n")}\n`;
  const html = `<pre style="font-family: monospace">${escapeHtml(text)}</pre>`;
  return {
    to: { address: input.requestedBy.email, displayName: input.requestedBy.name },
    subject,
    text,
    html,
  };
}

export async function sendEmail(
  input: SendEmailInput,
  deps: Pick<ActivityDeps, "email">,
): Promise<SendEmailOutput> {
  await deps.email.sendEmail(composeEmail(input));
  return { sent: true };
}
