/**
 * The development certificate authority: a local CA and a server certificate it signs, kept in
 * `<dataDir>/tls/`, so that a fresh install serves HTTPS from the first start.
 *
 * Files (private keys are PKCS#8 PEM, mode 0600; directories mode 0700; every file is written
 * to a temporary file and renamed into place, so a reader never sees a half-written file):
 *
 * - `ca.crt`, `ca.key`: "Portcullis Development CA", ECDSA P-256 / SHA-256, 10 years,
 *   basicConstraints CA with pathLen 0, keyUsage keyCertSign + cRLSign.
 * - `server.crt`, `server.key`: ECDSA P-256 / SHA-256, 397 days, SAN DNS:localhost,
 *   IP:127.0.0.1, IP:::1 plus any requested hostnames, EKU serverAuth, keyUsage digitalSignature.
 *
 * Later calls reuse the files. The server certificate is re-issued from the same CA when it
 * expires within 30 days, is not yet valid, lacks a requested hostname, no longer matches its
 * key or was not issued by the current CA.
 */
import {
  X509Certificate as NodeX509Certificate,
  createPrivateKey,
  randomBytes,
  webcrypto,
} from 'node:crypto';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
// @peculiar/x509 resolves its internals through tsyringe, which needs the Reflect metadata API
// at load time; this import must stay before the x509 import.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

x509.cryptoProvider.set(webcrypto as ReturnType<x509.CryptoProvider['get']>);

/** The CA's subject and issuer name. */
export const DEV_CA_NAME = 'CN=Portcullis Development CA, O=Portcullis';
/** Names every development server certificate carries. */
export const DEFAULT_DEV_HOSTNAMES: readonly string[] = ['localhost', '127.0.0.1', '::1'];
/** Validity of a development server certificate (the CA/Browser Forum maximum is 398 days). */
export const DEV_SERVER_CERT_DAYS = 397;
/** A server certificate that expires within this many days is re-issued. */
export const DEV_RENEW_BEFORE_DAYS = 30;
/** Validity of the development CA. */
export const DEV_CA_YEARS = 10;

const DAY_MS = 24 * 60 * 60 * 1000;
/** notBefore is set this far in the past to tolerate small clock differences between peers. */
const BACKDATE_MS = 5 * 60 * 1000;
const EC_ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING_ALGORITHM = { name: 'ECDSA', hash: 'SHA-256' } as const;

export interface DevCertificateOptions {
  /**
   * Extra DNS names or IP addresses for the server certificate, beside `localhost`,
   * `127.0.0.1` and `::1`.
   */
  hostnames?: string[];
  /** The current time (tests); defaults to the clock. */
  now?: Date;
}

export interface DevCertificates {
  /** The development CA certificate (PEM): what clients must trust. */
  caCertPem: string;
  /** The server certificate (PEM). */
  certPem: string;
  /** The server private key (PKCS#8 PEM). */
  keyPem: string;
  caCertFile: string;
  certFile: string;
  keyFile: string;
  /** True when this call wrote a new server certificate (first run or re-issue). */
  created: boolean;
}

/** Calls in flight per data directory: two listeners starting together must not race. */
const inFlight = new Map<string, Promise<unknown>>();

/**
 * Returns the development CA and server certificate under `<dataDir>/tls/`, creating or
 * re-issuing them when needed.
 *
 * @example
 * ```ts
 * const dev = await ensureDevCertificates('.portcullis', { hostnames: ['gateway.test'] });
 * https.createServer({ cert: dev.certPem, key: dev.keyPem });
 * ```
 * @throws TypeError for an invalid hostname or date; Error when the CA files exist but are
 *   unreadable or do not belong together (the message names the files, never key material).
 */
export async function ensureDevCertificates(
  dataDir: string,
  options: DevCertificateOptions = {},
): Promise<DevCertificates> {
  if (typeof dataDir !== 'string' || dataDir === '') {
    throw new TypeError('ensureDevCertificates: dataDir must be a non-empty string');
  }
  const now = options.now ?? new Date();
  if (!(now instanceof Date) || Number.isNaN(now.getTime())) {
    throw new TypeError('ensureDevCertificates: options.now must be a valid Date');
  }
  const hostnames = normaliseHostnames(options.hostnames ?? []);
  const root = resolve(dataDir);
  const previous = inFlight.get(root) ?? Promise.resolve();
  const run = previous.then(
    () => ensure(root, hostnames, now),
    () => ensure(root, hostnames, now),
  );
  inFlight.set(root, run);
  try {
    return await run;
  } finally {
    if (inFlight.get(root) === run) inFlight.delete(root);
  }
}

interface Ca {
  cert: x509.X509Certificate;
  pem: string;
  signingKey: CryptoKey;
}

async function ensure(root: string, hostnames: string[], now: Date): Promise<DevCertificates> {
  const dir = join(root, 'tls');
  await mkdir(root, { recursive: true, mode: 0o700 });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const caCertFile = join(dir, 'ca.crt');
  const caKeyFile = join(dir, 'ca.key');
  const certFile = join(dir, 'server.crt');
  const keyFile = join(dir, 'server.key');

  let ca = await loadCa(caCertFile, caKeyFile, now);
  let created = false;
  if (ca === undefined) {
    ca = await createCa(now);
    // Key first: a crash between the renames leaves no ca.crt, and the next call starts over.
    await writeFileAtomic(caKeyFile, await exportPkcs8Pem(ca.signingKey), 0o600);
    await writeFileAtomic(caCertFile, ca.pem, 0o644);
  }

  const existing = await loadServer(certFile, keyFile, ca);
  let certPem: string;
  let keyPem: string;
  if (existing !== undefined && serverCertIsUsable(existing, hostnames, now)) {
    certPem = existing.certPem;
    keyPem = existing.keyPem;
  } else {
    // Keep names a previous certificate from this CA carried, so that callers asking for
    // different extra names do not re-issue the certificate on every start.
    const kept = existing?.issuedByCa === true ? existing.names : [];
    const issued = await issueServerCert(ca, [...new Set([...kept, ...hostnames])], now);
    certPem = issued.certPem;
    keyPem = issued.keyPem;
    await writeFileAtomic(keyFile, keyPem, 0o600);
    await writeFileAtomic(certFile, certPem, 0o644);
    created = true;
  }
  return { caCertPem: ca.pem, certPem, keyPem, caCertFile, certFile, keyFile, created };
}

/** Default names first, then extra ones; IP addresses in canonical form; no duplicates. */
function normaliseHostnames(extra: unknown): string[] {
  if (!Array.isArray(extra)) {
    throw new TypeError('ensureDevCertificates: options.hostnames must be an array of strings');
  }
  const out = new Set<string>(DEFAULT_DEV_HOSTNAMES);
  for (const item of extra as unknown[]) {
    if (typeof item !== 'string') {
      throw new TypeError('ensureDevCertificates: options.hostnames must be an array of strings');
    }
    const name = canonicalName(item);
    if (name === undefined) {
      throw new TypeError(`ensureDevCertificates: ${JSON.stringify(item)} is not a DNS name or IP address`);
    }
    out.add(name);
  }
  return [...out];
}

const DNS_LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

function canonicalName(value: string): string | undefined {
  const bracketless = value.startsWith('[') && value.endsWith(']') ? value.slice(1, -1) : value;
  if (isIP(bracketless) === 4) return bracketless;
  if (isIP(bracketless) === 6) return new URL(`http://[${bracketless}]/`).hostname.slice(1, -1);
  const lower = value.toLowerCase().replace(/\.$/, '');
  if (lower.length === 0 || lower.length > 253) return undefined;
  const labels = lower.split('.');
  // A wildcard is allowed only as the whole left-most label.
  const checked = labels[0] === '*' && labels.length > 2 ? labels.slice(1) : labels;
  return checked.every((label) => DNS_LABEL.test(label)) ? lower : undefined;
}

async function readIfExists(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new Error(`development CA: cannot read ${file} (${errorCode(err)})`, { cause: err });
  }
}

function errorCode(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : 'unreadable';
}

async function loadCa(certFile: string, keyFile: string, now: Date): Promise<Ca | undefined> {
  const pem = await readIfExists(certFile);
  if (pem === undefined) return undefined;
  const keyPemText = await readIfExists(keyFile);
  if (keyPemText === undefined) {
    throw new Error(
      `development CA: ${certFile} exists but ${keyFile} is missing; delete the tls directory to create a new CA`,
    );
  }
  let nodeCert: NodeX509Certificate;
  let signingKey: CryptoKey;
  try {
    nodeCert = new NodeX509Certificate(pem);
  } catch {
    throw new Error(
      `development CA: ${certFile} is not a PEM certificate; delete the tls directory to create a new CA`,
    );
  }
  try {
    const keyObject = createPrivateKey(keyPemText);
    if (!nodeCert.checkPrivateKey(keyObject)) throw new Error('mismatch');
    signingKey = keyObject.toCryptoKey(EC_ALGORITHM, false, ['sign']);
  } catch {
    throw new Error(
      `development CA: the key in ${keyFile} is not a P-256 key matching ${certFile}; delete the tls directory to create a new CA`,
    );
  }
  // A CA close to the end of its life is replaced (with all it signed) rather than left to expire.
  if (Date.parse(nodeCert.validTo) - now.getTime() < DEV_RENEW_BEFORE_DAYS * DAY_MS) return undefined;
  return { cert: new x509.X509Certificate(pem), pem, signingKey };
}

interface LoadedServer {
  certPem: string;
  keyPem: string;
  /** The names in its subjectAltName, canonical. */
  names: string[];
  issuedByCa: boolean;
  keyMatches: boolean;
  notBefore: number;
  notAfter: number;
}

async function loadServer(certFile: string, keyFile: string, ca: Ca): Promise<LoadedServer | undefined> {
  const certPem = await readIfExists(certFile);
  const keyPem = await readIfExists(keyFile);
  if (certPem === undefined || keyPem === undefined) return undefined;
  let cert: NodeX509Certificate;
  let names: string[];
  try {
    cert = new NodeX509Certificate(certPem);
    names = sanNames(certPem);
  } catch {
    return undefined; // unparseable: re-issue
  }
  let keyMatches: boolean;
  try {
    keyMatches = cert.checkPrivateKey(createPrivateKey(keyPem));
  } catch {
    keyMatches = false;
  }
  const caCert = new NodeX509Certificate(ca.pem);
  return {
    certPem,
    keyPem,
    names,
    issuedByCa: cert.checkIssued(caCert) && cert.verify(caCert.publicKey),
    keyMatches,
    notBefore: Date.parse(cert.validFrom),
    notAfter: Date.parse(cert.validTo),
  };
}

/** DNS and IP names of a certificate's subjectAltName, in the canonical form used here. */
function sanNames(certPem: string): string[] {
  const san = new x509.X509Certificate(certPem).getExtension(x509.SubjectAlternativeNameExtension);
  if (san === null) return [];
  const names: string[] = [];
  for (const entry of san.names.toJSON()) {
    if (entry.type === 'dns' || entry.type === 'ip') {
      const name = canonicalName(entry.value);
      if (name !== undefined) names.push(name);
    }
  }
  return names;
}

function serverCertIsUsable(server: LoadedServer, hostnames: string[], now: Date): boolean {
  if (!server.issuedByCa || !server.keyMatches) return false;
  if (now.getTime() < server.notBefore) return false;
  if (server.notAfter - now.getTime() < DEV_RENEW_BEFORE_DAYS * DAY_MS) return false;
  const names = new Set(server.names);
  return hostnames.every((name) => names.has(name));
}

function randomSerial(): string {
  // 128 random bits; @peculiar/x509 encodes it as a positive DER INTEGER.
  return randomBytes(16).toString('hex');
}

async function generateKeyPair(): Promise<CryptoKeyPair> {
  return webcrypto.subtle.generateKey(EC_ALGORITHM, true, ['sign', 'verify']);
}

async function exportPkcs8Pem(key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

async function createCa(now: Date): Promise<Ca> {
  const keys = await generateKeyPair();
  const notBefore = new Date(now.getTime() - BACKDATE_MS);
  const notAfter = new Date(notBefore);
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + DEV_CA_YEARS);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: DEV_CA_NAME,
    notBefore,
    notAfter,
    keys,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert, pem: cert.toString('pem'), signingKey: keys.privateKey };
}

async function issueServerCert(
  ca: Ca,
  hostnames: string[],
  now: Date,
): Promise<{ certPem: string; keyPem: string }> {
  const keys = await generateKeyPair();
  const notBefore = new Date(now.getTime() - BACKDATE_MS);
  // Never outlive the CA.
  const notAfter = new Date(
    Math.min(notBefore.getTime() + DEV_SERVER_CERT_DAYS * DAY_MS, ca.cert.notAfter.getTime()),
  );
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: 'CN=localhost, O=Portcullis',
    issuer: ca.cert.subject,
    notBefore,
    notAfter,
    publicKey: keys.publicKey,
    signingKey: ca.signingKey,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(
        hostnames.map((name) => ({ type: isIP(name) === 0 ? 'dns' : 'ip', value: name })),
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(ca.cert),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await exportPkcs8Pem(keys.privateKey) };
}

/**
 * Writes `data` to `file` through a temporary file in the same directory (created with `mode`,
 * never chmod-ed afterwards), flushed, then renamed over the target.
 */
async function writeFileAtomic(file: string, data: string, mode: number): Promise<void> {
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    const handle = await open(tmp, 'wx', mode);
    try {
      await handle.writeFile(data, 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw new Error(`development CA: cannot write ${file} (${errorCode(err)})`, { cause: err });
  }
}
