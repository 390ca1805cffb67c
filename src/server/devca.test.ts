import { X509Certificate, createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEV_SERVER_CERT_DAYS, ensureDevCertificates } from './devca.ts';
import type { DevCertificates } from './devca.ts';

/** PEM labels, assembled so the source holds no key-shaped block (secret scanners). */
const PEM_PRIVATE_KEY_LABEL = ['PRIVATE', 'KEY'].join(' ');
const PEM_PRIVATE_KEY_HEADER = `-----BEGIN ${PEM_PRIVATE_KEY_LABEL}-----`;

const x509 = await import('@peculiar/x509');

const DAY = 24 * 60 * 60 * 1000;
let root: string;
let seq = 0;
const freshDir = (): string => join(root, `data-${String(++seq)}`);

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'portcullis-devca-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Connects to a TLS server presenting `dev`'s certificate; resolves when the peer is authorized. */
async function handshake(
  dev: DevCertificates,
  client: tls.ConnectionOptions,
): Promise<{ authorized: boolean; error?: string }> {
  const server = tls.createServer({ cert: dev.certPem, key: dev.keyPem }, (socket) => {
    socket.on('error', () => undefined);
    socket.end();
  });
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  try {
    return await new Promise((resolve) => {
      const socket = tls.connect({ host: '127.0.0.1', port, ...client }, () => {
        resolve({ authorized: socket.authorized });
        socket.destroy();
      });
      socket.on('error', (err: NodeJS.ErrnoException) => {
        resolve({ authorized: false, error: err.code ?? err.message });
      });
    });
  } finally {
    server.close();
  }
}

describe('ensureDevCertificates: first call', () => {
  let dataDir: string;
  let dev: DevCertificates;
  beforeAll(async () => {
    dataDir = freshDir();
    dev = await ensureDevCertificates(dataDir);
  });

  it('creates the four files, keys with mode 0600 and directories with mode 0700', async () => {
    expect(dev.created).toBe(true);
    const dir = join(dataDir, 'tls');
    expect(dev.caCertFile).toBe(join(dir, 'ca.crt'));
    expect(dev.certFile).toBe(join(dir, 'server.crt'));
    expect(dev.keyFile).toBe(join(dir, 'server.key'));
    expect((await readdir(dir)).sort()).toEqual(['ca.crt', 'ca.key', 'server.crt', 'server.key']);
    expect((await stat(dataDir)).mode & 0o777).toBe(0o700);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect((await stat(join(dir, 'ca.key'))).mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, 'server.key'))).mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, 'ca.crt'))).mode & 0o077).toBe(0o044); // public, not writable by others
    expect(await readFile(dev.certFile, 'utf8')).toBe(dev.certPem);
    expect(await readFile(dev.keyFile, 'utf8')).toBe(dev.keyPem);
    expect(await readFile(dev.caCertFile, 'utf8')).toBe(dev.caCertPem);
  });

  it('writes private keys as PKCS#8 PEM on P-256', async () => {
    for (const pem of [dev.keyPem, await readFile(join(dataDir, 'tls', 'ca.key'), 'utf8')]) {
      expect(pem.startsWith(PEM_PRIVATE_KEY_HEADER)).toBe(true);
      const key = createPrivateKey(pem);
      expect(key.asymmetricKeyType).toBe('ec');
      expect(key.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    }
  });

  it('makes a P-256 / SHA-256 CA with pathLen 0, keyCertSign + cRLSign, valid for 10 years', () => {
    const ca = new X509Certificate(dev.caCertPem);
    expect(ca.ca).toBe(true);
    expect(ca.subject).toContain('CN=Portcullis Development CA');
    expect(ca.checkIssued(ca)).toBe(true);
    expect(ca.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    const years = (Date.parse(ca.validTo) - Date.parse(ca.validFrom)) / (365.25 * DAY);
    expect(Math.round(years)).toBe(10);

    const parsed = new x509.X509Certificate(dev.caCertPem);
    expect(parsed.signatureAlgorithm).toMatchObject({ name: 'ECDSA', hash: { name: 'SHA-256' } });
    const bc = parsed.getExtension(x509.BasicConstraintsExtension);
    expect(bc?.ca).toBe(true);
    expect(bc?.pathLength).toBe(0);
    expect(bc?.critical).toBe(true);
    const ku = parsed.getExtension(x509.KeyUsagesExtension);
    expect(ku?.usages).toBe(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
  });

  it('issues a server certificate from the CA with the default SANs, serverAuth and digitalSignature', () => {
    const ca = new X509Certificate(dev.caCertPem);
    const cert = new X509Certificate(dev.certPem);
    expect(cert.ca).toBe(false);
    expect(cert.checkIssued(ca)).toBe(true);
    expect(cert.verify(ca.publicKey)).toBe(true);
    expect(cert.checkPrivateKey(createPrivateKey(dev.keyPem))).toBe(true);
    expect(cert.subjectAltName?.split(', ')).toEqual([
      'DNS:localhost',
      'IP Address:127.0.0.1',
      'IP Address:0:0:0:0:0:0:0:1',
    ]);
    expect(cert.checkHost('localhost')).toBe('localhost');
    expect(cert.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(cert.checkIP('::1')).toBe('::1');
    expect(cert.checkHost('example.com')).toBeUndefined();
    expect(cert.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']); // EKU serverAuth
    const days = (Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / DAY;
    expect(days).toBe(DEV_SERVER_CERT_DAYS);

    const parsed = new x509.X509Certificate(dev.certPem);
    expect(parsed.getExtension(x509.KeyUsagesExtension)?.usages).toBe(x509.KeyUsageFlags.digitalSignature);
    expect(parsed.publicKey.algorithm).toMatchObject({ name: 'ECDSA', namedCurve: 'P-256' });
    // 128 random bits, as a positive DER INTEGER (a leading 00 octet when the top bit is set).
    expect(cert.serialNumber).toMatch(/^(00)?[0-9A-F]{1,32}$/);
    expect(cert.serialNumber).not.toBe(ca.serialNumber);
  });

  it('verifies over real TLS for localhost and 127.0.0.1 with the CA, and is refused otherwise', async () => {
    const ca = dev.caCertPem;
    expect(await handshake(dev, { ca, servername: 'localhost' })).toEqual({ authorized: true });
    expect(await handshake(dev, { ca })).toEqual({ authorized: true }); // checked against IP 127.0.0.1
    expect(await handshake(dev, { ca, servername: 'evil.test' })).toMatchObject({
      error: 'ERR_TLS_CERT_ALTNAME_INVALID',
    });
    expect(await handshake(dev, { servername: 'localhost' })).toMatchObject({
      error: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
    });
  });

  it('leaves no temporary files behind', async () => {
    expect((await readdir(join(dataDir, 'tls'))).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });
});

describe('ensureDevCertificates: later calls', () => {
  it('reuses the files on a second call', async () => {
    const dataDir = freshDir();
    const first = await ensureDevCertificates(dataDir);
    const before = await stat(first.certFile);
    const second = await ensureDevCertificates(dataDir);
    expect(second.created).toBe(false);
    expect(second.certPem).toBe(first.certPem);
    expect(second.keyPem).toBe(first.keyPem);
    expect(second.caCertPem).toBe(first.caCertPem);
    expect((await stat(second.certFile)).ino).toBe(before.ino);
  });

  it('re-issues a certificate that expires within 30 days, from the same CA', async () => {
    const dataDir = freshDir();
    const first = await ensureDevCertificates(dataDir);
    // 29 days before the end of the 397-day validity: inside the renewal window.
    const later = new Date(Date.parse(new X509Certificate(first.certPem).validTo) - 29 * DAY);
    const renewed = await ensureDevCertificates(dataDir, { now: later });
    expect(renewed.created).toBe(true);
    expect(renewed.caCertPem).toBe(first.caCertPem);
    expect(renewed.certPem).not.toBe(first.certPem);
    expect(renewed.keyPem).not.toBe(first.keyPem);
    const cert = new X509Certificate(renewed.certPem);
    expect(Date.parse(cert.validTo)).toBeGreaterThan(later.getTime() + 300 * DAY);
    expect(cert.verify(new X509Certificate(first.caCertPem).publicKey)).toBe(true);
    expect(await readFile(renewed.certFile, 'utf8')).toBe(renewed.certPem);
  });

  it('keeps a certificate that is still 31 days from expiry', async () => {
    const dataDir = freshDir();
    const first = await ensureDevCertificates(dataDir);
    const later = new Date(Date.parse(new X509Certificate(first.certPem).validTo) - 31 * DAY);
    const again = await ensureDevCertificates(dataDir, { now: later });
    expect(again.created).toBe(false);
    expect(again.certPem).toBe(first.certPem);
  });

  it('re-issues when a requested hostname is missing, and keeps it afterwards', async () => {
    const dataDir = freshDir();
    const first = await ensureDevCertificates(dataDir);
    const withName = await ensureDevCertificates(dataDir, { hostnames: ['Gateway.Test', '10.1.2.3'] });
    expect(withName.created).toBe(true);
    expect(withName.caCertPem).toBe(first.caCertPem);
    const cert = new X509Certificate(withName.certPem);
    expect(cert.checkHost('gateway.test')).toBe('gateway.test');
    expect(cert.checkIP('10.1.2.3')).toBe('10.1.2.3');
    expect(cert.checkHost('localhost')).toBe('localhost');
    expect(await handshake(withName, { ca: withName.caCertPem, servername: 'gateway.test' })).toEqual({
      authorized: true,
    });

    const plain = await ensureDevCertificates(dataDir);
    expect(plain.created).toBe(false);
    expect(plain.certPem).toBe(withName.certPem);
    const same = await ensureDevCertificates(dataDir, { hostnames: ['gateway.test'] });
    expect(same.created).toBe(false);
  });

  it('re-issues when server.key no longer matches server.crt', async () => {
    const dataDir = freshDir();
    const first = await ensureDevCertificates(dataDir);
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    await writeFile(first.keyFile, other.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    const fixed = await ensureDevCertificates(dataDir);
    expect(fixed.created).toBe(true);
    expect(new X509Certificate(fixed.certPem).checkPrivateKey(createPrivateKey(fixed.keyPem))).toBe(true);
    expect(fixed.caCertPem).toBe(first.caCertPem);
  });

  it('re-issues the server certificate when the server files are missing', async () => {
    const dataDir = freshDir();
    const first = await ensureDevCertificates(dataDir);
    await rm(first.certFile);
    const again = await ensureDevCertificates(dataDir);
    expect(again.created).toBe(true);
    expect(again.caCertPem).toBe(first.caCertPem);
  });

  it('replaces a CA that expires within 30 days, together with the server certificate', async () => {
    const dataDir = freshDir();
    const first = await ensureDevCertificates(dataDir);
    const later = new Date(Date.parse(new X509Certificate(first.caCertPem).validTo) - 10 * DAY);
    const renewed = await ensureDevCertificates(dataDir, { now: later });
    expect(renewed.created).toBe(true);
    expect(renewed.caCertPem).not.toBe(first.caCertPem);
    const ca = new X509Certificate(renewed.caCertPem);
    expect(Date.parse(ca.validFrom)).toBeGreaterThan(later.getTime() - DAY);
    expect(new X509Certificate(renewed.certPem).verify(ca.publicKey)).toBe(true);
  });

  it('gives concurrent first calls one CA', async () => {
    const dataDir = freshDir();
    const [a, b] = await Promise.all([ensureDevCertificates(dataDir), ensureDevCertificates(dataDir)]);
    expect(a.caCertPem).toBe(b.caCertPem);
    expect(a.certPem).toBe(b.certPem);
    expect(await readFile(a.caCertFile, 'utf8')).toBe(a.caCertPem);
  });
});

describe('ensureDevCertificates: refusals', () => {
  it('rejects a hostname that is neither a DNS name nor an IP address', async () => {
    await expect(ensureDevCertificates(freshDir(), { hostnames: ['bad host'] })).rejects.toThrow(TypeError);
    await expect(ensureDevCertificates(freshDir(), { hostnames: ['-bad.test'] })).rejects.toThrow(
      /is not a DNS name or IP address/,
    );
    await expect(ensureDevCertificates(freshDir(), { now: new Date('nope') })).rejects.toThrow(TypeError);
  });

  it('refuses a CA whose key does not match, naming the file but not the key', async () => {
    const dataDir = freshDir();
    const first = await ensureDevCertificates(dataDir);
    const caKeyFile = join(dataDir, 'tls', 'ca.key');
    const otherPem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
    });
    await writeFile(caKeyFile, otherPem);
    const error = await ensureDevCertificates(dataDir).then(
      () => undefined,
      (err: unknown) => err as Error,
    );
    expect(error).toBeInstanceOf(Error);
    expect(error?.message).toContain(caKeyFile);
    expect(error?.message).not.toContain(PEM_PRIVATE_KEY_LABEL);
    // The server files were left alone.
    expect(await readFile(first.certFile, 'utf8')).toBe(first.certPem);
  });
});
