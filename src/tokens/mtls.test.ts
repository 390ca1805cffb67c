/**
 * mTLS (RFC 8705) over real TLS sockets: a server that requests a certificate without rejecting
 * the handshake (as the gateway does), a test PKI (root, intermediate, another CA, a CRL), and
 * client certificates valid, expired, not yet valid, from the wrong CA, revoked, serverAuth-only,
 * without EKU, a CA as a client, through an intermediate; then certificate-bound tokens
 * (`cnf.x5t#S256`) against the presented certificate.
 */
import { randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer } from 'node:tls';
import type { DetailedPeerCertificate } from 'node:tls';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { exportJWK, SignJWT } from 'jose';
import type { JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ca, DAY, EC, leaf, SIG } from '../../test/pki.ts';
import type { Issued } from '../../test/pki.ts';
import type { GatewayRequest } from '../gateway/context.ts';
import type { CompiledOperation } from '../gateway/compile.ts';
import { createAccessTokenVerifier } from './access-token.ts';
import {
  certificateMatchesThumbprint,
  certificateThumbprint,
  compileClientCertPolicy,
  mtlsSchemeVerifier,
} from './mtls.ts';
import { compileCertEntitlements } from './mtls-entitlements.ts';
import type { ClientCertPolicy, ClientCertRejection } from './mtls.ts';
import { oauthSchemeVerifier } from './oauth-verifier.ts';

const dir = mkdtempSync(join(tmpdir(), 'portcullis-mtls-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function crl(
  issuer: Issued,
  revoked: Issued[],
  nextUpdate = new Date(Date.now() + 7 * DAY),
): Promise<string> {
  const list = await x509.X509CrlGenerator.create({
    issuer: issuer.cert.subject,
    thisUpdate: new Date(Date.now() - 3600_000),
    nextUpdate,
    entries: revoked.map((r) => ({ serialNumber: r.cert.serialNumber, revocationDate: new Date() })),
    signingKey: issuer.keys.privateKey,
    signingAlgorithm: SIG,
  });
  return list.toString('pem');
}

const file = (name: string, content: string): string => {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
};

/** The certificate chain the server sees on a real TLS connection from `client`. */
async function handshake(client?: {
  cert: string;
  key: string;
}): Promise<DetailedPeerCertificate | undefined> {
  const server = createServer({
    key: pki.server.keyPem,
    cert: pki.server.pem,
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: 'TLSv1.2',
  });
  const seen = new Promise<DetailedPeerCertificate | undefined>((resolve) => {
    server.on('secureConnection', (socket) => {
      const peer = socket.getPeerCertificate(true);
      resolve(Buffer.isBuffer(peer.raw) ? peer : undefined);
      socket.end('ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  try {
    await new Promise<void>((resolve, reject) => {
      const socket = connect({
        host: '127.0.0.1',
        port,
        servername: 'localhost',
        ca: pki.root.pem,
        ...(client === undefined ? {} : { cert: client.cert, key: client.key }),
      });
      socket.on('data', () => socket.end());
      socket.on('close', () => resolve());
      socket.on('error', reject);
    });
    return await seen;
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

const pki = {} as {
  root: Issued;
  intermediate: Issued;
  other: Issued;
  strict: Issued;
  server: Issued;
  valid: Issued;
  second: Issued;
  viaIntermediate: Issued;
};
let policyNoCrl: ClientCertPolicy;

const asClient = (c: Issued, chain: Issued[] = []) => ({
  cert: [c.pem, ...chain.map((i) => i.pem)].join('\n'),
  key: c.keyPem,
});

beforeAll(async () => {
  pki.root = await ca('CN=Test Root CA, O=Example', { pathLength: 1 });
  pki.intermediate = await ca('CN=Test Intermediate CA, O=Example', { issuer: pki.root, pathLength: 0 });
  pki.other = await ca('CN=Other CA, O=Elsewhere');
  pki.strict = await ca('CN=Strict Root, O=Example', { pathLength: 0 });
  pki.server = await leaf(pki.root, 'localhost', { eku: [x509.ExtendedKeyUsage.serverAuth] });
  pki.valid = await leaf(pki.root, 'billing');
  pki.second = await leaf(pki.root, 'billing-2');
  pki.viaIntermediate = await leaf(pki.intermediate, 'reports');
  policyNoCrl = await compileClientCertPolicy({ caFiles: [file('root.pem', pki.root.pem)] });
});

async function outcome(p: ClientCertPolicy, client?: { cert: string; key: string }, now?: Date) {
  return p.verify(await handshake(client), now);
}

async function refusal(
  p: ClientCertPolicy,
  client: { cert: string; key: string },
): Promise<ClientCertRejection> {
  const o = await outcome(p, client);
  if (o.ok) throw new Error('certificate was accepted');
  return o.reason;
}

describe('client-certificate policy over TLS', () => {
  it('accepts a valid client certificate from the configured CA', async () => {
    const o = await outcome(policyNoCrl, asClient(pki.valid));
    expect(o).toEqual({
      ok: true,
      certificate: {
        subject: 'CN=billing, O=Example',
        issuer: 'CN=Test Root CA, O=Example',
        serialNumber: pki.valid.cert.serialNumber.toLowerCase().replace(/^0+/, ''),
        fingerprintS256: certificateThumbprint(Buffer.from(pki.valid.cert.rawData)),
        notAfter: new X509Certificate(pki.valid.pem).validToDate,
        subjectAltNames: [],
      },
    });
  });

  it('accepts a certificate through an intermediate the client sends, within path length', async () => {
    expect(await outcome(policyNoCrl, asClient(pki.viaIntermediate, [pki.intermediate]))).toMatchObject({
      ok: true,
      certificate: { subject: 'CN=reports, O=Example', issuer: 'CN=Test Intermediate CA, O=Example' },
    });
    // Without the intermediate there is no path.
    expect(await refusal(policyNoCrl, asClient(pki.viaIntermediate))).toBe('untrusted');
    // A root limited to path length 0 does not accept intermediates.
    const strictPolicy = await compileClientCertPolicy({ caFiles: [file('strict.pem', pki.strict.pem)] });
    const subCa = await ca('CN=Sub of Strict, O=Example', { issuer: pki.strict });
    const viaSub = await leaf(subCa, 'deep');
    expect(await refusal(strictPolicy, asClient(viaSub, [subCa]))).toBe('untrusted');
  });

  it('refuses a connection without a certificate', async () => {
    expect(await outcome(policyNoCrl)).toEqual({ ok: false, reason: 'certificate-missing' });
    expect(policyNoCrl.verify(undefined)).toEqual({ ok: false, reason: 'certificate-missing' });
    expect(policyNoCrl.verify({} as DetailedPeerCertificate)).toEqual({
      ok: false,
      reason: 'certificate-missing',
    });
  });

  it.each<[string, () => Promise<{ cert: string; key: string }>, ClientCertRejection]>([
    [
      'expired',
      async () =>
        asClient(
          await leaf(pki.root, 'old', {
            notBefore: new Date(Date.now() - 30 * DAY),
            notAfter: new Date(Date.now() - DAY),
          }),
        ),
      'expired',
    ],
    [
      'not yet valid',
      async () => asClient(await leaf(pki.root, 'early', { notBefore: new Date(Date.now() + DAY) })),
      'not-yet-valid',
    ],
    ['from another CA', async () => asClient(await leaf(pki.other, 'stranger')), 'untrusted'],
    [
      'from another CA, sent with a chain naming the right root',
      async () => asClient(await leaf(pki.other, 'stranger'), [pki.root]),
      'untrusted',
    ],
    [
      'serverAuth only',
      async () => asClient(await leaf(pki.root, 'srv', { eku: [x509.ExtendedKeyUsage.serverAuth] })),
      'wrong-extended-key-usage',
    ],
    [
      'without extended key usage',
      async () => asClient(await leaf(pki.root, 'any', { eku: null })),
      'wrong-extended-key-usage',
    ],
    [
      'without digitalSignature',
      async () => asClient(await leaf(pki.root, 'ku', { keyUsage: x509.KeyUsageFlags.keyEncipherment })),
      'wrong-key-usage',
    ],
    ['that is a CA', async () => asClient(pki.intermediate), 'ca-certificate'],
    ['self-signed', async () => asClient(pki.other), 'ca-certificate'],
    [
      'with an unknown critical extension',
      async () => asClient(await leaf(pki.root, 'crit', { critical: true })),
      'unsupported-critical-extension',
    ],
  ])('refuses a certificate %s', async (_name, make, reason) => {
    expect(await refusal(policyNoCrl, await make())).toBe(reason);
  });

  it('checks the CRL: revoked refused, others accepted, fail closed without a current CRL', async () => {
    const revoked = await leaf(pki.root, 'revoked');
    const rootCrl = file('root.crl', await crl(pki.root, [revoked]));
    const p = await compileClientCertPolicy({
      caFiles: [file('root-again.pem', pki.root.pem)],
      crlFiles: [rootCrl],
    });
    expect(await refusal(p, asClient(revoked))).toBe('revoked');
    expect(await outcome(p, asClient(pki.valid))).toMatchObject({ ok: true });
    // The issuing intermediate has no configured CRL: revocation unknown, refused.
    const withIntermediate = await compileClientCertPolicy({
      caFiles: [file('both.pem', `${pki.root.pem}\n${pki.intermediate.pem}`)],
      crlFiles: [rootCrl],
    });
    expect(await refusal(withIntermediate, asClient(pki.viaIntermediate, [pki.intermediate]))).toBe(
      'revocation-unknown',
    );
    // A CRL past its nextUpdate is not trusted.
    const stale = await compileClientCertPolicy({
      caFiles: [file('root-3.pem', pki.root.pem)],
      crlFiles: [file('stale.crl', await crl(pki.root, [], new Date(Date.now() + 1000)))],
    });
    expect(stale.verify(await handshake(asClient(pki.valid)), new Date(Date.now() + 2000))).toEqual({
      ok: false,
      reason: 'crl-expired',
    });
    // An intermediate revoked by the root's CRL takes its certificates with it.
    const intermediateRevoked = await compileClientCertPolicy({
      caFiles: [file('root-4.pem', pki.root.pem)],
      crlFiles: [file('root-int.crl', await crl(pki.root, [pki.intermediate]))],
    });
    const rebuilt = await outcome(intermediateRevoked, asClient(pki.viaIntermediate, [pki.intermediate]));
    expect(rebuilt).toEqual({ ok: false, reason: 'revoked' });
  });

  it('fails at start-up on unusable CA and CRL files', async () => {
    await expect(compileClientCertPolicy({ caFiles: [] })).rejects.toThrow(TypeError);
    await expect(compileClientCertPolicy({ caFiles: [file('leaf.pem', pki.valid.pem)] })).rejects.toThrow(
      /not a CA/,
    );
    await expect(compileClientCertPolicy({ caFiles: [file('empty.pem', 'nothing')] })).rejects.toThrow(
      /no PEM/,
    );
    await expect(
      compileClientCertPolicy({
        caFiles: [file('r5.pem', pki.root.pem)],
        crlFiles: [file('other.crl', await crl(pki.other, []))],
      }),
    ).rejects.toThrow(/not signed by a configured CA/);
    await expect(
      compileClientCertPolicy({
        caFiles: [file('r6.pem', pki.root.pem)],
        crlFiles: [file('junk.crl', 'junk')],
      }),
    ).rejects.toThrow(/not a CRL/);
  });
});

describe('certificate-bound tokens and the mutualTLS scheme', () => {
  const ISSUER = 'https://gw.example';
  const AUDIENCE = 'https://gw.example/v1';
  let signingKey: webcrypto.CryptoKey;
  let jwks: { keys: Record<string, unknown>[] };

  beforeAll(async () => {
    const pair = await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']);
    signingKey = pair.privateKey;
    jwks = { keys: [{ ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256' }] };
  });

  const token = (claims: JWTPayload) =>
    new SignJWT({
      iss: ISSUER,
      aud: AUDIENCE,
      sub: 'svc',
      client_id: 'billing',
      jti: randomBytes(8).toString('hex'),
      iat: Math.floor(Date.now() / 1000) - 5,
      exp: Math.floor(Date.now() / 1000) + 300,
      ...claims,
    })
      .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'k1' })
      .sign(signingKey);

  function request(headers: Record<string, string>, cert: DetailedPeerCertificate | undefined) {
    return {
      req: {
        method: 'GET',
        headers,
        target: { path: '/v1/x', segments: ['v1', 'x'], query: '' },
        clientIp: '127.0.0.1',
        operation: { api: { name: 'billing' }, operationId: 'x' } as unknown as CompiledOperation,
      } as unknown as GatewayRequest,
      cert,
    };
  }

  it('accepts a token bound to the presented certificate and refuses a mismatch', async () => {
    const verifyToken = createAccessTokenVerifier({
      issuer: ISSUER,
      audience: AUDIENCE,
      keys: () => jwks,
      isRevoked: () => false,
      allowBoundTokens: true,
    });
    const certs = new WeakMap<GatewayRequest, DetailedPeerCertificate | undefined>();
    const verify = oauthSchemeVerifier('oauth', verifyToken, {
      mtls: { certificate: (req) => certs.get(req) },
    });
    const run = async (headers: Record<string, string>, cert: DetailedPeerCertificate | undefined) => {
      const { req } = request(headers, cert);
      certs.set(req, cert);
      return verify(req, []);
    };
    const presented = await handshake(asClient(pki.valid));
    const other = await handshake(asClient(pki.second));
    expect(presented).toBeDefined();
    const bound = await token({ cnf: { 'x5t#S256': certificateThumbprint(presented!) } });
    expect(
      certificateMatchesThumbprint(presented, certificateThumbprint(Buffer.from(pki.valid.cert.rawData))),
    ).toBe(true);

    expect(await run({ authorization: `Bearer ${bound}` }, presented)).toMatchObject({ ok: true });
    expect(await run({ authorization: `Bearer ${bound}` }, other)).toEqual({
      ok: false,
      status: 401,
      reason: 'token-certificate-mismatch',
    });
    expect(await run({ authorization: `Bearer ${bound}` }, undefined)).toMatchObject({
      reason: 'token-certificate-mismatch',
    });
    // Without mTLS configured, a certificate-bound token is refused.
    expect(
      await oauthSchemeVerifier('oauth', verifyToken)(
        request({ authorization: `Bearer ${bound}` }, presented).req,
        [],
      ),
    ).toMatchObject({
      reason: 'token-certificate-bound-without-mtls',
    });
    // And a verifier that does not allow bound tokens refuses it outright.
    const strict = createAccessTokenVerifier({
      issuer: ISSUER,
      audience: AUDIENCE,
      keys: () => jwks,
      isRevoked: () => false,
    });
    expect(
      await oauthSchemeVerifier('oauth', strict, { mtls: { certificate: () => presented } })(
        request({ authorization: `Bearer ${bound}` }, presented).req,
        [],
      ),
    ).toMatchObject({ reason: 'token-bound-token-without-proof' });
  });

  it('authenticates a mutualTLS scheme by the certificate, only when the API is entitled to it', async () => {
    const presented = await handshake(asClient(pki.valid));
    const entitlements = compileCertEntitlements([{ subject: 'CN=billing,O=Example' }]);
    // A certificate from the trusted CA but not on the API's list: refused (a CA alone is not authorisation).
    for (const other of [undefined, compileCertEntitlements([{ subject: 'CN=reports, O=Example' }])]) {
      const refused = mtlsSchemeVerifier('clientCert', policyNoCrl, {
        certificate: () => presented,
        entitlements: other,
      });
      expect(await refused(request({}, presented).req, [])).toEqual({
        ok: false,
        status: 403,
        reason: 'client-certificate-not-entitled',
      });
    }
    const mapped = mtlsSchemeVerifier('clientCert', policyNoCrl, {
      certificate: () => presented,
      entitlements: compileCertEntitlements([
        { subject: 'CN=billing, O=Example', principal: 'billing-batch' },
      ]),
    });
    expect(await mapped(request({}, presented).req, [])).toMatchObject({
      ok: true,
      principal: { subject: 'billing-batch' },
    });
    const verify = mtlsSchemeVerifier('clientCert', policyNoCrl, {
      certificate: () => presented,
      entitlements,
    });
    expect(await verify(request({}, presented).req, [])).toEqual({
      ok: true,
      principal: {
        scheme: 'clientCert',
        subject: 'CN=billing, O=Example',
        clientId: certificateThumbprint(presented!),
        scopes: new Set(),
      },
    });
    expect(await verify(request({}, presented).req, ['admin'])).toMatchObject({ ok: false, status: 403 });
    const expired = await handshake(
      asClient(
        await leaf(pki.root, 'old', {
          notBefore: new Date(Date.now() - 9 * DAY),
          notAfter: new Date(Date.now() - DAY),
        }),
      ),
    );
    const refuse = mtlsSchemeVerifier('clientCert', policyNoCrl, {
      certificate: () => expired,
      entitlements,
    });
    expect(await refuse(request({}, expired).req, [])).toEqual({
      ok: false,
      status: 401,
      reason: 'client-certificate-expired',
    });
    const none = mtlsSchemeVerifier('clientCert', policyNoCrl, { certificate: () => undefined });
    expect(await none(request({}, undefined).req, [])).toMatchObject({
      reason: 'client-certificate-certificate-missing',
    });
  });
});
