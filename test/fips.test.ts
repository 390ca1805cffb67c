/**
 * FIPS mode (`crypto.fips`). This machine's Node.js 24 has no OpenSSL FIPS provider, so what is
 * tested is: the refusal to start when FIPS is required (the real CLI, and in process), the
 * decision logic, and the restrictions applied by a gateway told that the provider is active
 * (the `getFips` hook): TLS refuses ChaCha20 suites and X25519-only clients, discovery stops
 * offering EdDSA, an EdDSA signing key is refused. The same handshakes succeed in standard mode.
 * The positive case — a real FIPS provider — could not be run here.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import type { ConnectionOptions } from 'node:tls';
import { request, Agent } from 'undici';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config/load.ts';
import {
  FipsError,
  applyFipsMode,
  approvedJoseAlgs,
  decideFipsMode,
  fipsProviderActive,
  inFipsMode,
  tlsCipherPolicy,
} from '../src/keys/fips.ts';
import { startPortcullis } from '../src/server/lifecycle.ts';
import type { Portcullis } from '../src/server/lifecycle.ts';
import { createLogger } from '../src/log/index.ts';
import { runPortcullis } from './cli-harness.ts';
import { TEST_OPENAPI } from './helpers.ts';

const configOf = (yaml: string) => parseConfig(yaml, '/etc/portcullis.yaml').config;

describe('FIPS decision', () => {
  it('sees that this OpenSSL has no active FIPS provider', () => {
    expect(fipsProviderActive()).toBe(false);
    expect(fipsProviderActive(() => 0)).toBe(false);
  });

  it('refuses required without the provider, naming crypto.fips; preferred and off run standard', () => {
    const required = configOf('crypto:\n  fips: required\n');
    expect(() => decideFipsMode(required, false)).toThrow(FipsError);
    expect(() => decideFipsMode(required, false)).toThrow(
      /^crypto\.fips: required, but the OpenSSL FIPS provider/,
    );
    expect(decideFipsMode(configOf('crypto:\n  fips: preferred\n'), false).mode).toBe('standard');
    expect(decideFipsMode(configOf('version: 1\n'), true)).toMatchObject({
      configured: 'off',
      mode: 'standard',
    });
    expect(decideFipsMode(required, true).mode).toBe('fips');
    expect(decideFipsMode(configOf('crypto:\n  fips: preferred\n'), true).mode).toBe('fips');
  });

  it('refuses an EdDSA signing key in FIPS mode only', () => {
    const eddsa = configOf('crypto:\n  fips: required\noauth:\n  signing:\n    alg: EdDSA\n');
    expect(() => decideFipsMode(eddsa, true)).toThrow(
      /oauth\.signing\.alg: EdDSA is not allowed in FIPS mode/,
    );
    const standard = configOf('oauth:\n  signing:\n    alg: EdDSA\n');
    expect(decideFipsMode(standard, true).mode).toBe('standard');
  });

  it('restricts JOSE algorithms and TLS suites in FIPS mode, and nothing outside it', () => {
    const std = { ciphers: 'X', ecdhCurve: 'Y' };
    applyFipsMode({ configured: 'required', providerActive: true, mode: 'fips' });
    try {
      expect(inFipsMode()).toBe(true);
      expect(approvedJoseAlgs(['ES256', 'PS256', 'EdDSA'])).toEqual(['ES256', 'PS256']);
      const policy = tlsCipherPolicy(std);
      expect(policy.ciphers).not.toMatch(/CHACHA20/);
      expect(policy.ciphers.split(':').every((c) => c.includes('GCM'))).toBe(true);
      expect(policy.ecdhCurve).toBe('P-256:P-384');
    } finally {
      applyFipsMode({ configured: 'off', providerActive: false, mode: 'standard' });
    }
    expect(approvedJoseAlgs(['ES256', 'PS256', 'EdDSA'])).toEqual(['ES256', 'PS256', 'EdDSA']);
    expect(tlsCipherPolicy(std)).toBe(std);
  });
});

describe('start-up refusal', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'portcullis-fips-'));
    await writeFile(join(dir, 'api.yaml'), stringify(TEST_OPENAPI));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('portcullis start exits with the key and its line when FIPS is required and absent', async () => {
    const config = join(dir, 'required.yaml');
    await writeFile(
      config,
      stringify({ gateway: { port: 0 }, admin: { port: 0 }, crypto: { fips: 'required' } }),
    );
    const run = await runPortcullis(['start', '--config', config, '--data-dir', join(dir, 'data')]);
    expect(run.code).not.toBe(0);
    expect(run.stderr).toMatch(
      /required\.yaml:\d+:\d+: crypto\.fips: required, but the OpenSSL FIPS provider is not active/,
    );
    expect(run.stderr).not.toMatch(/\n\s+at /); // no stack trace
  }, 60_000);
});

describe('a gateway in FIPS mode (provider reported active through the test hook)', () => {
  let dir: string;
  let fips: Portcullis;
  let standard: Portcullis;
  let ca: string | undefined;

  async function start(name: string, extra: Record<string, unknown>, getFips?: () => number) {
    const config = join(dir, `${name}.yaml`);
    await writeFile(
      config,
      stringify({
        gateway: { port: 0 },
        admin: { port: 0 },
        apis: [
          { name: 'items', basePath: '/v1', openapi: 'api.yaml', upstream: { url: 'http://127.0.0.1:9' } },
        ],
        ...extra,
      }),
    );
    return startPortcullis({
      configFile: config,
      dataDir: join(dir, `data-${name}`),
      logger: createLogger('silent'),
      ...(getFips === undefined ? {} : { getFips }),
    });
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'portcullis-fips-gw-'));
    await writeFile(join(dir, 'api.yaml'), stringify(TEST_OPENAPI));
    fips = await start('fips', { crypto: { fips: 'required' } }, () => 1);
    ca = fips.tls.source === 'development' ? fips.tls.caCertPem : undefined;
  }, 60_000);
  afterAll(async () => {
    await fips.close();
    await rm(dir, { recursive: true, force: true });
  });

  function handshake(url: string, options: ConnectionOptions): Promise<string> {
    const { hostname, port } = new URL(url);
    return new Promise((ok) => {
      const socket = connect(
        { host: hostname, port: Number(port), servername: 'localhost', ca, ...options },
        () => {
          const cipher = socket.getCipher().name;
          socket.end();
          ok(cipher);
        },
      );
      socket.on('error', () => {
        ok('refused');
      });
    });
  }

  it('reports the mode in /readyz', async () => {
    const agent = new Agent({ connect: { ca } });
    try {
      const res = await request(`${fips.adminUrl}/readyz`, { dispatcher: agent });
      const body = JSON.parse(await res.body.text()) as { checks: Record<string, { detail?: string }> };
      expect(body.checks.crypto?.detail).toBe('fips=fips (crypto.fips: required)');
    } finally {
      await agent.close();
    }
  });

  it('negotiates AES-GCM on P-256/P-384 only; refuses ChaCha20 and X25519-only clients', async () => {
    expect(
      await handshake(fips.gatewayUrl, {
        maxVersion: 'TLSv1.2',
        ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256',
      }),
    ).toMatch(/AES128-GCM/);
    expect(
      await handshake(fips.gatewayUrl, { minVersion: 'TLSv1.3', ciphers: 'TLS_AES_256_GCM_SHA384' }),
    ).toBe('TLS_AES_256_GCM_SHA384');
    expect(
      await handshake(fips.gatewayUrl, {
        maxVersion: 'TLSv1.2',
        ciphers: 'ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305',
      }),
    ).toBe('refused');
    expect(
      await handshake(fips.gatewayUrl, { minVersion: 'TLSv1.3', ciphers: 'TLS_CHACHA20_POLY1305_SHA256' }),
    ).toBe('refused');
    expect(await handshake(fips.gatewayUrl, { ecdhCurve: 'X25519' })).toBe('refused');
  });

  it('offers ES256 and PS256 only in discovery', async () => {
    const agent = new Agent({ connect: { ca } });
    try {
      const res = await request(`${fips.gatewayUrl}/.well-known/openid-configuration`, { dispatcher: agent });
      const d = JSON.parse(await res.body.text()) as Record<string, unknown>;
      let seen = 0;
      for (const [key, value] of Object.entries(d)) {
        if (!key.endsWith('alg_values_supported')) continue;
        for (const alg of value as string[]) {
          expect(['ES256', 'PS256']).toContain(alg);
          seen++;
        }
      }
      expect(seen).toBeGreaterThan(0);
    } finally {
      await agent.close();
    }
  });

  it('refuses to start with an EdDSA signing key', async () => {
    await expect(
      start('eddsa', { crypto: { fips: 'required' }, oauth: { signing: { alg: 'EdDSA' } } }, () => 1),
    ).rejects.toThrow(/eddsa\.yaml:\d+:\d+: oauth\.signing\.alg: EdDSA is not allowed in FIPS mode/);
  });

  it('in standard mode the same ChaCha20 and X25519 clients connect (after the FIPS gateway closed)', async () => {
    await fips.close();
    standard = await start('standard', {});
    try {
      ca = standard.tls.source === 'development' ? standard.tls.caCertPem : undefined;
      expect(
        await handshake(standard.gatewayUrl, {
          maxVersion: 'TLSv1.2',
          ciphers: 'ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305',
        }),
      ).toMatch(/CHACHA20/);
      expect(await handshake(standard.gatewayUrl, { ecdhCurve: 'X25519' })).not.toBe('refused');
    } finally {
      await standard.close();
    }
  }, 60_000);
});
