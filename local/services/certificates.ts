/**
 * A throwaway CA and a server certificate for 127.0.0.1 and localhost, made with the openssl
 * binary: what the local stand-ins for Azure endpoints (the MQTT broker, the HTTPS stand-ins of
 * the tests) serve, and what their clients are told to trust.
 */
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

export interface ServerCertificateFiles {
  /** The CA's certificate (PEM): give it to clients. */
  readonly caPath: string;
  /** The server's private key and certificate (PEM). */
  readonly keyPath: string;
  readonly certPath: string;
}

/** Certificates are valid this many days: long enough for any run, short if one leaks. */
const VALID_DAYS = "2";

/** Writes the CA and the server certificate into `dir` (ca.pem, server.key, server.pem and their work files). */
export function makeServerCertificates(dir: string): ServerCertificateFiles {
  const file = (name: string) => join(dir, name);
  const openssl = (...args: string[]) => execFileSync("openssl", args, { stdio: ["ignore", "pipe", "pipe"] });
  openssl(
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-days",
    VALID_DAYS,
    "-subj",
    "/CN=Deltaship test CA",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
    "-keyout",
    file("ca.key"),
    "-out",
    file("ca.pem"),
  );
  openssl(
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-subj",
    "/CN=127.0.0.1",
    "-keyout",
    file("server.key"),
    "-out",
    file("server.csr"),
  );
  writeFileSync(
    file("server.ext"),
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
  );
  openssl(
    "x509",
    "-req",
    "-in",
    file("server.csr"),
    "-CA",
    file("ca.pem"),
    "-CAkey",
    file("ca.key"),
    "-CAcreateserial",
    "-days",
    VALID_DAYS,
    "-extfile",
    file("server.ext"),
    "-out",
    file("server.pem"),
  );
  return { caPath: file("ca.pem"), keyPath: file("server.key"), certPath: file("server.pem") };
}
