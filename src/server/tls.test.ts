import { createPrivateKey, webcrypto } from 'node:crypto';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import http2 from 'node:http2';
import https from 'node:https';
import { tmpdir } from 'node:os';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDevCertificates } from './devca.ts';
import type { DevCertificates } from './devca.ts';
import {
  TLS12_CIPHER_SUITES,
  TLS13_CIPHER_SUITES,
  TLS_CIPHERS,
  hardenTlsServer,
  loadTlsMaterial,
  secureContextOptions,
} from './tls.ts';

// After devca.ts, which loads the Reflect metadata polyfill @peculiar/x509 needs.
const x509 = await import('@peculiar/x509');

let root: string;
let dev: DevCertificates;
let rsa: { certPem: string; keyPem: string };

/** A self-signed certificate for 127.0.0.1 (RSA or short-lived variants the dev CA never makes). */
async function selfSigned(opts: {
  rsaBits?: number;
  notBefore?: Date;
  notAfter?: Date;
}): Promise<{ certPem: string; keyPem: string }> {
  const alg =
    opts.rsaBits === undefined
      ? { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' }
      : {
          name: 'RSASSA-PKCS1-v1_5',
          modulusLength: opts.rsaBits,
          publicExponent: new Uint8Array([1, 0, 1]),
          hash: 'SHA-256',
        };
  const keys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=127.0.0.1',
    keys,
    signingAlgorithm: alg,
    notBefore: opts.notBefore ?? new Date(Date.now() - 60_000),
    notAfter: opts.notAfter ?? new Date(Date.now() + 30 * 24 * 3600_000),
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'ip', value: '127.0.0.1' }])],
  });
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  return { certPem: cert.toString('pem'), keyPem: x509.PemConverter.encode(pkcs8, 'PRIVATE KEY') };
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'portcullis-tls-'));
  dev = await ensureDevCertificates(join(root, 'data'));
  rsa = await selfSigned({ rsaBits: 2048 });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

interface Served {
  port: number;
  server: tls.Server;
  serverErrors: string[];
  close: () => Promise<void>;
}

/** A hardened (unless told otherwise) TLS echo server on 127.0.0.1:0. */
async function serve(options: tls.TlsOptions, harden = true): Promise<Served> {
  const serverErrors: string[] = [];
  const sockets = new Set<Socket>();
  const server = tls.createServer(options, (socket) => {
    socket.on('error', (err: NodeJS.ErrnoException) => serverErrors.push(err.code ?? err.message));
    socket.pipe(socket);
  });
  server.on('connection', (raw: Socket) => {
    sockets.add(raw);
    raw.on('close', () => sockets.delete(raw));
  });
  server.on('tlsClientError', () => undefined);
  if (harden) hardenTlsServer(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    port,
    server,
    serverErrors,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const raw of sockets) raw.destroy();
      }),
  };
}

interface Outcome {
  ok: boolean;
  protocol?: string | null;
  cipher?: string;
  alpn?: string | false | null;
  error?: string;
}

async function tryConnect(port: number, client: tls.ConnectionOptions): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ...client }, () => {
      resolve({
        ok: true,
        protocol: socket.getProtocol(),
        cipher: socket.getCipher().name,
        alpn: socket.alpnProtocol,
      });
      socket.destroy();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      resolve({ ok: false, error: err.code ?? err.message });
    });
  });
}

const gatewayOptions = (): tls.TlsOptions => secureContextOptions(dev, { alpn: 'h2+http/1.1' });

describe('secureContextOptions', () => {
  it('sets the policy: TLS 1.2 minimum, ECDHE + AEAD suites, server order, curves, ALPN', () => {
    const options = secureContextOptions(dev, { alpn: 'h2+http/1.1' });
    expect(options).toMatchObject({
      cert: dev.certPem,
      key: dev.keyPem,
      minVersion: 'TLSv1.2',
      ciphers: TLS_CIPHERS,
      honorCipherOrder: true,
      ecdhCurve: 'X25519:P-256:P-384',
      ALPNProtocols: ['h2', 'http/1.1'],
    });
    expect(options.ca).toBeUndefined();
    expect(secureContextOptions({ ...dev, caPem: dev.caCertPem }, { alpn: 'http/1.1' })).toMatchObject({
      ca: dev.caCertPem,
      ALPNProtocols: ['http/1.1'],
    });
    for (const suite of TLS12_CIPHER_SUITES)
      expect(suite).toMatch(/^ECDHE-(ECDSA|RSA)-.*(GCM|CHACHA20-POLY1305)/);
    expect(TLS_CIPHERS.split(':')).toEqual([...TLS13_CIPHER_SUITES, ...TLS12_CIPHER_SUITES]);
  });

  it('refuses missing PEMs and unknown ALPN choices at set-up', () => {
    expect(() => secureContextOptions({ certPem: '', keyPem: dev.keyPem }, { alpn: 'http/1.1' })).toThrow(
      TypeError,
    );
    expect(() => secureContextOptions({ certPem: dev.certPem, keyPem: 'x' }, { alpn: 'http/1.1' })).toThrow(
      /keyPem/,
    );
    expect(() => secureContextOptions(dev, { alpn: 'h3' as 'http/1.1' })).toThrow(/opts\.alpn/);
  });
});

describe('TLS handshakes against the policy', () => {
  let s: Served;
  beforeAll(async () => {
    s = await serve(gatewayOptions());
  });
  afterAll(() => s.close());

  it('accepts a TLS 1.3 client', async () => {
    const out = await tryConnect(s.port, { ca: dev.caCertPem });
    expect(out).toMatchObject({ ok: true, protocol: 'TLSv1.3' });
    expect(TLS13_CIPHER_SUITES).toContain(out.cipher);
  });

  it('accepts a TLS 1.2 client offering ECDHE-ECDSA-AES128-GCM-SHA256', async () => {
    const out = await tryConnect(s.port, {
      ca: dev.caCertPem,
      maxVersion: 'TLSv1.2',
      ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256',
    });
    expect(out).toMatchObject({ ok: true, protocol: 'TLSv1.2', cipher: 'ECDHE-ECDSA-AES128-GCM-SHA256' });
  });

  it("uses the server's cipher order on TLS 1.2", async () => {
    const out = await tryConnect(s.port, {
      ca: dev.caCertPem,
      maxVersion: 'TLSv1.2',
      ciphers: 'ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256',
    });
    expect(out).toMatchObject({ ok: true, cipher: 'ECDHE-ECDSA-AES128-GCM-SHA256' });
  });

  for (const version of ['TLSv1', 'TLSv1.1'] as const) {
    it(`refuses a ${version} client`, async () => {
      const out = await tryConnect(s.port, {
        ca: dev.caCertPem,
        minVersion: version,
        maxVersion: version,
        ciphers: 'DEFAULT@SECLEVEL=0',
      });
      expect(out.ok).toBe(false);
    });
  }

  it('refuses a TLS 1.2 client offering only CBC suites', async () => {
    const out = await tryConnect(s.port, {
      ca: dev.caCertPem,
      maxVersion: 'TLSv1.2',
      ciphers:
        'ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA',
    });
    expect(out.ok).toBe(false);
  });
});

describe('refused clients connect to a permissive server (the refusal tests can fail)', () => {
  it('a lax server accepts the TLS 1.1 and CBC clients that the policy refuses', async () => {
    const lax = await serve(
      { cert: dev.certPem, key: dev.keyPem, minVersion: 'TLSv1', ciphers: 'DEFAULT@SECLEVEL=0' },
      false,
    );
    try {
      const old = await tryConnect(lax.port, {
        ca: dev.caCertPem,
        minVersion: 'TLSv1.1',
        maxVersion: 'TLSv1.1',
        ciphers: 'DEFAULT@SECLEVEL=0',
      });
      expect(old).toMatchObject({ ok: true, protocol: 'TLSv1.1' });
      const cbc = await tryConnect(lax.port, {
        ca: dev.caCertPem,
        maxVersion: 'TLSv1.2',
        ciphers: 'ECDHE-ECDSA-AES128-SHA256',
      });
      expect(cbc).toMatchObject({ ok: true, cipher: 'ECDHE-ECDSA-AES128-SHA256' });
    } finally {
      await lax.close();
    }
  });
});

describe('non-ECDHE key exchange (RSA certificate)', () => {
  const nonEcdhe = 'AES128-GCM-SHA256:AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384';

  it('accepts ECDHE-RSA-AES128-GCM-SHA256 and refuses a client offering only RSA/DHE key exchange', async () => {
    const s = await serve(secureContextOptions(rsa, { alpn: 'http/1.1' }));
    try {
      const good = await tryConnect(s.port, {
        ca: rsa.certPem,
        servername: '',
        maxVersion: 'TLSv1.2',
        ciphers: 'ECDHE-RSA-AES128-GCM-SHA256',
      });
      expect(good).toMatchObject({ ok: true, cipher: 'ECDHE-RSA-AES128-GCM-SHA256' });
      const out = await tryConnect(s.port, {
        ca: rsa.certPem,
        servername: '',
        maxVersion: 'TLSv1.2',
        ciphers: nonEcdhe,
      });
      expect(out.ok).toBe(false);
    } finally {
      await s.close();
    }
  });

  it('the same client connects to a server with default suites (control)', async () => {
    const s = await serve(
      { cert: rsa.certPem, key: rsa.keyPem, ciphers: 'AES128-GCM-SHA256:DEFAULT' },
      false,
    );
    try {
      const out = await tryConnect(s.port, {
        ca: rsa.certPem,
        servername: '',
        maxVersion: 'TLSv1.2',
        ciphers: nonEcdhe,
      });
      expect(out).toMatchObject({ ok: true, cipher: 'AES128-GCM-SHA256' });
    } finally {
      await s.close();
    }
  });
});

describe('ALPN', () => {
  it('negotiates h2 when offered and http/1.1 otherwise', async () => {
    const gateway = await serve(secureContextOptions(dev, { alpn: 'h2+http/1.1' }));
    const admin = await serve(secureContextOptions(dev, { alpn: 'http/1.1' }));
    try {
      const ca = dev.caCertPem;
      expect(await tryConnect(gateway.port, { ca, ALPNProtocols: ['h2', 'http/1.1'] })).toMatchObject({
        alpn: 'h2',
      });
      expect(await tryConnect(gateway.port, { ca, ALPNProtocols: ['http/1.1'] })).toMatchObject({
        alpn: 'http/1.1',
      });
      expect(await tryConnect(admin.port, { ca, ALPNProtocols: ['h2', 'http/1.1'] })).toMatchObject({
        alpn: 'http/1.1',
      });
      expect(await tryConnect(admin.port, { ca, ALPNProtocols: ['h2'] })).toMatchObject({ ok: false });
    } finally {
      await gateway.close();
      await admin.close();
    }
  });

  it('serves HTTP/2 and HTTPS requests with these options', async () => {
    const h2 = http2.createSecureServer({ ...gatewayOptions(), allowHTTP1: true }, (_req, res) => {
      res.end(`v${_req.httpVersion}`);
    });
    hardenTlsServer(h2);
    await new Promise<void>((resolve) => h2.listen(0, '127.0.0.1', resolve));
    const { port } = h2.address() as { port: number };
    try {
      const client = http2.connect(`https://127.0.0.1:${String(port)}`, {
        ca: dev.caCertPem,
        servername: 'localhost',
      });
      const body = await new Promise<string>((resolve, reject) => {
        const req = client.request({ ':path': '/' });
        let data = '';
        req.setEncoding('utf8');
        req.on('data', (chunk: string) => (data += chunk));
        req.on('end', () => resolve(data));
        req.on('error', reject);
        req.end();
      });
      client.close();
      expect(body).toBe('v2.0');

      const viaHttps = await new Promise<string>((resolve, reject) => {
        https
          .get({ host: '127.0.0.1', port, servername: 'localhost', ca: dev.caCertPem, path: '/' }, (res) => {
            let data = '';
            res.setEncoding('utf8');
            res.on('data', (chunk: string) => (data += chunk));
            res.on('end', () => resolve(data));
          })
          .on('error', reject);
      });
      expect(viaHttps).toBe('v1.1');
    } finally {
      await new Promise<void>((resolve) => h2.close(() => resolve()));
    }
  });
});

describe('renegotiation', () => {
  /** Renegotiates a TLS 1.2 connection, then checks whether an echo still comes back. */
  async function renegotiateThenEcho(port: number): Promise<'echoed' | 'refused'> {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      servername: 'localhost',
      ca: dev.caCertPem,
      maxVersion: 'TLSv1.2',
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', resolve);
      socket.once('error', reject);
    });
    return new Promise((resolve) => {
      socket.on('error', () => resolve('refused'));
      socket.on('close', () => resolve('refused'));
      socket.on('end', () => resolve('refused'));
      socket.on('data', (chunk: Buffer) => {
        if (chunk.toString() === 'ping') resolve('echoed');
        socket.destroy();
      });
      const started = socket.renegotiate({}, (err) => {
        if (err) resolve('refused');
        else socket.write('ping');
      });
      if (!started) resolve('refused');
    });
  }

  it('refuses client-initiated renegotiation on TLS 1.2', async () => {
    const s = await serve(gatewayOptions());
    try {
      expect(await renegotiateThenEcho(s.port)).toBe('refused');
    } finally {
      await s.close();
    }
  });

  it('hardenTlsServer alone ends a connection that renegotiates', async () => {
    const s = await serve({ cert: dev.certPem, key: dev.keyPem }, true);
    try {
      expect(await renegotiateThenEcho(s.port)).toBe('refused');
      expect(s.serverErrors).toContain('ERR_TLS_RENEGOTIATION_DISABLED');
    } finally {
      await s.close();
    }
  });

  it('an unhardened server with default options renegotiates (control)', async () => {
    const s = await serve({ cert: dev.certPem, key: dev.keyPem }, false);
    try {
      expect(await renegotiateThenEcho(s.port)).toBe('echoed');
    } finally {
      await s.close();
    }
  });
});

describe('loadTlsMaterial', () => {
  const KEY = 'gateway.tls';

  async function files(
    name: string,
    certPem: string,
    keyPem: string,
  ): Promise<{ certFile: string; keyFile: string }> {
    const certFile = join(root, `${name}.crt`);
    const keyFile = join(root, `${name}.key`);
    await writeFile(certFile, certPem);
    await writeFile(keyFile, keyPem, { mode: 0o600 });
    return { certFile, keyFile };
  }

  async function failure(promise: Promise<unknown>): Promise<Error> {
    return promise.then(
      () => {
        throw new Error('expected a refusal');
      },
      (err: unknown) => err as Error,
    );
  }

  it('uses the development certificate when neither file is set', async () => {
    const material = await loadTlsMaterial({}, join(root, 'data'), KEY);
    expect(material).toMatchObject({
      source: 'development',
      certPem: dev.certPem,
      keyPem: dev.keyPem,
      caCertPem: dev.caCertPem,
      created: false,
    });
  });

  it('uses configured files when both are set, and they serve TLS', async () => {
    const cfg = await files('good', rsa.certPem, rsa.keyPem);
    const material = await loadTlsMaterial(cfg, join(root, 'unused'), KEY);
    expect(material).toMatchObject({
      source: 'configured',
      certPem: rsa.certPem,
      keyPem: rsa.keyPem,
      ...cfg,
    });
    const s = await serve(secureContextOptions(material, { alpn: 'http/1.1' }));
    try {
      expect(await tryConnect(s.port, { ca: rsa.certPem, servername: '' })).toMatchObject({ ok: true });
    } finally {
      await s.close();
    }
  });

  it('refuses a key that does not match the certificate, naming the key and paths but no key material', async () => {
    const cfg = await files('mismatch', dev.certPem, rsa.keyPem);
    const err = await failure(loadTlsMaterial(cfg, root, KEY));
    expect(err.message).toContain('gateway.tls.keyFile');
    expect(err.message).toContain(cfg.keyFile);
    expect(err.message).toContain(cfg.certFile);
    expect(err.message).not.toContain('PRIVATE KEY');
    expect(err.message).not.toContain(rsa.keyPem.split('\n')[1]!.slice(0, 20));
  });

  it('refuses missing files, naming the config key and the path', async () => {
    const cfg = await files('present', rsa.certPem, rsa.keyPem);
    const missingCert = join(root, 'nope.crt');
    let err = await failure(loadTlsMaterial({ certFile: missingCert, keyFile: cfg.keyFile }, root, KEY));
    expect(err.message).toContain('gateway.tls.certFile');
    expect(err.message).toContain(missingCert);
    expect(err.message).not.toContain('PRIVATE KEY');

    const missingKey = join(root, 'nope.key');
    err = await failure(loadTlsMaterial({ certFile: cfg.certFile, keyFile: missingKey }, root, KEY));
    expect(err.message).toContain('gateway.tls.keyFile');
    expect(err.message).toContain(missingKey);
  });

  // Root reads any file, so this refusal can only be observed as another user.
  it.skipIf(process.getuid?.() === 0)('refuses an unreadable key file', async () => {
    const cfg = await files('unreadable', rsa.certPem, rsa.keyPem);
    await chmod(cfg.keyFile, 0o000);
    const err = await failure(loadTlsMaterial(cfg, root, KEY));
    expect(err.message).toContain('gateway.tls.keyFile');
    expect(err.message).toContain('permission denied');
  });

  it('refuses only one of the two files', async () => {
    const cfg = await files('half', rsa.certPem, rsa.keyPem);
    const err = await failure(loadTlsMaterial({ certFile: cfg.certFile }, root, 'admin.tls'));
    expect(err.message).toContain('admin.tls.keyFile');
    const err2 = await failure(loadTlsMaterial({ keyFile: cfg.keyFile }, root, 'admin.tls'));
    expect(err2.message).toContain('admin.tls.certFile');
  });

  it('refuses files that are not PEM without echoing their contents', async () => {
    const secret = 'hunter2-super-secret-value';
    const badKey = await files('badkey', rsa.certPem, `not a key ${secret}`);
    const err = await failure(loadTlsMaterial(badKey, root, KEY));
    expect(err.message).toContain('gateway.tls.keyFile');
    expect(err.message).not.toContain(secret);

    const badCert = await files('badcert', `not a cert ${secret}`, rsa.keyPem);
    const err2 = await failure(loadTlsMaterial(badCert, root, KEY));
    expect(err2.message).toContain('gateway.tls.certFile');
    expect(err2.message).not.toContain(secret);
  });

  it('refuses an expired certificate and a short RSA key', async () => {
    const expired = await selfSigned({
      notBefore: new Date(Date.now() - 10 * 24 * 3600_000),
      notAfter: new Date(Date.now() - 24 * 3600_000),
    });
    const err = await failure(
      loadTlsMaterial(await files('expired', expired.certPem, expired.keyPem), root, KEY),
    );
    expect(err.message).toMatch(/gateway\.tls\.certFile: .* expired/);

    const weak = await selfSigned({ rsaBits: 1024 });
    const err2 = await failure(loadTlsMaterial(await files('weak', weak.certPem, weak.keyPem), root, KEY));
    expect(err2.message).toMatch(/gateway\.tls\.keyFile: .*1024 bits/);
  });

  it('accepts an EC key in SEC1 form', async () => {
    const sec1 = createPrivateKey(dev.keyPem).export({ type: 'sec1', format: 'pem' }) as string;
    const material = await loadTlsMaterial(await files('sec1', dev.certPem, sec1), root, KEY);
    expect(material).toMatchObject({ source: 'configured', keyPem: sec1 });
  });
});
