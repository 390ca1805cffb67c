import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, formatIssue, loadConfig, maskSecrets, parseConfig } from './load.ts';
import type { ConfigIssue, LoadedConfig } from './load.ts';

const FILE = '/etc/portcullis/portcullis.yaml';
const NOW = new Date('2025-06-01T12:00:00Z');

function parse(text: string, now: Date = NOW): LoadedConfig {
  return parseConfig(text, FILE, now);
}

/** The issues of a configuration that must be refused (fails the test if it is accepted). */
function issuesOf(text: string, now: Date = NOW): readonly ConfigIssue[] {
  try {
    parse(text, now);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).issues;
  }
  throw new Error('configuration was accepted but should have been refused');
}

/** The single issue of a refused configuration. */
function issueOf(text: string, now: Date = NOW): ConfigIssue {
  const issues = issuesOf(text, now);
  expect(issues).toHaveLength(1);
  return issues[0]!;
}

/** Lines joined with newlines, so line numbers in the tests are easy to count. */
const yaml = (...lines: string[]) => lines.join('\n') + '\n';

function exception(control: string, expires: string, id = 'ex-1'): string[] {
  return [
    `  - id: ${id}`,
    `    control: ${control}`,
    '    scope: the listed setting',
    '    rationale: needed by a legacy integration that cannot change this year',
    '    compensatingControls: [network allowlist, extra monitoring]',
    '    owner: platform-team',
    '    approver: ciso',
    `    expires: "${expires}"`,
  ];
}

const API = (name: string, basePath: string, url: string) => [
  `  - name: ${name}`,
  '    openapi: api.yaml',
  `    basePath: ${basePath}`,
  '    upstream:',
  `      url: ${url}`,
];

describe('parseConfig: secure defaults', () => {
  it.each([
    ['an empty file', ''],
    ['a file with only comments', '# nothing here\n'],
    ['an explicit null document', '~\n'],
  ])('%s gives every secure default', (_label, text) => {
    const { config, warnings } = parse(text);
    expect(warnings).toEqual([]);
    expect(config.version).toBe(1);
    expect(config.gateway).toEqual({
      host: '127.0.0.1',
      port: 8443,
      publicUrl: 'https://localhost:8443',
      http2: true,
      tls: {},
      timeouts: { headersMs: 10_000, requestMs: 30_000, keepAliveMs: 5_000 },
      limits: { bodyBytes: 1024 * 1024, headerBytes: 16 * 1024, urlBytes: 8 * 1024, jsonValues: 100_000 },
      trustedProxies: [],
      correlationHeader: 'x-request-id',
      shutdownGraceMs: 10_000,
      connections: {
        max: 4096,
        perIp: 256,
        handshakeTimeoutMs: 10_000,
        http2MaxConcurrentStreams: 100,
        http2MaxResets: 100,
      },
      hostAliases: [],
      loadShedding: {
        maxEventLoopDelayMs: 1000,
        maxHeapUsedPercent: 90,
        maxRssBytes: 1536 * 1024 * 1024,
        retryAfterSeconds: 10,
      },
      apiKeys: { environment: 'live' },
      identity: { header: 'x-portcullis-identity', ttlSeconds: 30 },
    });
    expect(config.gateway.redirectHttp).toBeUndefined();
    expect(config.gateway.mtls).toBeUndefined();
    expect(config.admin).toEqual({
      enabled: true,
      host: '127.0.0.1',
      port: 9443,
      rateLimit: { points: 120, seconds: 60 },
    });
    expect(config.store).toEqual({
      url: 'sqlite:portcullis.db',
      connectTimeoutMs: 1500,
      queryTimeoutMs: 1500,
    });
    expect(config.logging).toEqual({ level: 'info', accessLog: true });
    expect(config.apis).toEqual([]);
    expect(config.exceptions).toEqual([]);
    expect(config.demoUpstream).toBeUndefined();
  });

  it('fills defaults inside an API entry and keeps what the file says', () => {
    const { config } = parse(
      yaml('gateway:', '  port: 9000', 'apis:', ...API('a', '/v1', 'https://up.example')),
    );
    expect(config.gateway.port).toBe(9000);
    expect(config.gateway.host).toBe('127.0.0.1');
    expect(config.apis[0]?.upstream).toEqual({
      url: 'https://up.example',
      timeouts: { connectMs: 2_000, headersMs: 10_000, bodyMs: 30_000 },
      connections: 128,
      circuitBreaker: {
        errorThresholdPercentage: 50,
        volumeThreshold: 20,
        windowMs: 10_000,
        resetMs: 30_000,
      },
      retries: { max: 2, baseDelayMs: 50, maxDelayMs: 1000 },
    });
    expect(config.apis[0]?.cors).toBeUndefined();
  });

  it('resolves files against the configuration directory and hashes the text', () => {
    const loaded = parse('');
    expect(loaded.file).toBe(FILE);
    expect(loaded.dir).toBe('/etc/portcullis');
    expect(loaded.resolvePath('api.yaml')).toBe('/etc/portcullis/api.yaml');
    expect(loaded.resolvePath('../x/api.yaml')).toBe('/etc/x/api.yaml');
    expect(loaded.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(parse('# other\n').sha256).not.toBe(loaded.sha256);
    expect(loaded.hasException('admin-loopback')).toBe(false);
  });
});

describe('parseConfig: schema errors name the key path and the line', () => {
  it('an unknown key (a typo)', () => {
    const i = issueOf(yaml('# comment', 'gateway:', '  prot: 8443'));
    expect(i).toMatchObject({ path: 'gateway.prot', line: 3, column: 3 });
    expect(i.message).toMatch(/unknown key/);
  });

  it('an unknown key whose value is a block points at the key, not the block', () => {
    const i = issueOf(yaml('version: 1', 'gatway:', '  port: 8443'));
    expect(i).toMatchObject({ path: 'gatway', line: 2, column: 1 });
  });

  it('a wrong type', () => {
    const i = issueOf(yaml('gateway:', '  http2: "yes"'));
    expect(i).toMatchObject({ path: 'gateway.http2', line: 2 });
    expect(i.message).toMatch(/expected boolean/);
  });

  it('a value out of bounds', () => {
    const i = issueOf(yaml('gateway:', '  timeouts:', '    headersMs: 999999'));
    expect(i).toMatchObject({ path: 'gateway.timeouts.headersMs', line: 3 });
    expect(i.message).toMatch(/<= 60000/);
    const low = issueOf(yaml('admin:', '  port: -1'));
    expect(low).toMatchObject({ path: 'admin.port', line: 2 });
    expect(low.message).toMatch(/>= 0/);
  });

  it('a value of the wrong form says what form is expected', () => {
    const i = issueOf(yaml('gateway:', '  publicUrl: http://localhost:8443'));
    expect(i).toMatchObject({ path: 'gateway.publicUrl', line: 2 });
    expect(i.message).toContain('expected to match ^https://');
    const base = issueOf(yaml('apis:', ...API('a', '/api', 'https://up.example')));
    expect(base).toMatchObject({ path: 'apis[0].basePath', line: 4 });
  });

  it('a bad enum value gives one "expected one of" line, not one per branch', () => {
    const i = issueOf(yaml('logging:', '  level: loud'));
    expect(i).toMatchObject({ path: 'logging.level', line: 2 });
    expect(i.message).toBe('expected one of "fatal", "error", "warn", "info", "debug", "trace", "silent"');
    const control = issueOf(yaml('exceptions:', ...exception('admin-lookback', '2030-01-01')));
    expect(control).toMatchObject({ path: 'exceptions[0].control', line: 3 });
    expect(control.message).toMatch(/^expected one of "admin-loopback", "request-limits"/);
  });

  it('a missing required key in an apis entry', () => {
    const i = issueOf(
      yaml('apis:', '  - name: a', '    basePath: /v1', '    upstream:', '      url: https://up.example'),
    );
    expect(i).toMatchObject({ path: 'apis[0]', line: 2 });
    expect(i.message).toBe('missing required key "openapi"');
  });

  it('a bad date in an exception', () => {
    const i = issueOf(yaml('exceptions:', ...exception('admin-loopback', '31/12/2030')));
    expect(i).toMatchObject({ path: 'exceptions[0].expires', line: 9 });
    expect(i.message).toMatch(/expected a date/);
  });

  it('a top level that is not a mapping', () => {
    expect(issueOf('- a\n')).toMatchObject({ path: '', line: 1, message: 'expected object' });
  });

  it('reports every problem at once', () => {
    const issues = issuesOf(
      yaml('gateway:', '  prot: 1', 'admin:', '  port: 70000', 'logging:', '  level: x', 'store: {}'),
    );
    expect(issues.map((i) => [i.path, i.line])).toEqual([
      ['gateway.prot', 2],
      ['admin.port', 4],
      ['logging.level', 6],
    ]);
  });

  it('formats an issue as file:line:column: path: message', () => {
    const i = issueOf(yaml('gateway:', '  prot: 1'));
    expect(formatIssue(FILE, i)).toBe(`${FILE}:2:3: gateway.prot: ${i.message}`);
    expect(formatIssue(FILE, { path: '', message: 'm' })).toBe(`${FILE}: (top level): m`);
  });
});

describe('parseConfig: YAML errors', () => {
  it('a syntax error names its line', () => {
    const issues = issuesOf(yaml('gateway:', '  port: 1', '  tls: [unclosed', 'admin:', '  port: 2'));
    expect(issues.length).toBeGreaterThan(0);
    expect(issues[0]!.message).toMatch(/^YAML: /);
    expect(issues[0]!.line).toBeGreaterThanOrEqual(3);
    expect(issues[0]!.line).toBeLessThanOrEqual(4);
  });

  it('a duplicate key names the key path and the line of the second one', () => {
    const i = issueOf(yaml('gateway:', '  port: 1', '  host: 127.0.0.1', '  port: 2'));
    expect(i).toMatchObject({ path: 'gateway.port', line: 4, column: 3 });
    expect(i.message).toMatch(/unique/);
  });

  it('the error object lists the issues in its message', () => {
    expect(() => parse(yaml('gateway:', '  port: 1', '  port: 2'))).toThrow(
      /portcullis\.yaml:3:3: gateway\.port: YAML/,
    );
  });
});

describe('parseConfig: semantic rules', () => {
  it('TLS: certFile without keyFile is refused; both or neither are accepted', () => {
    const i = issueOf(yaml('gateway:', '  tls:', '    certFile: cert.pem'));
    expect(i).toMatchObject({ path: 'gateway.tls', line: 2 });
    expect(i.message).toMatch(/both certFile and keyFile/);
    expect(issueOf(yaml('gateway:', '  tls:', '    keyFile: key.pem')).path).toBe('gateway.tls');
    const both = parse(yaml('gateway:', '  tls:', '    certFile: cert.pem', '    keyFile: key.pem'));
    expect(both.config.gateway.tls).toEqual({ certFile: 'cert.pem', keyFile: 'key.pem' });
  });

  describe('admin listener off loopback', () => {
    const offLoopback = ['admin:', '  host: 0.0.0.0'];

    it('is refused without an exception', () => {
      const i = issueOf(yaml(...offLoopback));
      expect(i).toMatchObject({ path: 'admin.host', line: 2 });
      expect(i.message).toContain('"admin-loopback"');
    });

    it('is accepted with an unexpired admin-loopback exception (through the end of its expiry day)', () => {
      const loaded = parse(yaml(...offLoopback, 'exceptions:', ...exception('admin-loopback', '2025-12-31')));
      expect(loaded.config.admin.host).toBe('0.0.0.0');
      expect(loaded.hasException('admin-loopback')).toBe(true);
      expect(loaded.hasException('request-limits')).toBe(false);
      expect(loaded.warnings).toEqual([]);
      const lastDay = parse(
        yaml(...offLoopback, 'exceptions:', ...exception('admin-loopback', '2025-06-01')),
        new Date('2025-06-01T23:59:00Z'),
      );
      expect(lastDay.hasException('admin-loopback')).toBe(true);
      expect(lastDay.warnings[0]?.message).toMatch(/expires on 2025-06-01/);
    });

    it('is refused again once the exception has expired, and says it expired', () => {
      const text = yaml(...offLoopback, 'exceptions:', ...exception('admin-loopback', '2025-05-31'));
      const i = issueOf(text, new Date('2025-06-01T00:00:01Z'));
      expect(i.path).toBe('admin.host');
      expect(i.message).toMatch(/exception "ex-1" expired on 2025-05-31/);
    });

    it('an expired exception that nothing needs loads with a warning that it expired', () => {
      const loaded = parse(yaml('exceptions:', ...exception('admin-loopback', '2025-01-31')));
      expect(loaded.hasException('admin-loopback')).toBe(false);
      expect(loaded.warnings).toEqual([
        {
          path: 'exceptions[0].expires',
          line: 9,
          column: 5,
          message: 'exception "ex-1" expired on 2025-01-31 and no longer applies',
        },
      ]);
    });

    it('an exception for another control does not help', () => {
      const i = issueOf(yaml(...offLoopback, 'exceptions:', ...exception('request-limits', '2030-01-01')));
      expect(i.path).toBe('admin.host');
    });

    it('loopback hosts need no exception, nor does a disabled admin listener', () => {
      expect(parse(yaml('admin:', '  host: localhost')).config.admin.host).toBe('localhost');
      expect(parse(yaml('admin:', '  host: "::1"')).config.admin.host).toBe('::1');
      expect(parse(yaml('admin:', '  host: 127.0.0.2')).config.admin.host).toBe('127.0.0.2');
      expect(parse(yaml('admin:', '  enabled: false', '  host: 0.0.0.0')).config.admin.enabled).toBe(false);
    });
  });

  it('limits above the defaults need a request-limits exception; at the default they do not', () => {
    for (const [key, above] of [
      ['bodyBytes', 1024 * 1024 + 1],
      ['headerBytes', 16 * 1024 + 1],
      ['urlBytes', 8 * 1024 + 1],
    ] as const) {
      const i = issueOf(yaml('gateway:', '  limits:', `    ${key}: ${String(above)}`));
      expect(i).toMatchObject({ path: `gateway.limits.${key}`, line: 3 });
      expect(i.message).toContain('"request-limits"');
    }
    expect(
      parse(yaml('gateway:', '  limits:', '    bodyBytes: 1048576')).config.gateway.limits.bodyBytes,
    ).toBe(1048576);
    expect(parse(yaml('gateway:', '  limits:', '    bodyBytes: 1000')).config.gateway.limits.bodyBytes).toBe(
      1000,
    );
    const raised = parse(
      yaml(
        'gateway:',
        '  limits:',
        '    bodyBytes: 2097152',
        'exceptions:',
        ...exception('request-limits', '2030-01-01'),
      ),
    );
    expect(raised.config.gateway.limits.bodyBytes).toBe(2097152);
  });

  it('plain HTTP to a non-loopback upstream needs an upstream-plaintext exception; loopback is fine', () => {
    const i = issueOf(yaml('apis:', ...API('a', '/v1', 'http://upstream.internal:8080')));
    expect(i).toMatchObject({ path: 'apis[0].upstream.url', line: 6 });
    expect(i.message).toContain('"upstream-plaintext"');
    for (const url of ['http://127.0.0.1:4010', 'http://localhost:4010', 'http://[::1]:4010']) {
      expect(parse(yaml('apis:', ...API('a', '/v1', url))).config.apis[0]?.upstream.url).toBe(url);
    }
    expect(parse(yaml('apis:', ...API('a', '/v1', 'https://upstream.internal'))).config.apis).toHaveLength(1);
    const excepted = parse(
      yaml(
        'apis:',
        ...API('a', '/v1', 'http://upstream.internal:8080'),
        'exceptions:',
        ...exception('upstream-plaintext', '2030-01-01'),
      ),
    );
    expect(excepted.config.apis[0]?.upstream.url).toBe('http://upstream.internal:8080');
  });

  it('credentialed CORS needs a cors-credentials exception', () => {
    const cors = ['    cors:', '      allowOrigins: [https://app.example]', '      allowCredentials: true'];
    const i = issueOf(yaml('apis:', ...API('a', '/v1', 'https://up.example'), ...cors));
    expect(i).toMatchObject({ path: 'apis[0].cors.allowCredentials', line: 9 });
    expect(i.message).toContain('"cors-credentials"');
    const ok = parse(
      yaml(
        'apis:',
        ...API('a', '/v1', 'https://up.example'),
        ...cors,
        'exceptions:',
        ...exception('cors-credentials', '2030-01-01'),
      ),
    );
    expect(ok.config.apis[0]?.cors?.allowCredentials).toBe(true);
    const uncredentialed = parse(
      yaml(
        'apis:',
        ...API('a', '/v1', 'https://up.example'),
        '    cors:',
        '      allowOrigins: [https://app.example]',
      ),
    );
    expect(uncredentialed.config.apis[0]?.cors?.allowCredentials).toBe(false);
  });

  it('duplicate API names and base paths are refused', () => {
    const issues = issuesOf(
      yaml('apis:', ...API('a', '/v1', 'https://up.example'), ...API('a', '/v1', 'https://other.example')),
    );
    expect(issues.map((i) => [i.path, i.line])).toEqual([
      ['apis[1].name', 7],
      ['apis[1].basePath', 9],
    ]);
    expect(issues[0]!.message).toBe('duplicate API name "a"');
    expect(issues[1]!.message).toBe('base path /v1 is used twice');
    expect(
      parse(yaml('apis:', ...API('a', '/v1', 'https://up.example'), ...API('b', '/v2', 'https://up.example')))
        .config.apis,
    ).toHaveLength(2);
  });

  it('an upstream URL carrying credentials is refused', () => {
    const i = issueOf(yaml('apis:', ...API('a', '/v1', 'https://user:pw@up.example')));
    expect(i.path).toBe('apis[0].upstream.url');
  });

  it('port clashes between listeners are refused; port 0 never clashes', () => {
    const i = issueOf(yaml('gateway:', '  port: 9000', 'admin:', '  port: 9000'));
    expect(i).toMatchObject({ path: 'admin.port', line: 4 });
    expect(i.message).toBe('port 9000 is already used by gateway.port');
    const demo = issueOf(yaml('gateway:', '  port: 4010', 'demoUpstream:', '  port: 4010'));
    expect(demo.path).toBe('demoUpstream.port');
    const redirect = issueOf(yaml('gateway:', '  redirectHttp:', '    port: 9443'));
    expect(redirect.path).toBe('gateway.redirectHttp.port');
    expect(parse(yaml('gateway:', '  port: 0', 'admin:', '  port: 0')).config.admin.port).toBe(0);
    expect(parse(yaml('gateway:', '  port: 9443', 'admin:', '  enabled: false')).config.gateway.port).toBe(
      9443,
    );
  });

  it('trusted proxies must be valid addresses or CIDR ranges', () => {
    const issues = issuesOf(
      yaml(
        'gateway:',
        '  trustedProxies:',
        '    - 10.0.0.0/8',
        '    - 10.0.0.0/33',
        '    - 999.1.1.1',
        '    - "fd00::/129"',
      ),
    );
    expect(issues.map((i) => [i.path, i.line])).toEqual([
      ['gateway.trustedProxies[1]', 4],
      ['gateway.trustedProxies[2]', 5],
      ['gateway.trustedProxies[3]', 6],
    ]);
    const ok = parse(yaml('gateway:', '  trustedProxies: [10.0.0.0/8, 192.168.1.1, "fd00::/8", "::1"]'));
    expect(ok.config.gateway.trustedProxies).toEqual(['10.0.0.0/8', '192.168.1.1', 'fd00::/8', '::1']);
  });

  it('duplicate exception ids are refused', () => {
    const i = issueOf(
      yaml(
        'exceptions:',
        ...exception('admin-loopback', '2030-01-01', 'same'),
        ...exception('request-limits', '2030-01-01', 'same'),
      ),
    );
    expect(i).toMatchObject({ path: 'exceptions[1].id', line: 10 });
  });
});

describe('distributed mode', () => {
  const PG = 'postgres://postgres@127.0.0.1:5432/test';
  const shared = `store:\n  url: ${PG}\nredis:\n  url: redis://127.0.0.1:6379\nrateLimits:\n  backend: redis\nidempotency:\n  backend: redis\n`;

  it('accepts cluster.nodes above 1 on PostgreSQL with the Redis backends', () => {
    expect(parse(`cluster:\n  nodes: 3\n${shared}`).config.cluster.nodes).toBe(3);
    expect(parse('').config.cluster.nodes).toBe(1);
  });

  it('refuses cluster.nodes above 1 with per-process state, naming each key', () => {
    const issues = issuesOf('cluster:\n  nodes: 3\n');
    expect(issues.map((i) => i.path).sort()).toEqual(
      ['idempotency.backend', 'rateLimits.backend', 'redis', 'store.url'].sort(),
    );
    expect(issues.find((i) => i.path === 'rateLimits.backend')?.message).toContain('3 times each limit');
    const sqlite = issueOf(`cluster:\n  nodes: 2\n${shared.replace(`url: ${PG}`, 'url: sqlite:x.db')}`);
    expect(sqlite).toMatchObject({ path: 'store.url', line: 4 });
  });

  it('takes connection URLs from ${env:NAME}, and names an unset variable', () => {
    const env = { PC_REDIS_PASSWORD: 's3cr3t', PC_PG_URL: PG };
    const text =
      'store:\n  url: ${env:PC_PG_URL}\nredis:\n  url: redis://:${env:PC_REDIS_PASSWORD}@127.0.0.1:6379\n';
    const loaded = parseConfig(text, FILE, NOW, env);
    expect(loaded.config.store.url).toBe(PG);
    expect(loaded.config.redis?.url).toBe('redis://:s3cr3t@127.0.0.1:6379');
    expect(JSON.stringify(maskSecrets(loaded.config))).not.toContain('s3cr3t');
    try {
      parseConfig(text, FILE, NOW, { PC_PG_URL: PG });
      expect.unreachable();
    } catch (err) {
      expect((err as ConfigError).issues).toEqual([
        expect.objectContaining({
          path: 'redis.url',
          line: 4,
          message: 'environment variable PC_REDIS_PASSWORD is not set',
        }),
      ]);
    }
    // Only connection URLs, only that form.
    expect(issueOf('redis:\n  url: redis://${PC_X}@h:1\n')).toMatchObject({ path: 'redis.url' });
    expect(issuesOf('gateway:\n  correlationHeader: x-${env:A}\n').length).toBeGreaterThan(0);
  });
});

describe('loadConfig', () => {
  it('reads a file, and names an unreadable one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'portcullis-load-'));
    try {
      const file = join(dir, 'p.yaml');
      await writeFile(file, yaml('gateway:', '  port: 1234'));
      const loaded = await loadConfig(file, NOW);
      expect(loaded.config.gateway.port).toBe(1234);
      expect(loaded.dir).toBe(dir);
      const missing = join(dir, 'missing.yaml');
      await expect(loadConfig(missing)).rejects.toMatchObject({
        name: 'ConfigError',
        file: missing,
        issues: [{ path: '', message: 'cannot read the file (ENOENT)' }],
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('maskSecrets', () => {
  it('masks a password inside a URL and secret-named keys, and copies the rest', () => {
    const input = {
      store: { url: 'postgres://portcullis:s3cr3t-pw@db.internal:5432/portcullis?sslmode=verify-full' },
      keys: { clientSecret: 'abc', apiKey: 'k', pepper: 'p', privateKey: 'x', nested: [{ password: 'pw' }] },
      plain: { url: 'https://up.example/path', count: 3, user: 'postgres://only-user@db/x' },
    };
    const masked = maskSecrets(input);
    expect(masked).toEqual({
      store: { url: 'postgres://portcullis:****@db.internal:5432/portcullis?sslmode=verify-full' },
      keys: {
        clientSecret: '****',
        apiKey: '****',
        pepper: '****',
        privateKey: '****',
        nested: [{ password: '****' }],
      },
      plain: { url: 'https://up.example/path', count: 3, user: 'postgres://only-user@db/x' },
    });
    expect(JSON.stringify(masked)).not.toContain('s3cr3t-pw');
    // A copy: the input is untouched.
    expect(input.store.url).toContain('s3cr3t-pw');
  });
});
