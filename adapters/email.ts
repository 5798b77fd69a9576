// Email to requesters through Azure Communication Services (@azure/communication-email).

import { EmailClient, type EmailClientOptions } from "@azure/communication-email";

/** Poll interval while Communication Services sends; it usually finishes within seconds. */
const DEFAULT_POLL_INTERVAL_MS = 2000;

export interface EmailMessage {
  to: { address: string; displayName?: string };
  subject: string;
  text: string;
  html?: string;
}

export interface EmailSender {
  /** Sends and waits until Communication Services reports the email sent; returns the operation id. */
  sendEmail(message: EmailMessage): Promise<string>;
}

export interface EmailSettings {
  communicationEndpoint: string;
  communicationAccessKey: string;
  emailSenderAddress: string;
}

export class EmailError extends Error {
  override name = "EmailError";
}

export function createEmailSender(
  settings: EmailSettings,
  options: { clientOptions?: EmailClientOptions; pollIntervalMs?: number } = {},
): EmailSender {
  const client = new EmailClient(
    `endpoint=${settings.communicationEndpoint};accesskey=${settings.communicationAccessKey}`,
    options.clientOptions ?? {},
  );
  return {
    async sendEmail(message) {
      let poller: Awaited<ReturnType<EmailClient["beginSend"]>>;
      try {
        poller = await client.beginSend(
          {
            senderAddress: settings.emailSenderAddress,
            content: {
              subject: message.subject,
              plainText: message.text,
              ...(message.html === undefined ? {} : { html: message.html }),
            },
            recipients: { to: [message.to] },
          },
          { updateIntervalInMs: options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS },
        );
      } catch (error) {
        throw new EmailError(
          `Communication Services refused the email to ${message.to.address}: ${(error as Error).message}; ` +
            "check COMMUNICATION_SERVICES_ENDPOINT, COMMUNICATION_SERVICES_ACCESS_KEY and EMAIL_SENDER_ADDRESS",
        );
      }
      let result: Awaited<ReturnType<typeof poller.pollUntilDone>>;
      try {
        result = await poller.pollUntilDone();
      } catch (error) {
        throw new EmailError(`email to ${message.to.address} was not sent: ${(error as Error).message}`);
      }
      if (result.status !== "Succeeded") {
        throw new EmailError(
          `email to ${message.to.address} ended ${result.status}: ${result.error?.message ?? "no reason given"}`,
        );
      }
      return result.id;
    },
  };
}
