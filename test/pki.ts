/**
 * A small test PKI (roots, intermediates, client certificates) on WebCrypto with @peculiar/x509,
 * for tests that need real certificates: mTLS at the gateway and its verifier.
 */
import { randomBytes, webcrypto } from 'node:crypto';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as ReturnType<x509.CryptoProvider['get']>);

export const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
export const SIG = { name: 'ECDSA', hash: 'SHA-256' } as const;
export const DAY = 24 * 3600 * 1000;

export interface Issued {
  cert: x509.X509Certificate;
  pem: string;
  keyPem: string;
  keys: webcrypto.CryptoKeyPair;
}

export const serial = () => '01' + randomBytes(15).toString('hex');

export async function pkcs8(key: webcrypto.CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await webcrypto.subtle.exportKey('pkcs8', key), 'PRIVATE KEY');
}

export async function ca(
  name: string,
  options: { issuer?: Issued; pathLength?: number } = {},
): Promise<Issued> {
  const keys = await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']);
  const extensions = [
    new x509.BasicConstraintsExtension(true, options.pathLength, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
  ];
  const common = {
    serialNumber: serial(),
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + 365 * DAY),
    signingAlgorithm: SIG,
    extensions,
  };
  const cert =
    options.issuer === undefined
      ? await x509.X509CertificateGenerator.createSelfSigned({ ...common, name, keys })
      : await x509.X509CertificateGenerator.create({
          ...common,
          subject: name,
          issuer: options.issuer.cert.subject,
          publicKey: keys.publicKey,
          signingKey: options.issuer.keys.privateKey,
        });
  return { cert, pem: cert.toString('pem'), keyPem: await pkcs8(keys.privateKey), keys };
}

export async function leaf(
  issuer: Issued,
  cn: string,
  options: {
    eku?: string[] | null;
    notBefore?: Date;
    notAfter?: Date;
    keyUsage?: x509.KeyUsageFlags;
    ca?: boolean;
    critical?: boolean;
    /** Subject alternative names, e.g. `[{ type: 'dns', value: 'batch.example.com' }]`. */
    san?: { type: 'dns' | 'email' | 'url' | 'ip'; value: string }[];
  } = {},
): Promise<Issued> {
  const keys = await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']);
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(options.ca ?? false, undefined, true),
    new x509.KeyUsagesExtension(options.keyUsage ?? x509.KeyUsageFlags.digitalSignature, true),
  ];
  if (options.eku !== null) {
    extensions.push(new x509.ExtendedKeyUsageExtension(options.eku ?? [x509.ExtendedKeyUsage.clientAuth]));
  }
  if (options.san !== undefined) extensions.push(new x509.SubjectAlternativeNameExtension(options.san));
  if (options.critical === true) {
    // An unknown extension (a private OID) marked critical.
    extensions.push(new x509.Extension('1.3.6.1.4.1.99999.1', true, new Uint8Array([5, 0]).buffer));
  }
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${cn}, O=Example`,
    issuer: issuer.cert.subject,
    notBefore: options.notBefore ?? new Date(Date.now() - DAY),
    notAfter: options.notAfter ?? new Date(Date.now() + 30 * DAY),
    publicKey: keys.publicKey,
    signingKey: issuer.keys.privateKey,
    signingAlgorithm: SIG,
    extensions,
  });
  return { cert, pem: cert.toString('pem'), keyPem: await pkcs8(keys.privateKey), keys };
}
