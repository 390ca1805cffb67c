import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, maskSecrets, parseConfig } from './load.ts';
import type { ConfigIssue, LoadedConfig } from './load.ts';

const NOW = new Date('2025-06-01T12:00:00Z');
let dir = '';
let file = '';

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'portcullis-refs-'));
  file = join(dir, 'portcullis.yaml');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const parse = (text: string, env: NodeJS.ProcessEnv = {}): LoadedConfig => parseConfig(text, file, NOW, env);

function issuesOf(text: string, env: NodeJS.ProcessEnv = {}): readonly ConfigIssue[] {
  try {
    parse(text, env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).issues;
  }
  throw new Error('configuration was accepted but should have been refused');
}

async function secretFile(name: string, content: string, mode = 0o600): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, content);
  await chmod(path, mode);
  return path;
}

const WEBHOOK_SECRET = 'whsec-0123456789abcdef0123456789abcdef';
const FED_SECRET = 'fed-secret-0123456789';

/** Each secret-bearing key, with a YAML document placing `value` on line `line`. */
const KEYS: {
  key: string;
  line: number;
  doc: (value: string) => string;
  read: (l: LoadedConfig) => unknown;
}[] = [
  {
    key: 'store.url',
    line: 2,
    doc: (v) => `store:\n  url: ${v}\n`,
    read: (l) => l.config.store.url,
  },
  {
    key: 'redis.url',
    line: 2,
    doc: (v) => `redis:\n  url: ${v}\n`,
    read: (l) => l.config.redis?.url,
  },
  {
    key: 'oauth.federation.clientSecret',
    line: 6,
    doc: (v) =>
      [
        'oauth:',
        '  federation:',
        '    name: Corp',
        '    issuer: https://idp.example',
        '    clientId: portcullis',
        `    clientSecret: ${v}`,
      ].join('\n') + '\n',
    read: (l) => l.config.oauth.federation?.clientSecret,
  },
  {
    key: 'alerts.webhook.secret',
    line: 4,
    doc: (v) =>
      ['alerts:', '  webhook:', '    url: https://hooks.example/a', `    secret: ${v}`].join('\n') + '\n',
    read: (l) => l.config.alerts.webhook?.secret,
  },
];

const VALUE: Record<string, string> = {
  'store.url': 'postgres://pc:pw-from-secret@127.0.0.1:5432/pc',
  'redis.url': 'redis://:pw-from-secret@127.0.0.1:6379',
  'oauth.federation.clientSecret': FED_SECRET,
  'alerts.webhook.secret': WEBHOOK_SECRET,
};

describe('secret references in secret-bearing keys', () => {
  describe.each(KEYS)('$key', ({ key, line, doc, read }) => {
    const value = VALUE[key] as string;

    it('takes the value from ${env:NAME}', () => {
      const loaded = parse(doc('${env:PC_SECRET}'), { PC_SECRET: value });
      expect(read(loaded)).toBe(value);
    });

    it('takes the value from ${file:PATH}, trimmed, relative to the configuration file', async () => {
      await secretFile(`${key}.secret`, `  ${value}\n\n`);
      expect(read(parse(doc(`\${file:${key}.secret}`)))).toBe(value);
      const abs = await secretFile(`${key}.abs`, value, 0o640);
      expect(read(parse(doc(`\${file:${abs}}`)))).toBe(value);
    });

    it('refuses an unset variable, naming the key and its line', () => {
      expect(issuesOf(doc('${env:PC_MISSING}'))).toEqual([
        {
          path: key,
          line,
          column: expect.any(Number) as number,
          message: 'environment variable PC_MISSING is not set',
        },
      ]);
    });

    it('refuses a world-readable file, naming the key, its line and the file, never the secret', async () => {
      const path = await secretFile(`${key}.open`, value, 0o644);
      const issues = issuesOf(doc(`\${file:${path}}`));
      expect(issues).toHaveLength(1);
      expect(issues[0]).toMatchObject({ path: key, line });
      expect(issues[0]?.message).toContain(`${path} is readable by every user`);
      expect(JSON.stringify(issues)).not.toContain(value);
    });

    it('refuses a missing or empty file, and another ${…} form', async () => {
      expect(issuesOf(doc('${file:nope.secret}'))[0]).toMatchObject({ path: key, line });
      expect(issuesOf(doc('${file:nope.secret}'))[0]?.message).toContain('(ENOENT)');
      await secretFile(`${key}.empty`, '  \n');
      expect(issuesOf(doc(`\${file:${key}.empty}`))[0]?.message).toMatch(/is empty$/);
      expect(issuesOf(doc('${vault:x/y}'))[0]).toMatchObject({
        path: key,
        line,
        message: 'only ${env:NAME} and ${file:PATH} references are supported here',
      });
    });
  });

  it('inserts a reference inside a URL, and masks the result', async () => {
    await secretFile('pg.pw', 'file-pw-123\n');
    const loaded = parse('store:\n  url: postgres://pc:${file:pg.pw}@127.0.0.1:5432/pc\n');
    expect(loaded.config.store.url).toBe('postgres://pc:file-pw-123@127.0.0.1:5432/pc');
    expect(JSON.stringify(maskSecrets(loaded.config))).not.toContain('file-pw-123');
  });

  it('leaves keys that are not secret-bearing alone (a reference there is refused by the schema)', async () => {
    await secretFile('hdr', 'x-corr');
    expect(issuesOf('gateway:\n  correlationHeader: ${file:hdr}\n')[0]).toMatchObject({
      path: 'gateway.correlationHeader',
    });
  });
});
