import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from './load.ts';
import type { ConfigIssue } from './load.ts';

const FILE = '/etc/portcullis/portcullis.yaml';
const NOW = new Date('2025-06-01T12:00:00Z');

function issuesOf(text: string): readonly ConfigIssue[] {
  try {
    parseConfig(text, FILE, NOW, {});
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).issues;
  }
  throw new Error('configuration was accepted but should have been refused');
}

const accepted = (text: string) => expect(() => parseConfig(text, FILE, NOW, {})).not.toThrow();

const EXCEPTION = (expires: string) =>
  [
    'exceptions:',
    '  - id: legacy-db',
    '    control: internal-plaintext',
    '    scope: the reporting database on a private VLAN',
    '    rationale: the managed database offers no TLS until its migration in Q3',
    '    compensatingControls: [dedicated VLAN, IPsec between the hosts]',
    '    owner: platform-team',
    '    approver: ciso',
    `    expires: "${expires}"`,
  ].join('\n') + '\n';

const store = (url: string) => `store:\n  url: ${url}\n`;
const redis = (url: string) => `redis:\n  url: ${url}\n`;

describe('internal links are encrypted', () => {
  it('accepts loopback and Unix-socket links without TLS', () => {
    accepted(store('postgres://postgres@127.0.0.1:5432/test'));
    accepted(store('postgres://postgres@localhost/test'));
    accepted(store('postgres://postgres@[::1]:5432/test'));
    accepted(store('postgres://postgres@localhost/test?host=/var/run/postgresql'));
    accepted(redis('redis://127.0.0.1:6379'));
    accepted(redis('redis://localhost:6379/2'));
  });

  it('accepts verified TLS to other hosts', () => {
    accepted(store('postgres://pc@db.internal:5432/pc?sslmode=verify-full'));
    accepted(store('postgresql://pc@10.0.0.5/pc?sslmode=verify-full&sslrootcert=/etc/pc/ca.pem'));
    accepted(redis('rediss://cache.internal:6380'));
  });

  it.each([
    ['no sslmode', 'postgres://pc@db.internal:5432/pc', 'found no sslmode'],
    ['sslmode=require (no name check)', 'postgres://pc@db.internal/pc?sslmode=require', 'sslmode=require'],
    ['sslmode=verify-ca', 'postgres://pc@10.0.0.5/pc?sslmode=verify-ca', 'sslmode=verify-ca'],
    ['sslmode=disable', 'postgres://pc@db.internal/pc?sslmode=disable', 'sslmode=disable'],
    ['a remote host parameter', 'postgres://pc@127.0.0.1/pc?host=db.internal', 'found no sslmode'],
  ])('refuses a PostgreSQL store off loopback with %s, naming key and line', (_, url, found) => {
    const issues = issuesOf(`# store\n${store(url)}`);
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatchObject({ path: 'store.url', line: 3 });
    expect(issues[0]?.message).toContain('sslmode=verify-full');
    expect(issues[0]?.message).toContain(found);
    expect(issues[0]?.message).toContain('"internal-plaintext"');
  });

  it.each([
    ['redis:// to another host', 'redis://cache.internal:6379'],
    ['redis:// to a private address', 'redis://:pw@10.0.0.7:6379'],
    ['TLS options in a rediss:// URL', 'rediss://cache.internal:6380?rejectUnauthorized=false'],
  ])('refuses %s', (_, url) => {
    const issues = issuesOf(redis(url));
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatchObject({ path: 'redis.url', line: 2 });
    expect(issues[0]?.message).toContain('"internal-plaintext"');
    expect(issues[0]?.message).not.toContain(':pw@');
  });

  it('a documented exception allows plaintext; once expired it no longer does', () => {
    const text = store('postgres://pc@db.internal/pc') + redis('redis://cache.internal:6379');
    const loaded = parseConfig(text + EXCEPTION('2025-12-31'), FILE, NOW, {});
    expect(loaded.hasException('internal-plaintext')).toBe(true);
    const issues = issuesOf(text + EXCEPTION('2025-05-01'));
    expect(issues.map((i) => i.path).sort()).toEqual(['redis.url', 'store.url']);
    expect(issues[0]?.message).toContain('expired on 2025-05-01');
  });
});
