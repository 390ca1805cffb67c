/**
 * TLS settings shared by the gateway and admin listeners: TLS 1.2 minimum (1.3 preferred),
 * ECDHE key exchange with AEAD ciphers only, no compression, no renegotiation; and the
 * certificate material, either configured files or the development CA's certificate.
 */
import { X509Certificate, constants as cryptoConstants, createPrivateKey } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type http2 from 'node:http2';
import type https from 'node:https';
import { resolve } from 'node:path';
import type tls from 'node:tls';
import { ensureDevCertificates } from './devca.ts';
import { tlsCipherPolicy } from '../keys/fips.ts';

/** TLS 1.3 suites (all AEAD), in OpenSSL's default order. */
export const TLS13_CIPHER_SUITES: readonly string[] = [
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'TLS_AES_128_GCM_SHA256',
];

/** TLS 1.2 suites: ECDHE (forward secrecy) with AEAD only, ECDSA before RSA, in server order. */
export const TLS12_CIPHER_SUITES: readonly string[] = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
];

/**
 * The `ciphers` string for every listener. TLS 1.3 suites are listed too: Node applies the
 * `TLS_*` names to TLS 1.3 and the rest to TLS 1.2 and below.
 */
export const TLS_CIPHERS: string = [...TLS13_CIPHER_SUITES, ...TLS12_CIPHER_SUITES].join(':');

/** Key-exchange groups, preferred first. */
export const TLS_ECDH_CURVES = 'X25519:P-256:P-384';

export const TLS_MIN_VERSION = 'TLSv1.2' satisfies tls.SecureVersion;

/** ALPN protocol lists by listener kind. */
const ALPN = {
  'h2+http/1.1': ['h2', 'http/1.1'],
  'http/1.1': ['http/1.1'],
} as const;

export type AlpnChoice = keyof typeof ALPN;

export interface TlsKeyPair {
  /** Server certificate, PEM; may be followed by intermediate certificates. */
  certPem: string;
  /** The certificate's private key, PEM. */
  keyPem: string;
  /** CA certificates (PEM), e.g. to verify client certificates. */
  caPem?: string;
}

/**
 * Options for `https.createServer`, `http2.createSecureServer` or `tls.createServer` with
 * Portcullis's TLS policy. Pair the server with {@link hardenTlsServer}.
 *
 * @example
 * ```ts
 * const server = https.createServer(secureContextOptions(material, { alpn: 'http/1.1' }));
 * hardenTlsServer(server);
 * ```
 * @throws TypeError when the PEM strings are missing or `alpn` is not a known choice.
 */
export function secureContextOptions(
  material: TlsKeyPair,
  opts: { alpn: AlpnChoice },
): tls.SecureContextOptions & tls.TlsOptions {
  if (typeof material.certPem !== 'string' || !material.certPem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new TypeError('secureContextOptions: material.certPem must be a PEM certificate');
  }
  if (typeof material.keyPem !== 'string' || !/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(material.keyPem)) {
    throw new TypeError('secureContextOptions: material.keyPem must be a PEM private key');
  }
  if (material.caPem !== undefined && typeof material.caPem !== 'string') {
    throw new TypeError('secureContextOptions: material.caPem must be a PEM string when set');
  }
  if (!Object.hasOwn(ALPN, opts.alpn)) {
    throw new TypeError(`secureContextOptions: opts.alpn must be one of ${Object.keys(ALPN).join(', ')}`);
  }
  return {
    cert: material.certPem,
    key: material.keyPem,
    ...(material.caPem === undefined ? {} : { ca: material.caPem }),
    minVersion: TLS_MIN_VERSION,
    // FIPS mode (crypto.fips) narrows both to approved suites and groups.
    ...tlsCipherPolicy({ ciphers: TLS_CIPHERS, ecdhCurve: TLS_ECDH_CURVES }),
    honorCipherOrder: true,
    // OpenSSL 3 does not compress; say so anyway. NO_RENEGOTIATION refuses renegotiation in
    // the protocol (hardenTlsServer also ends any connection that starts one).
    secureOptions: cryptoConstants.SSL_OP_NO_COMPRESSION | cryptoConstants.SSL_OP_NO_RENEGOTIATION,
    ALPNProtocols: [...ALPN[opts.alpn]],
  };
}

const hardened = new WeakSet<tls.Server>();

/**
 * Disables renegotiation on every connection the server accepts: a peer that starts one is
 * disconnected (in addition to `SSL_OP_NO_RENEGOTIATION` from {@link secureContextOptions},
 * which refuses it in the protocol). Safe to call more than once.
 */
export function hardenTlsServer(server: tls.Server | https.Server | http2.Http2SecureServer): void {
  if (hardened.has(server)) return;
  hardened.add(server);
  server.on('secureConnection', (socket: tls.TLSSocket) => {
    socket.disableRenegotiation();
    // Node only emits an error for a renegotiation attempt; end the connection here so that it
    // neither lingers nor depends on the caller's error handling.
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ERR_TLS_RENEGOTIATION_DISABLED') socket.destroy();
    });
  });
}

/** Where the listener's certificate came from. */
export type TlsMaterial =
  | (TlsKeyPair & { source: 'configured'; certFile: string; keyFile: string })
  | (TlsKeyPair & {
      source: 'development';
      certFile: string;
      keyFile: string;
      /** The development CA certificate clients must trust. */
      caCertPem: string;
      caCertFile: string;
      /** True when this start wrote a new development server certificate. */
      created: boolean;
    });

/**
 * The certificate and key for a listener. Configured files (both or neither) replace the
 * development certificate; with neither, the development CA under `dataDir` provides one.
 *
 * @param cfg the listener's TLS config (`certFile`, `keyFile`)
 * @param configKey the config path of `cfg`, e.g. `gateway.tls`, used in error messages
 * @throws Error naming the config key and file path (never file contents) when only one file is
 *   set, a file cannot be read or parsed, the key does not match the certificate, the
 *   certificate has expired, or an RSA key is shorter than 2048 bits.
 */
export async function loadTlsMaterial(
  cfg: { certFile?: string | undefined; keyFile?: string | undefined },
  dataDir: string,
  configKey: string,
): Promise<TlsMaterial> {
  const { certFile, keyFile } = cfg;
  if (certFile === undefined && keyFile === undefined) {
    const dev = await ensureDevCertificates(dataDir);
    return {
      source: 'development',
      certPem: dev.certPem,
      keyPem: dev.keyPem,
      certFile: dev.certFile,
      keyFile: dev.keyFile,
      caCertPem: dev.caCertPem,
      caCertFile: dev.caCertFile,
      created: dev.created,
    };
  }
  if (certFile === undefined || keyFile === undefined) {
    const [set, unset] = certFile === undefined ? ['keyFile', 'certFile'] : ['certFile', 'keyFile'];
    throw new Error(`${configKey}.${unset} must be set together with ${configKey}.${set}`);
  }
  if (typeof certFile !== 'string' || certFile === '') {
    throw new Error(`${configKey}.certFile must be a non-empty file path`);
  }
  if (typeof keyFile !== 'string' || keyFile === '') {
    throw new Error(`${configKey}.keyFile must be a non-empty file path`);
  }
  const certPath = resolve(certFile);
  const keyPath = resolve(keyFile);
  const certPem = await readPem(certPath, `${configKey}.certFile`);
  const keyPem = await readPem(keyPath, `${configKey}.keyFile`);

  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch {
    throw new Error(`${configKey}.certFile: ${certPath} does not contain a PEM certificate`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch {
    // The parser's message can quote input; keep it out.
    throw new Error(
      `${configKey}.keyFile: ${keyPath} does not contain an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)`,
    );
  }
  if (!cert.checkPrivateKey(key)) {
    throw new Error(
      `${configKey}.keyFile: the private key in ${keyPath} does not match the certificate in ${certPath} (${configKey}.certFile)`,
    );
  }
  if (key.asymmetricKeyType === 'rsa' || key.asymmetricKeyType === 'rsa-pss') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < 2048) {
      throw new Error(
        `${configKey}.keyFile: the RSA key in ${keyPath} has ${bits} bits; at least 2048 are required`,
      );
    }
  }
  if (Date.parse(cert.validTo) <= Date.now()) {
    throw new Error(`${configKey}.certFile: the certificate in ${certPath} expired on ${cert.validTo}`);
  }
  return { source: 'configured', certPem, keyPem, certFile: certPath, keyFile: keyPath };
}

async function readPem(file: string, key: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const reason =
      code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (code ?? 'unreadable');
    throw new Error(`${key}: cannot read ${file} (${reason})`, { cause: err });
  }
}
