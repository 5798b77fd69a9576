/**
 * Local mode's stand-ins for the two Azure services the activities call and that cannot run on
 * this machine: IoT Hub's configuration push and Communication Services email. Each call is
 * written as a JSON file to a folder, so a person can read what would have been sent and when.
 * (The real SDKs are tested against local HTTPS servers in tests/adapters/.)
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { EmailMessage, EmailSender } from "../adapters/email.js";
import type { IotHubAdapter } from "../adapters/iothub.js";

export interface ManifestPush {
  device: string;
  at: string;
  file: string;
  modulesContent: Record<string, unknown>;
}

export interface SentEmail {
  to: string;
  subject: string;
  at: string;
  file: string;
  text: string;
}

export class ManifestRecorder implements Pick<IotHubAdapter, "pushManifest"> {
  readonly pushes: ManifestPush[] = [];
  constructor(private readonly dir: string) {}

  async pushManifest(deviceId: string, modulesContent: Record<string, unknown>): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const at = new Date().toISOString();
    const file = join(this.dir, `${String(this.pushes.length + 1).padStart(3, "0")}-${safe(deviceId)}.json`);
    await writeFile(file, `${JSON.stringify({ device: deviceId, at, modulesContent }, null, 2)}\n`);
    this.pushes.push({ device: deviceId, at, file, modulesContent });
  }
}

export class EmailRecorder implements EmailSender {
  readonly sent: SentEmail[] = [];
  constructor(private readonly dir: string) {}

  async sendEmail(message: EmailMessage): Promise<string> {
    await mkdir(this.dir, { recursive: true });
    const at = new Date().toISOString();
    const to = message.to.address;
    const file = join(this.dir, `${String(this.sent.length + 1).padStart(3, "0")}-${safe(to)}.json`);
    await writeFile(file, `${JSON.stringify({ at, ...message }, null, 2)}\n`);
    this.sent.push({ to, subject: message.subject, at, file, text: message.text });
    return `local-${this.sent.length}`;
  }
}

function safe(name: string): string {
  return name.replace(/[^A-Za-z0-9._@-]/g, "_");
}
