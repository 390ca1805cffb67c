/**
 * Client certificates at the gateway (RFC 8705): the policy an operation that requires mTLS
 * applies to the certificate the client presented, and certificate-bound access tokens.
 *
 * The listener requests a certificate without rejecting the handshake
 * (`requestCert: true, rejectUnauthorized: false`), so that only the operations that require
 * mTLS refuse, with a problem response. The policy then checks, on every such request:
 *
 * - a path from the presented certificate to a configured CA (`caFiles`), through intermediates
 *   the client sent (each a CA, with keyCertSign when it has key usage, and within its path
 *   length), every signature verified (`X509Certificate.verify`, OpenSSL);
 * - every certificate on the path valid now;
 * - the client certificate: not a CA, key usage (when present) with digitalSignature, extended
 *   key usage present and including clientAuth, no unknown critical extension;
 * - when `crlFiles` are configured: each certificate on the path against its issuer's CRL (CRLs
 *   are verified against the configured CAs at start-up; a certificate whose issuer has no CRL,
 *   or whose CRL is past its nextUpdate, is refused: fail closed).
 *
 * `certificateThumbprint` is the `x5t#S256` of RFC 8705 §3.1 (base64url SHA-256 of the DER).
 */
import { X509Certificate, createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { DetailedPeerCertificate, PeerCertificate } from 'node:tls';
// @peculiar/x509 resolves its internals through tsyringe, which needs the Reflect metadata API
// at load time; this import must stay before the x509 import.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import type { GatewayRequest, SchemeVerifier } from '../gateway/context.ts';
import { subjectAltNames } from './mtls-entitlements.ts';
import type { CertEntitlements } from './mtls-entitlements.ts';

const OID_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const OID_BASIC_CONSTRAINTS = '2.5.29.19';
const OID_KEY_USAGE = '2.5.29.15';
const OID_EXT_KEY_USAGE = '2.5.29.37';
/** Critical extensions this policy understands (others make a certificate unacceptable). */
const KNOWN_CRITICAL = new Set([
  OID_BASIC_CONSTRAINTS,
  OID_KEY_USAGE,
  OID_EXT_KEY_USAGE,
  '2.5.29.17', // subjectAltName
  '2.5.29.14', // subjectKeyIdentifier
  '2.5.29.35', // authorityKeyIdentifier
]);

export type ClientCertRejection =
  | 'certificate-missing'
  | 'malformed'
  | 'untrusted'
  | 'chain-too-long'
  | 'not-yet-valid'
  | 'expired'
  | 'ca-certificate'
  | 'wrong-key-usage'
  | 'wrong-extended-key-usage'
  | 'unsupported-critical-extension'
  | 'revoked'
  | 'revocation-unknown'
  | 'crl-expired';

export interface VerifiedClientCertificate {
  /** The subject distinguished name (RFC 4514 style, e.g. `CN=billing, O=Example`). */
  readonly subject: string;
  readonly issuer: string;
  /** Lower-case hex, without leading zeros. */
  readonly serialNumber: string;
  /** base64url SHA-256 of the DER: what `cnf.x5t#S256` binds to. */
  readonly fingerprintS256: string;
  readonly notAfter: Date;
  /** Subject alternative names as `dns:…`, `email:…`, `uri:…`, `ip:…` (see mtls-entitlements.ts). */
  readonly subjectAltNames: readonly string[];
}

export type ClientCertOutcome =
  | { readonly ok: true; readonly certificate: VerifiedClientCertificate }
  | { readonly ok: false; readonly reason: ClientCertRejection };

export interface ClientCertPolicyOptions {
  /** PEM files with the CAs (roots or intermediates) client certificates must chain to. */
  readonly caFiles: readonly string[];
  /** PEM or DER CRLs, each issued by one of the configured CAs. */
  readonly crlFiles?: readonly string[];
  /** Most certificates on a path, client certificate and CA included (default 4). */
  readonly maxChainLength?: number;
}

export interface ClientCertPolicy {
  /** Checks the peer's certificate (`socket.getPeerCertificate(true)`); cheap and synchronous. */
  verify(peer: PeerCertificate | DetailedPeerCertificate | undefined | null, now?: Date): ClientCertOutcome;
}

/** A peer certificate, node X509Certificate or DER buffer, as DER. */
function derOf(cert: PeerCertificate | X509Certificate | Buffer): Buffer | undefined {
  if (Buffer.isBuffer(cert)) return cert;
  if (cert instanceof X509Certificate) return cert.raw;
  return Buffer.isBuffer(cert.raw) && cert.raw.length > 0 ? cert.raw : undefined;
}

/** RFC 8705 `x5t#S256`: base64url SHA-256 of the certificate's DER encoding. */
export function certificateThumbprint(cert: PeerCertificate | X509Certificate | Buffer): string {
  const der = derOf(cert);
  if (der === undefined) throw new TypeError('certificateThumbprint: no certificate');
  return createHash('sha256').update(der).digest('base64url');
}

/** Whether the presented certificate is the one a token's `cnf.x5t#S256` names (constant time). */
export function certificateMatchesThumbprint(
  cert: PeerCertificate | X509Certificate | Buffer | undefined,
  x5tS256: string,
): boolean {
  if (cert === undefined) return false;
  const der = derOf(cert);
  if (der === undefined) return false;
  const actual = Buffer.from(certificateThumbprint(der));
  const expected = Buffer.from(x5tS256);
  return actual.length === expected.length && timingSafeEqual(actual, expected);
}

const serialKey = (hex: string): string => hex.toLowerCase().replace(/^0+(?=.)/, '');

function splitPem(text: string, label: string): Buffer[] {
  const re = new RegExp(`-----BEGIN ${label}-----([\\s\\S]*?)-----END ${label}-----`, 'g');
  return [...text.matchAll(re)].map((m) => Buffer.from((m[1] ?? '').replace(/\s+/g, ''), 'base64'));
}

interface Parsed {
  readonly node: X509Certificate;
  readonly peculiar: x509.X509Certificate;
}

function parse(der: Buffer): Parsed {
  return { node: new X509Certificate(der), peculiar: new x509.X509Certificate(der) };
}

function pathLength(cert: Parsed): number | undefined {
  return cert.peculiar.getExtension(x509.BasicConstraintsExtension)?.pathLength;
}

function keyUsageAllows(cert: Parsed, flag: x509.KeyUsageFlags): boolean {
  const ku = cert.peculiar.getExtension(x509.KeyUsagesExtension);
  return ku === null || (ku.usages & flag) !== 0;
}

function unknownCritical(cert: Parsed): boolean {
  return cert.peculiar.extensions.some((e) => e.critical && !KNOWN_CRITICAL.has(e.type));
}

interface Crl {
  readonly nextUpdate: Date | undefined;
  readonly revoked: ReadonlySet<string>;
}

/**
 * Reads the CAs and CRLs once (start-up); throws with the file name when one is not usable: a
 * CA file without certificates or with a non-CA certificate, a CRL not issued and signed by a
 * configured CA.
 */
export async function compileClientCertPolicy(options: ClientCertPolicyOptions): Promise<ClientCertPolicy> {
  const maxChain = options.maxChainLength ?? 4;
  if (options.caFiles.length === 0) throw new TypeError('mTLS: at least one CA file is required');
  if (!Number.isInteger(maxChain) || maxChain < 2 || maxChain > 10) {
    throw new TypeError('mTLS: maxChainLength must be 2–10');
  }
  const anchors: Parsed[] = [];
  for (const file of options.caFiles) {
    const ders = splitPem(await readFile(file, 'utf8'), 'CERTIFICATE');
    if (ders.length === 0) throw new Error(`mTLS: ${file} contains no PEM certificate`);
    for (const der of ders) {
      const cert = parse(der);
      if (!cert.node.ca) throw new Error(`mTLS: ${file} contains a certificate that is not a CA`);
      anchors.push(cert);
    }
  }
  // CRLs by the fingerprint of the CA that issued and signed them.
  const crls = new Map<string, Crl>();
  for (const file of options.crlFiles ?? []) {
    const raw = await readFile(file);
    const text = raw.toString('latin1');
    const ders = text.includes('-----BEGIN X509 CRL-----') ? splitPem(text, 'X509 CRL') : [raw];
    if (ders.length === 0) throw new Error(`mTLS: ${file} contains no CRL`);
    for (const der of ders) {
      let crl: x509.X509Crl;
      try {
        crl = new x509.X509Crl(der);
      } catch (cause) {
        throw new Error(`mTLS: ${file} is not a CRL`, { cause });
      }
      let issuer: Parsed | undefined;
      for (const ca of anchors) {
        if (ca.peculiar.subject !== crl.issuer || !keyUsageAllows(ca, x509.KeyUsageFlags.cRLSign)) continue;
        if (await crl.verify({ publicKey: ca.peculiar })) {
          issuer = ca;
          break;
        }
      }
      if (issuer === undefined) throw new Error(`mTLS: ${file} is not signed by a configured CA`);
      const revoked = new Set(crl.entries.map((e) => serialKey(e.serialNumber)));
      const previous = crls.get(issuer.node.fingerprint256);
      if (
        previous === undefined ||
        (previous.nextUpdate?.getTime() ?? 0) < (crl.nextUpdate?.getTime() ?? 0)
      ) {
        crls.set(issuer.node.fingerprint256, { nextUpdate: crl.nextUpdate, revoked });
      }
    }
  }
  const checkRevocation = (options.crlFiles ?? []).length > 0;

  const issuedBy = (child: Parsed, parent: Parsed): boolean =>
    child.node.checkIssued(parent.node) && child.node.verify(parent.node.publicKey);

  const validAt = (cert: Parsed, now: Date): ClientCertRejection | undefined => {
    if (cert.node.validFromDate.getTime() > now.getTime()) return 'not-yet-valid';
    if (cert.node.validToDate.getTime() <= now.getTime()) return 'expired';
    return undefined;
  };

  return {
    verify(peer, now = new Date()) {
      if (peer === undefined || peer === null || !Buffer.isBuffer(peer.raw) || peer.raw.length === 0) {
        return { ok: false, reason: 'certificate-missing' };
      }
      let leaf: Parsed;
      const presented: Parsed[] = [];
      try {
        leaf = parse(peer.raw);
        let next: DetailedPeerCertificate | undefined =
          'issuerCertificate' in peer ? peer.issuerCertificate : undefined;
        let previousRaw = peer.raw;
        for (let i = 0; i < 10 && next !== undefined && Buffer.isBuffer(next.raw); i++) {
          if (next.raw.equals(previousRaw)) break;
          presented.push(parse(next.raw));
          previousRaw = next.raw;
          next = next.issuerCertificate;
        }
      } catch {
        return { ok: false, reason: 'malformed' };
      }

      // The client certificate itself.
      if (leaf.node.ca) return { ok: false, reason: 'ca-certificate' };
      const leafValidity = validAt(leaf, now);
      if (leafValidity !== undefined) return { ok: false, reason: leafValidity };
      if (unknownCritical(leaf)) return { ok: false, reason: 'unsupported-critical-extension' };
      if (!keyUsageAllows(leaf, x509.KeyUsageFlags.digitalSignature))
        return { ok: false, reason: 'wrong-key-usage' };
      const eku = leaf.peculiar.getExtension(x509.ExtendedKeyUsageExtension);
      if (eku === null || !eku.usages.map(String).includes(OID_CLIENT_AUTH)) {
        return { ok: false, reason: 'wrong-extended-key-usage' };
      }

      // A path to a configured CA.
      const path: Parsed[] = [leaf];
      let anchor: Parsed | undefined;
      for (;;) {
        const current = path[path.length - 1] ?? leaf;
        anchor = anchors.find((a) => issuedBy(current, a));
        if (anchor !== undefined) break;
        if (path.length + 1 >= maxChain) return { ok: false, reason: 'chain-too-long' };
        const intermediate = presented.find((p) => !path.includes(p) && p.node.ca && issuedBy(current, p));
        if (intermediate === undefined) return { ok: false, reason: 'untrusted' };
        path.push(intermediate);
      }
      const issuers = [...path.slice(1), anchor];
      for (const [i, ca] of issuers.entries()) {
        const validity = validAt(ca, now);
        if (validity !== undefined) return { ok: false, reason: validity };
        if (!ca.node.ca || !keyUsageAllows(ca, x509.KeyUsageFlags.keyCertSign))
          return { ok: false, reason: 'untrusted' };
        const limit = pathLength(ca);
        if (limit !== undefined && i > limit) return { ok: false, reason: 'untrusted' };
        if (ca !== anchor && unknownCritical(ca))
          return { ok: false, reason: 'unsupported-critical-extension' };
      }

      if (checkRevocation) {
        // A revocation anywhere on the path wins over a certificate whose status is unknown.
        let unknown: ClientCertRejection | undefined;
        for (const [i, cert] of path.entries()) {
          const issuer = issuers[i];
          const crl = issuer === undefined ? undefined : crls.get(issuer.node.fingerprint256);
          if (crl === undefined) unknown ??= 'revocation-unknown';
          else if (crl.nextUpdate !== undefined && crl.nextUpdate.getTime() <= now.getTime())
            unknown ??= 'crl-expired';
          else if (crl.revoked.has(serialKey(cert.node.serialNumber)))
            return { ok: false, reason: 'revoked' };
        }
        if (unknown !== undefined) return { ok: false, reason: unknown };
      }

      return {
        ok: true,
        certificate: {
          subject: leaf.peculiar.subject,
          issuer: leaf.peculiar.issuer,
          serialNumber: serialKey(leaf.node.serialNumber),
          fingerprintS256: certificateThumbprint(leaf.node),
          notAfter: leaf.node.validToDate,
          subjectAltNames: subjectAltNames(leaf.peculiar),
        },
      };
    },
  };
}

export interface MtlsSchemeOptions {
  /** The client certificate of the request's connection (`getPeerCertificate(true)`). */
  readonly certificate: (req: GatewayRequest) => PeerCertificate | DetailedPeerCertificate | undefined;
  readonly now?: () => number;
  /**
   * The certificates the API accepts (its `mtls.clients`); a certificate that matches none is
   * refused with 403 `client-certificate-not-entitled`. Without it every verified certificate
   * is refused the same way: a CA alone is not authorisation.
   */
  readonly entitlements?: CertEntitlements | undefined;
}

/**
 * The verifier for an OpenAPI `mutualTLS` scheme: the principal is the certificate (its mapped
 * principal name or its subject DN, and its thumbprint as the client id), provided the API's
 * entitlements accept it. Certificates carry no scopes: an operation that lists scopes for this
 * scheme refuses with 403.
 */
export function mtlsSchemeVerifier(
  schemeName: string,
  policy: ClientCertPolicy,
  options: MtlsSchemeOptions,
): SchemeVerifier {
  const now = options.now ?? (() => Date.now());
  return (req, requiredScopes) => {
    const outcome = policy.verify(options.certificate(req), new Date(now()));
    if (!outcome.ok) return { ok: false, status: 401, reason: `client-certificate-${outcome.reason}` };
    const entitled = options.entitlements?.match(
      outcome.certificate.subject,
      outcome.certificate.subjectAltNames,
    );
    if (entitled === undefined) return { ok: false, status: 403, reason: 'client-certificate-not-entitled' };
    if (requiredScopes.length > 0) return { ok: false, status: 403, reason: 'insufficient-scope' };
    return {
      ok: true,
      principal: {
        scheme: schemeName,
        subject: entitled,
        clientId: outcome.certificate.fingerprintS256,
        scopes: new Set<string>(),
      },
    };
  };
}
