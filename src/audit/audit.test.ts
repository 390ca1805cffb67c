import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { testBackends } from '../oauth/test-backends.ts';
import type { Store } from '../store/index.ts';
import { es256Signer, es256Verifier, verifyChain } from './chain.ts';
import type { AuditRecord } from './chain.ts';
import { AUDIT_CATEGORIES, AUDIT_FIELDS, buildAuditEvent, CHAIN_FIELDS } from './event.ts';
import type { AuditEventInput } from './event.ts';
import { AuditLog, SpoolOverflowError } from './log.ts';
import { looksLikeCredential, REDACTED } from './redact.ts';
import { fileCheckpointSigner } from './signer.ts';
import { fileSink, readFileLog } from './sinks/file.ts';
import { queryStoreLog, readStoreLog, storeSink } from './sinks/store.ts';
import { stdoutSink } from './sinks/stdout.ts';
import type { ForwardSink } from './sinks/types.ts';

/** A PEM private-key header, assembled so the source holds no key-shaped block (secret scanners). */
const PEM_PRIVATE_KEY_HEADER = ['-----BEGIN', 'PRIVATE', 'KEY-----'].join(' ');

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const backends = testBackends();
const tmp = mkdtempSync(join(tmpdir(), 'portcullis-audit-'));
afterAll(async () => {
  rmSync(tmp, { recursive: true, force: true });
  await backends.cleanup();
});

let dirs = 0;
function freshDir(): string {
  const d = join(tmp, `d${String(++dirs)}`);
  return d;
}

/** Secrets the tests hand to the audit API in every plausible wrong place. */
const SECRETS = [
  'eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.c2lnbmF0dXJlc2lnbmF0dXJl',
  'pcl_Q2hlY2tzdW1tZWRBcGlLZXlWYWx1ZTAxMjM0NTY3ODk',
  'S3cr3tClientSecretValue_9f8e7d6c5b4a3928171605ab',
  'hunter2-Password!',
  'sessioncookie-ZXhhbXBsZVNlc3Npb25JZDEyMzQ1Njc4OQ',
];
const SECRET_PLACES: AuditEventInput[] = [
  {
    'event.category': 'authentication',
    'event.action': 'token-verify',
    'event.outcome': 'failure',
    'event.reason': `Bearer ${SECRETS[0]!}`,
  },
  {
    'event.category': 'authentication',
    'event.action': 'api-key-verify',
    'event.outcome': 'failure',
    'portcullis.api_key_id': SECRETS[1]!,
  },
  {
    'event.category': 'authentication',
    'event.action': 'client-auth',
    'event.outcome': 'failure',
    'event.reason': `client_secret=${SECRETS[2]!}`,
  },
  {
    'event.category': 'admin',
    'event.action': 'login',
    'event.outcome': 'failure',
    'event.reason': `password=${SECRETS[3]!}`,
  },
  {
    'event.category': 'validation',
    'event.action': 'request-validate',
    'event.outcome': 'failure',
    'url.path': `/v1/x?session=${SECRETS[4]!}`,
  },
  {
    'event.category': 'configuration',
    'event.action': 'config-reload',
    'event.outcome': 'success',
    'portcullis.config.summary': `oauth.federation.clientSecret changed to ${SECRETS[2]!}`,
  },
  {
    'event.category': 'authentication',
    'event.action': 'token-verify',
    'event.outcome': 'failure',
    'user.id': SECRETS[0]!,
  },
];

function expectNoSecrets(text: string): void {
  for (const s of SECRETS) expect(text).not.toContain(s);
  // Also no long fragment of one (a partial clean-up would leave a remainder).
  for (const s of SECRETS) expect(text).not.toContain(s.slice(8, 24));
}

/** One event of every kind, with the fields its kind requires. */
const KINDS: Record<string, AuditEventInput> = {
  authentication: {
    'event.category': 'authentication',
    'event.action': 'token-verify',
    'event.outcome': 'failure',
    'event.reason': 'expired',
    'client.ip': '203.0.113.9',
    'portcullis.listener': 'gateway',
    'portcullis.api': 'patients',
    'url.path': '/v1/patients/{id}',
    'http.request.method': 'GET',
    'http.response.status_code': 401,
    'trace.id': 'c0ffee00-0000-4000-8000-000000000001',
  },
  authorization: {
    'event.category': 'authorization',
    'event.action': 'scope-check',
    'event.outcome': 'failure',
    'event.reason': 'insufficient_scope',
    'portcullis.client_id': 'pc_AbCdEfGhIjKlMnOpQrStUv',
    'user.id': 'alice',
    'portcullis.scopes.required': ['patients:write'],
    'portcullis.scopes.granted': ['patients:read'],
    'http.response.status_code': 403,
    'trace.id': 't-2',
  },
  'rate-limit': {
    'event.category': 'rate-limit',
    'event.action': 'limit-exceeded',
    'event.outcome': 'failure',
    'portcullis.rate_limit.key': 'client',
    'portcullis.rate_limit.retry_after': 30,
    'portcullis.client_id': 'pc_1',
    'http.response.status_code': 429,
    'trace.id': 't-3',
  },
  validation: {
    'event.category': 'validation',
    'event.action': 'request-validate',
    'event.outcome': 'failure',
    'event.reason': 'body-schema',
    'http.request.body.bytes': 2048,
    'http.response.status_code': 400,
    'trace.id': 't-4',
  },
  upstream: {
    'event.category': 'upstream',
    'event.action': 'proxy',
    'event.outcome': 'failure',
    'event.reason': 'upstream-timeout',
    'event.duration': 10_000_000_000,
    'http.response.status_code': 504,
    'http.response.body.bytes': 120,
    'trace.id': 't-5',
  },
  configuration: {
    'event.category': 'configuration',
    'event.action': 'config-reload',
    'event.outcome': 'success',
    'portcullis.config.version': 'a'.repeat(64),
    'portcullis.config.summary': 'apis[0].upstream.url changed; 1 API added',
  },
  admin: {
    'event.category': 'admin',
    'event.action': 'client-create',
    'event.outcome': 'success',
    'user.id': 'admin',
    'portcullis.listener': 'cli',
  },
  'key-lifecycle': {
    'event.category': 'key-lifecycle',
    'event.action': 'key-rotate',
    'event.outcome': 'success',
    'portcullis.key.kid': 'Xk3-thumbprint-0123456789abcdefABCDEF_012345',
  },
  'credential-lifecycle': {
    'event.category': 'credential-lifecycle',
    'event.action': 'api-key-revoke',
    'event.outcome': 'success',
    'portcullis.credential.type': 'api-key',
    'portcullis.api_key_id': 'ak_123',
  },
  audit: {
    'event.category': 'audit',
    'event.action': 'spool-overflow',
    'event.outcome': 'failure',
    'portcullis.audit.sink': 'syslog',
    'portcullis.audit.dropped': 3,
  },
  privacy: {
    'event.category': 'privacy',
    'event.action': 'consent-grant',
    'event.outcome': 'success',
    'user.id': 'user-1',
    'portcullis.privacy.choice': 'analytics',
    'portcullis.privacy.source': 'subject',
    'portcullis.privacy.notice': '2026-12',
  },
};

describe('event schema', () => {
  it.each(Object.entries(KINDS))(
    'builds a %s event with its fields, ECS names and no redaction',
    (category, input) => {
      const e = buildAuditEvent(input);
      expect(e['event.category']).toBe(category);
      expect(e['event.kind']).toBe('event');
      expect(e['event.id']).toMatch(/^[0-9a-f-]{36}$/);
      expect(Date.parse(e['@timestamp'])).not.toBeNaN();
      for (const [k, v] of Object.entries(input)) expect(e[k as keyof typeof e]).toEqual(v);
      expect(e['portcullis.redacted']).toBeUndefined();
    },
  );

  it('covers every category', () => {
    expect(Object.keys(KINDS).sort()).toEqual([...AUDIT_CATEGORIES].sort());
  });

  it('refuses unknown fields, wrong types and bad enums (programming errors)', () => {
    const base = KINDS.admin!;
    expect(() => buildAuditEvent({ ...base, authorization: 'x' } as unknown as AuditEventInput)).toThrow(
      /unknown field "authorization"/,
    );
    expect(() =>
      buildAuditEvent({ ...base, 'http.response.status_code': '200' } as unknown as AuditEventInput),
    ).toThrow(TypeError);
    expect(() =>
      buildAuditEvent({ ...base, 'event.category': 'other' } as unknown as AuditEventInput),
    ).toThrow(TypeError);
    expect(() => buildAuditEvent({ ...base, 'event.outcome': 'ok' } as unknown as AuditEventInput)).toThrow(
      TypeError,
    );
    expect(() => buildAuditEvent({ ...base, 'event.action': 'Token Verify' })).toThrow(TypeError);
    expect(() => buildAuditEvent({ ...base, 'event.id': 'forged' } as unknown as AuditEventInput)).toThrow(
      TypeError,
    );
  });

  it('docs/audit.md lists exactly the schema fields', () => {
    const doc = readFileSync(join(ROOT, 'docs/audit.md'), 'utf8');
    const section = doc.slice(doc.indexOf('## Fields'), doc.indexOf('## Tamper evidence'));
    const listed = [...section.matchAll(/^\| `([^`]+)` +\|/gm)].map((m) => m[1]);
    expect(listed.sort()).toEqual([...Object.keys(AUDIT_FIELDS), ...Object.keys(CHAIN_FIELDS)].sort());
  });
});

describe('credential guard', () => {
  const credentials = [
    ...SECRETS.slice(0, 2),
    'Bearer abc.def-123',
    'authorization: DPoP eyJ0eXAiOiJkcG9w.x.y',
    'pcl_abcd1234',
    'password=x',
    'token: abc',
    'Cookie: sid=1',
    'api_key=abc',
    PEM_PRIVATE_KEY_HEADER,
    'reason with eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0. inside',
  ];
  const highEntropy = [
    'S3cr3tClientSecretValue_9f8e7d6c5b4a3928171605ab',
    'prefix dGhpc0lzQVJhbmRvbVNlY3JldDEyMzQ1Njc4OTBBQkNE suffix',
  ];
  const harmless = [
    'expired',
    'insufficient_scope',
    'basic authentication is not allowed',
    'Bearer tokens must be sent in the header',
    '/v1/patients/{id}',
    'c0ffee00-0000-4000-8000-000000000001',
    'a'.repeat(64),
    '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef',
    'apis[0].upstream.url changed; 1 API added',
    'upstream-timeout',
  ];
  it.each(credentials)('redacts %s in every field kind', (value) => {
    expect(looksLikeCredential(value, 'id')).toBe(true);
    expect(looksLikeCredential(value, 'text')).toBe(true);
  });
  it.each(highEntropy)('redacts high-entropy %s in free text', (value) => {
    expect(looksLikeCredential(value, 'text')).toBe(true);
  });
  it.each(harmless)('keeps %s', (value) => {
    expect(looksLikeCredential(value, 'text')).toBe(false);
  });
  it('keeps a JWK thumbprint as an identifier but not as free text', () => {
    const kid = 'NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs';
    expect(looksLikeCredential(kid, 'id')).toBe(false);
    expect(looksLikeCredential(kid, 'text')).toBe(true);
  });
  it('replaces the whole value and names the field', () => {
    for (const input of SECRET_PLACES) {
      const e = buildAuditEvent(input);
      expectNoSecrets(JSON.stringify(e));
      expect(e['portcullis.redacted']?.length).toBe(1);
      expect(JSON.stringify(e)).toContain(REDACTED);
    }
  });
});

function testSigner() {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { signer: es256Signer(privateKey, 'k1'), verifier: es256Verifier(new Map([['k1', publicKey]])) };
}

describe('hash chain', () => {
  async function sample(n: number) {
    const dir = freshDir();
    const { signer, verifier } = testSigner();
    const chain = await fileSink({ path: join(dir, 'a.jsonl'), maxBytes: 1 << 20 });
    const log = await AuditLog.open({ chain, signer, spoolDir: join(dir, 'spool'), checkpointEvery: 5 });
    for (let i = 0; i < n; i++) await log.emitDurable({ ...KINDS.admin!, 'event.reason': `n${String(i)}` });
    await log.close();
    const { records, checkpoints } = await readFileLog(join(dir, 'a.jsonl'));
    return { records, checkpoints, verifier };
  }

  it('verifies an intact chain and reports each kind of tampering first', async () => {
    const { records, checkpoints, verifier } = await sample(12);
    expect(checkpoints.map((c) => c.seq)).toEqual([5, 10, 12]);
    expect((await verifyChain(records, checkpoints, verifier)).ok).toBe(true);

    const edited = records.map((r) =>
      r.seq === 4 ? { ...r, event: { ...r.event, 'event.outcome': 'failure' as const } } : r,
    );
    expect((await verifyChain(edited, checkpoints, verifier)).problem).toMatchObject({
      kind: 'edited',
      seq: 4,
    });

    const deleted = records.filter((r) => r.seq !== 7);
    expect((await verifyChain(deleted, checkpoints, verifier)).problem).toMatchObject({
      kind: 'deleted',
      seq: 7,
    });

    const reordered = [...records];
    [reordered[2], reordered[3]] = [reordered[3]!, reordered[2]!];
    expect((await verifyChain(reordered, checkpoints, verifier)).problem).toMatchObject({
      kind: 'reordered',
      seq: 3,
    });

    const truncated = records.slice(0, 8);
    expect((await verifyChain(truncated, checkpoints, verifier)).problem).toMatchObject({
      kind: 'truncated',
      seq: 9,
    });

    const forged = checkpoints.map((c) => (c.seq === 10 ? { ...c, seq: 11 } : c));
    expect((await verifyChain(records, forged, verifier)).problem).toMatchObject({
      kind: 'bad-checkpoint',
      seq: 11,
    });

    // A wrong key vouches for nothing: truncation past its checkpoints goes unnoticed only
    // because no valid checkpoint exists, and the result says so.
    const other = testSigner().verifier;
    const r = await verifyChain(truncated, checkpoints, other);
    expect(r.problem?.kind).toBe('bad-checkpoint');
  });

  it('detects an edit whose chain was recomputed after it, through the checkpoint', async () => {
    const { records, checkpoints, verifier } = await sample(6);
    const { chainEvents } = await import('./chain.ts');
    const rewritten = chainEvents(
      { seq: 0, hash: '0'.repeat(64) },
      records.map((r) => (r.seq === 2 ? { ...r.event, 'event.outcome': 'failure' as const } : r.event)),
    );
    expect((await verifyChain(rewritten, checkpoints, verifier)).problem).toMatchObject({
      kind: 'bad-checkpoint',
      seq: 5,
    });
  });
});

class Capture extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: string, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

/** A forward sink that fails while `down` is true. */
function flakySink(): ForwardSink & { down: boolean; got: AuditRecord[] } {
  const s = {
    name: 'flaky',
    down: true,
    got: [] as AuditRecord[],
    deliver(records: readonly AuditRecord[]) {
      if (s.down) return Promise.reject(new Error('connection refused'));
      s.got.push(...records);
      return Promise.resolve();
    },
    close: () => Promise.resolve(),
  };
  return s;
}

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(
      'sh',
      [join(ROOT, 'scripts/node24.sh'), join(ROOT, 'src/cli/main.ts'), ...args],
      { cwd: ROOT },
    );
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe.each(backends.names)('store sink and the CLI on %s', (backend) => {
  async function setup() {
    const dataDir = freshDir();
    const url = backends.fresh(backend);
    const configFile = join(tmp, `cfg-${String(dirs)}.yaml`);
    writeFileSync(
      configFile,
      `version: 1\ngateway:\n  publicUrl: https://localhost:8443\nstore:\n  url: ${JSON.stringify(backend === 'sqlite' ? 'sqlite:db.sqlite' : url)}\naudit:\n  file: { enabled: true }\n  stdout: { enabled: true }\n`,
    );
    const { openStore } = await import('../store/index.ts');
    const store: Store = await openStore({ url: backend === 'sqlite' ? 'sqlite:db.sqlite' : url, dataDir });
    return { dataDir, configFile, store };
  }

  it('records every kind, keeps secrets out of the store, file and stdout, and the CLI verifies, tails and searches', async () => {
    const { dataDir, configFile, store } = await setup();
    const { openAuditLog } = await import('./index.ts');
    const { loadConfig } = await import('../config/load.ts');
    const loaded = await loadConfig(configFile);
    const out = new Capture();
    const log = await openAuditLog({
      config: { ...loaded.config.audit, checkpointEvery: 4 },
      dataDir,
      store,
      stdout: out,
    });
    const seen: number[] = [];
    log.onEvent((r) => seen.push(r.seq));
    for (const input of Object.values(KINDS)) await log.emitDurable(input);
    for (const input of SECRET_PLACES) void log.emit(input);
    await log.close();
    const total = Object.keys(KINDS).length + SECRET_PLACES.length;
    expect(seen).toEqual(Array.from({ length: total }, (_, i) => i + 1));

    const { records, checkpoints } = await readStoreLog(store.db);
    expect(records).toHaveLength(total);
    expect(checkpoints.map((c) => c.seq)).toEqual([4, 8, total]);
    const dump = JSON.stringify(await store.db.selectFrom('audit_events').selectAll().execute());
    expectNoSecrets(dump);
    const file = readFileSync(join(dataDir, 'audit/audit.jsonl'), 'utf8');
    expect(file.trim().split('\n')).toHaveLength(total);
    expect(statSync(join(dataDir, 'audit/audit.jsonl')).mode & 0o777).toBe(0o600);
    expectNoSecrets(file);
    expectNoSecrets(out.text);
    expect(out.text.trim().split('\n')).toHaveLength(total);
    await store.close();

    const verify = await cli(['audit', 'verify', '--json', '--config', configFile, '--data-dir', dataDir]);
    expect(verify.code).toBe(0);
    expect(JSON.parse(verify.stdout)).toMatchObject({ ok: true, records: total });
    const verifyFile = await cli([
      'audit',
      'verify',
      '--source',
      'file',
      '--config',
      configFile,
      '--data-dir',
      dataDir,
    ]);
    expect(verifyFile.code).toBe(0);
    expect(verifyFile.stderr).toMatch(new RegExp(`verified: ${String(total)} records`));

    const search = await cli([
      'audit',
      'search',
      '--json',
      '--category',
      'authorization',
      '--outcome',
      'failure',
      '--client',
      'pc_AbCdEfGhIjKlMnOpQrStUv',
      '--config',
      configFile,
      '--data-dir',
      dataDir,
    ]);
    expect(search.code).toBe(0);
    const found = search.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(found).toHaveLength(1);
    expect(found[0]).toMatchObject({
      'event.action': 'scope-check',
      'portcullis.scopes.granted': ['patients:read'],
    });
    const byTrace = await cli([
      'audit',
      'search',
      '--correlation-id',
      't-5',
      '--since',
      '2000-01-01',
      '--config',
      configFile,
      '--data-dir',
      dataDir,
    ]);
    expect(byTrace.stdout).toMatch(/upstream\/proxy\s+failure/);
    expect(byTrace.stdout.trim().split('\n')).toHaveLength(1);
    const none = await cli([
      'audit',
      'search',
      '--until',
      '2000-01-01',
      '--json',
      '--config',
      configFile,
      '--data-dir',
      dataDir,
    ]);
    expect(none.stdout).toBe('');
    const tail = await cli([
      'audit',
      'tail',
      '-n',
      '3',
      '--json',
      '--config',
      configFile,
      '--data-dir',
      dataDir,
    ]);
    expect(
      tail.stdout
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { seq: number }).seq),
    ).toEqual([total - 2, total - 1, total]);
    const bad = await cli([
      'audit',
      'search',
      '--category',
      'nope',
      '--config',
      configFile,
      '--data-dir',
      dataDir,
    ]);
    expect(bad.code).not.toBe(0);
  });

  it('audit verify catches an edited, a deleted, a reordered and a truncated event in the store', async () => {
    const { dataDir, configFile, store } = await setup();
    const log = await AuditLog.open({
      chain: storeSink(store),
      signer: fileCheckpointSigner(dataDir),
      spoolDir: join(dataDir, 'spool'),
      checkpointEvery: 5,
    });
    for (let i = 0; i < 12; i++) await log.emitDurable({ ...KINDS.admin!, 'event.reason': `n${String(i)}` });
    await log.close();
    const { db } = store;
    const verify = async () => {
      const r = await cli(['audit', 'verify', '--json', '--config', configFile, '--data-dir', dataDir]);
      return {
        code: r.code,
        out: JSON.parse(r.stdout) as { ok: boolean; problem?: { kind: string; seq: number } },
      };
    };
    expect((await verify()).code).toBe(0);
    const row = async (seq: number) =>
      await db.selectFrom('audit_events').selectAll().where('seq', '=', seq).executeTakeFirstOrThrow();

    // Edited.
    const r3 = await row(3);
    await db
      .updateTable('audit_events')
      .set({ event: r3.event.replace('"success"', '"failure"') })
      .where('seq', '=', 3)
      .execute();
    expect(await verify()).toMatchObject({
      code: 1,
      out: { ok: false, problem: { kind: 'edited', seq: 3 } },
    });
    await db.updateTable('audit_events').set({ event: r3.event }).where('seq', '=', 3).execute();
    expect((await verify()).code).toBe(0);

    // Reordered: rows 6 and 7 swap places (every column but the insertion order).
    const [r6, r7] = [await row(6), await row(7)];
    const cols = (r: typeof r6) => ({
      seq: r.seq,
      event_id: r.event_id,
      prev: r.prev,
      hash: r.hash,
      event: r.event,
    });
    await db.updateTable('audit_events').set({ seq: -6, event_id: 'tmp6' }).where('id', '=', r6.id).execute();
    await db.updateTable('audit_events').set(cols(r6)).where('id', '=', r7.id).execute();
    await db.updateTable('audit_events').set(cols(r7)).where('id', '=', r6.id).execute();
    expect(await verify()).toMatchObject({ code: 1, out: { problem: { kind: 'reordered', seq: 6 } } });
    await db.updateTable('audit_events').set({ seq: -7, event_id: 'tmp7' }).where('id', '=', r7.id).execute();
    await db.updateTable('audit_events').set(cols(r6)).where('id', '=', r6.id).execute();
    await db.updateTable('audit_events').set(cols(r7)).where('id', '=', r7.id).execute();
    expect((await verify()).code).toBe(0);

    // Deleted.
    await db.deleteFrom('audit_events').where('seq', '=', 8).execute();
    expect(await verify()).toMatchObject({ code: 1, out: { problem: { kind: 'deleted', seq: 8 } } });
    // Truncated: everything from 8 on is gone; the checkpoint at 10 and 12 still vouch for more.
    await db.deleteFrom('audit_events').where('seq', '>=', 8).execute();
    expect(await verify()).toMatchObject({ code: 1, out: { problem: { kind: 'truncated', seq: 8 } } });
    const human = await cli(['audit', 'verify', '--config', configFile, '--data-dir', dataDir]);
    expect(human.code).toBe(1);
    expect(human.stderr).toMatch(/FAILED verification: truncated at record 8/);
    await store.close();
  });
});

describe('file sink', () => {
  it('rotates by size keeping the chain, and verify catches tampering in the files', async () => {
    const dataDir = freshDir();
    const path = join(dataDir, 'audit/audit.jsonl');
    const configFile = join(tmp, 'file-cfg.yaml');
    writeFileSync(
      configFile,
      'version: 1\ngateway:\n  publicUrl: https://localhost:8443\naudit:\n  store: { enabled: false }\n  file: { enabled: true, maxBytes: 65536 }\n',
    );
    const chain = await fileSink({ path, maxBytes: 4096 });
    const log = await AuditLog.open({
      chain,
      signer: fileCheckpointSigner(dataDir),
      spoolDir: join(dataDir, 'spool'),
      checkpointEvery: 10,
    });
    for (let i = 0; i < 40; i++)
      await log.emitDurable({ ...KINDS.authorization!, 'event.reason': `n${String(i)}` });
    await log.close();
    const files = readdirSync(join(dataDir, 'audit')).filter((f) => /^audit-\d{12}\.jsonl$/.test(f));
    expect(files.length).toBeGreaterThanOrEqual(2);
    for (const f of files) expect(statSync(join(dataDir, 'audit', f)).mode & 0o777).toBe(0o600);
    const verify = async () => {
      const r = await cli(['audit', 'verify', '--json', '--config', configFile, '--data-dir', dataDir]);
      return {
        code: r.code,
        out: JSON.parse(r.stdout) as {
          ok: boolean;
          records: number;
          problem?: { kind: string; seq: number };
        },
      };
    };
    expect(await verify()).toMatchObject({ code: 0, out: { ok: true, records: 40 } });

    // Reopening continues the chain.
    const again = await AuditLog.open({
      chain: await fileSink({ path, maxBytes: 4096 }),
      signer: fileCheckpointSigner(dataDir),
      spoolDir: join(dataDir, 'spool'),
    });
    await again.emitDurable(KINDS.admin!);
    await again.close();
    expect(await verify()).toMatchObject({ code: 0, out: { records: 41 } });

    const first = join(dataDir, 'audit', files[0]!);
    const original = readFileSync(first, 'utf8');
    const lines = original.trimEnd().split('\n');
    const put = (ls: string[]) => writeFileSync(first, ls.join('\n') + '\n');
    put(lines.map((l, i) => (i === 1 ? l.replace('"n1"', '"n9"') : l)));
    expect(await verify()).toMatchObject({ code: 1, out: { problem: { kind: 'edited', seq: 2 } } });
    put(lines.filter((_, i) => i !== 2));
    expect(await verify()).toMatchObject({ code: 1, out: { problem: { kind: 'deleted', seq: 3 } } });
    put([lines[0]!, lines[2]!, lines[1]!, ...lines.slice(3)]);
    expect(await verify()).toMatchObject({ code: 1, out: { problem: { kind: 'reordered', seq: 2 } } });
    put(lines);
    // Truncation: remove the current file's contents and all rotated files but the first.
    for (const f of files.slice(1)) rmSync(join(dataDir, 'audit', f));
    writeFileSync(path, '');
    const cut = await verify();
    expect(cut).toMatchObject({ code: 1, out: { problem: { kind: 'truncated' } } });
  });
});

describe('spool and retry', () => {
  it('spools while a sink is down, then delivers everything in order', async () => {
    const dataDir = freshDir();
    const chain = await fileSink({ path: join(dataDir, 'a.jsonl'), maxBytes: 1 << 20 });
    const flaky = flakySink();
    const errors: string[] = [];
    const log = await AuditLog.open({
      chain,
      forward: [flaky],
      signer: testSigner().signer,
      spoolDir: join(dataDir, 'spool'),
      retryInitialMs: 3_600_000,
      onError: (_e, sink) => errors.push(sink),
    });
    for (let i = 0; i < 30; i++) void log.emit({ ...KINDS.validation!, 'event.reason': `r${String(i)}` });
    await log.flush();
    expect(flaky.got).toHaveLength(0);
    expect(errors).toContain('flaky');
    expect(readFileSync(join(dataDir, 'spool/flaky.spool.jsonl'), 'utf8').trim().split('\n')).toHaveLength(
      30,
    );
    expect(await log.retryNow()).toBe(false);
    flaky.down = false;
    for (let i = 30; i < 35; i++) void log.emit({ ...KINDS.validation!, 'event.reason': `r${String(i)}` });
    await log.flush();
    expect(await log.retryNow()).toBe(true);
    await log.flush();
    expect(flaky.got.map((r) => r.seq)).toEqual(Array.from({ length: 35 }, (_, i) => i + 1));
    expect(flaky.got.map((r) => r.event['event.reason'])).toEqual(
      Array.from({ length: 35 }, (_, i) => `r${String(i)}`),
    );
    expect(readFileSync(join(dataDir, 'spool/flaky.spool.jsonl'), 'utf8')).toBe('');
    const metrics = await log.registry.getSingleMetricAsString('portcullis_audit_sink_errors_total');
    expect(metrics).toMatch(/sink="flaky"} [1-9]/);
    await log.close();
  });

  it('an overflow is an event and a metric, and a durable emit that cannot be kept rejects', async () => {
    const dataDir = freshDir();
    const chain = await fileSink({ path: join(dataDir, 'a.jsonl'), maxBytes: 1 << 20 });
    const flaky = flakySink();
    const log = await AuditLog.open({
      chain,
      forward: [flaky],
      signer: testSigner().signer,
      spoolDir: join(dataDir, 'spool'),
      spoolMaxBytes: 4000,
      retryInitialMs: 3_600_000,
    });
    for (let i = 0; i < 40; i++) void log.emit(KINDS.validation!);
    await log.flush();
    await new Promise((r) => setImmediate(r));
    await log.flush();
    const metric = await log.registry.getSingleMetricAsString('portcullis_audit_dropped_events_total');
    const dropped = Number(/sink="flaky"} (\d+)/.exec(metric)?.[1]);
    expect(dropped).toBeGreaterThan(0);
    const { records } = await readFileLog(join(dataDir, 'a.jsonl'));
    const overflow = records.filter((r) => r.event['event.action'] === 'spool-overflow');
    expect(overflow.length).toBeGreaterThan(0);
    expect(overflow.reduce((n, r) => n + (r.event['portcullis.audit.dropped'] ?? 0), 0)).toBe(dropped);
    expect(overflow[0]!.event['portcullis.audit.sink']).toBe('flaky');
    // Spooled + dropped accounts for every record: nothing vanished silently.
    const spooled = readFileSync(join(dataDir, 'spool/flaky.spool.jsonl'), 'utf8').trim().split('\n').length;
    expect(spooled + dropped).toBe(records.length);
    await log.close();

    // The chain sink itself down and its spool full: emitDurable rejects.
    const broken = {
      name: 'broken',
      head: () => Promise.resolve({ seq: 0, hash: '0'.repeat(64) }),
      append: () => Promise.reject(new Error('database down')),
      appendCheckpoint: () => Promise.resolve(),
      close: () => Promise.resolve(),
    };
    const log2 = await AuditLog.open({
      chain: broken,
      signer: testSigner().signer,
      spoolDir: join(dataDir, 'spool2'),
      spoolMaxBytes: 1500,
      retryInitialMs: 3_600_000,
    });
    await expect(log2.emitDurable(KINDS.admin!)).resolves.toBeUndefined(); // fsynced into the spool
    let rejected: unknown;
    for (let i = 0; i < 10 && rejected === undefined; i++)
      await log2.emitDurable(KINDS.admin!).catch((e: unknown) => (rejected = e));
    expect(rejected).toBeInstanceOf(SpoolOverflowError);
  });

  it('a chain sink outage spools events, and they are chained in order when it returns (also after a restart)', async () => {
    const dataDir = freshDir();
    const inner = await fileSink({ path: join(dataDir, 'a.jsonl'), maxBytes: 1 << 20 });
    let down = true;
    const chain = {
      ...inner,
      append: (e: Parameters<typeof inner.append>[0]) =>
        down ? Promise.reject(new Error('down')) : inner.append(e),
    };
    const log = await AuditLog.open({
      chain,
      signer: testSigner().signer,
      spoolDir: join(dataDir, 'spool'),
      retryInitialMs: 3_600_000,
    });
    for (let i = 0; i < 5; i++) await log.emitDurable({ ...KINDS.admin!, 'event.reason': `d${String(i)}` });
    // A restart while the sink is still down: a new log finds the spool and delivers it first.
    down = false;
    const log2 = await AuditLog.open({
      chain: inner,
      signer: testSigner().signer,
      spoolDir: join(dataDir, 'spool'),
      retryInitialMs: 3_600_000,
    });
    expect(await log2.retryNow()).toBe(true);
    await log2.emitDurable({ ...KINDS.admin!, 'event.reason': 'd5' });
    await log2.close();
    const { records } = await readFileLog(join(dataDir, 'a.jsonl'));
    expect(records.map((r) => r.event['event.reason'])).toEqual(['d0', 'd1', 'd2', 'd3', 'd4', 'd5']);
  });
});

describe('stdout sink', () => {
  it('writes one JSON line per record with the chain fields', async () => {
    const out = new Capture();
    const dir = freshDir();
    const log = await AuditLog.open({
      chain: await fileSink({ path: join(dir, 'a.jsonl'), maxBytes: 1 << 20 }),
      forward: [stdoutSink(out)],
      signer: testSigner().signer,
      spoolDir: join(dir, 's'),
    });
    for (const input of SECRET_PLACES) await log.emitDurable(input);
    await log.close();
    const lines = out.text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.map((l) => l['portcullis.audit.seq'])).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expectNoSecrets(out.text);
  });

  it('queries by time window', async () => {
    const { openStore } = await import('../store/index.ts');
    const store = await openStore({ url: 'sqlite::memory:', dataDir: tmp });
    const log = await AuditLog.open({
      chain: storeSink(store),
      signer: testSigner().signer,
      spoolDir: join(freshDir(), 's'),
    });
    await log.emitDurable({ ...KINDS.admin!, '@timestamp': '2030-01-01T00:00:00.000Z' });
    await log.emitDurable({ ...KINDS.admin!, '@timestamp': '2030-01-02T00:00:00.000Z' });
    await log.close();
    expect((await queryStoreLog(store.db, { since: '2030-01-01T12:00:00Z' })).map((r) => r.seq)).toEqual([2]);
    expect((await queryStoreLog(store.db, { until: '2030-01-01T12:00:00Z' })).map((r) => r.seq)).toEqual([1]);
    await store.close();
  });
});

describe('auditFilePath', () => {
  it('gives each worker its own file, and keeps a single process on the configured one', async () => {
    const { auditFilePath } = await import('./index.ts');
    const { parseConfig } = await import('../config/load.ts');
    const { config } = parseConfig(
      'audit:\n  file:\n    enabled: true\n    path: audit/events.jsonl\n',
      '/x.yaml',
    );
    expect(auditFilePath(config.audit, '/data')).toBe('/data/audit/events.jsonl');
    expect(auditFilePath(config.audit, '/data', 'worker-2')).toBe('/data/audit/events.worker-2.jsonl');
  });
});
