/**
 * Shared pieces of the admin-plane tests: free ports, and (admin-api tests) signing an
 * administrator in through the built-in authorization server.
 */
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

/**
 * A client certificate for the admin listener (the listener refuses anonymous `/metrics` and
 * admin API calls): writes a CA into `dir` and returns the `admin:` configuration that maps the
 * certificate to an `auditor` (or the given roles), and the certificate and key for undici's
 * `connect` options.
 */
export async function adminCredentials(
  dir: string,
  roles: readonly ('auditor' | 'operator' | 'security-officer' | 'key-custodian')[] = ['auditor'],
): Promise<{ config: { clientCertificates: unknown }; cert: string; key: string }> {
  const { ca, leaf } = await import('./pki.ts');
  const root = await ca('Admin Test CA');
  const client = await leaf(root, 'admin-test-client');
  const caFile = join(dir, 'admin-ca.pem');
  await writeFile(caFile, root.pem);
  return {
    config: {
      clientCertificates: {
        caFiles: [caFile],
        principals: [{ name: 'test-automation', subject: 'admin-test-client', roles }],
      },
    },
    cert: client.pem,
    key: client.keyPem,
  };
}
