/**
 * The audit trail across the gateway and the CLI, through the real `portcullis` command: a started
 * and stopped gateway leaves a chain whose checkpoints the key manager's audit-checkpoint key
 * signed and `audit verify` accepts; every control-plane change made from the CLI (clients,
 * users, API keys, key rotation) is a durable event with its id and never its secret, and the
 * chain still verifies afterwards.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { openStore } from '../src/store/index.ts';
import { startRecordingUpstream, startTestGateway } from './helpers.ts';
import type { RecordingUpstream } from './helpers.ts';

const ROOT = resolve(import.meta.dirname, '..');
const PASSWORD = 'correct horse battery staple 7f3a';

let dir: string;
let configFile: string;
let dataDir: string;
let upstream: RecordingUpstream;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function portcullis(stdin: string, ...args: string[]): Promise<Run> {
  const env = { ...process.env };
  delete env.PORTCULLIS_MASTER_KEY;
  return new Promise((ok, fail) => {
    const child = spawn(
      'sh',
      ['scripts/node24.sh', 'src/cli/main.ts', ...args, '--config', configFile, '--data-dir', dataDir],
      { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], env },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.on('error', fail);
    child.on('close', (code) => {
      ok({ code, stdout, stderr });
    });
    child.stdin.end(stdin);
  });
}

async function readTrail() {
  const store = await openStore({ url: 'sqlite:portcullis.db', dataDir });
  try {
    const events = await store.db.selectFrom('audit_events').selectAll().orderBy('seq').execute();
    const checkpoints = await store.db.selectFrom('audit_checkpoints').selectAll().execute();
    const keys = await store.db.selectFrom('audit_keys').select(['kid', 'retired_at']).execute();
    return {
      text: events.map((e) => e.event).join('\n'),
      events: events.map((e) => JSON.parse(e.event) as Record<string, unknown>),
      checkpoints,
      keys,
    };
  } finally {
    await store.close();
  }
}

async function verify(): Promise<Record<string, unknown>> {
  const r = await portcullis('', 'audit', 'verify', '--json');
  expect(r.code, r.stderr + r.stdout).toBe(0);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'portcullis-cli-audit-'));
  upstream = await startRecordingUpstream();
  const gw = await startTestGateway(
    {
      store: { url: 'sqlite:portcullis.db' },
      apis: [{ name: 'items', openapi: 'api.yaml', basePath: '/v1', upstream: { url: upstream.url } }],
    },
    { dir },
  );
  configFile = gw.configFile;
  dataDir = join(dir, 'data');
  for (let i = 0; i < 5; i++) expect((await gw.request(`/v1/items/${String(i)}`)).status).toBe(200);
  expect((await gw.request('/v1/nope')).status).toBe(404);
  await gw.close();
}, 60_000);

afterAll(async () => {
  await upstream.close();
  await rm(dir, { recursive: true, force: true });
});

it("a stopped gateway's trail is signed by the key manager's audit key and verifies", async () => {
  const trail = await readTrail();
  expect(trail.keys).toHaveLength(1);
  const kid = trail.keys[0]?.kid;
  // One event per request (and the configuration applied at start).
  expect(trail.events.filter((e) => e['http.request.method'] !== undefined)).toHaveLength(6);
  expect(trail.checkpoints.length).toBeGreaterThan(0);
  expect(new Set(trail.checkpoints.map((c) => c.kid))).toEqual(new Set([kid]));
  expect(await verify()).toMatchObject({
    ok: true,
    records: trail.events.length,
    checkpointedSeq: trail.events.length,
  });
}, 60_000);

it('records every control-plane change made from the CLI, durably and without its secret', async () => {
  const secrets: string[] = [PASSWORD];

  const created = await portcullis(
    '',
    'clients',
    'create',
    '--name',
    'audit test',
    '--scope',
    'read',
    '--json',
  );
  expect(created.code, created.stderr).toBe(0);
  const client = JSON.parse(created.stdout) as { client_id: string; client_secret: string };
  secrets.push(client.client_secret);
  expect((await portcullis('', 'clients', 'delete', client.client_id)).code).toBe(0);
  // A change that fails is recorded as a failure.
  expect((await portcullis('', 'clients', 'delete', 'no-such-client')).code).toBe(1);

  const user = await portcullis(`${PASSWORD}\n`, 'users', 'create', '--username', 'alice', '--json');
  expect(user.code, user.stderr).toBe(0);
  const userId = (JSON.parse(user.stdout) as { id: string }).id;
  expect((await portcullis('', 'users', 'disable', '--username', 'alice')).code).toBe(0);

  const issued = await portcullis('', 'apikeys', 'issue', '--name', 'n', '--api', 'items', '--json');
  expect(issued.code, issued.stderr).toBe(0);
  const first = JSON.parse(issued.stdout) as { id: string; key: string };
  secrets.push(first.key);
  const rotated = await portcullis('', 'apikeys', 'rotate', first.id, '--json');
  expect(rotated.code, rotated.stderr).toBe(0);
  const second = JSON.parse(rotated.stdout) as { id: string; key: string };
  secrets.push(second.key);
  expect((await portcullis('', 'apikeys', 'revoke', second.id)).code).toBe(0);

  const keys = await portcullis('', 'keys', 'rotate', '--reason', 'audit test rotation', '--json');
  expect(keys.code, keys.stderr).toBe(0);
  const current = (JSON.parse(keys.stdout) as { keys: { kid: string; status: string }[] }).keys.find(
    (k) => k.status === 'current',
  )?.kid;

  const trail = await readTrail();
  const cli = trail.events.filter((e) => e['portcullis.listener'] === 'cli');
  const one = (action: string, outcome = 'success') => {
    const found = cli.filter((e) => e['event.action'] === action && e['event.outcome'] === outcome);
    expect(found, `${action} ${outcome}`).toHaveLength(1);
    return found[0];
  };
  const cred = 'credential-lifecycle';
  expect(one('client-create')).toMatchObject({
    'event.category': cred,
    'portcullis.client_id': client.client_id,
    'portcullis.credential.type': 'client',
  });
  expect(one('client-delete')).toMatchObject({
    'event.category': cred,
    'portcullis.client_id': client.client_id,
  });
  expect(one('client-delete', 'failure')).toMatchObject({
    'portcullis.client_id': 'no-such-client',
    'event.reason': 'no-such-client',
  });
  expect(one('user-create')).toMatchObject({ 'event.category': cred, 'user.id': userId });
  expect(one('user-disable')).toMatchObject({ 'event.category': cred, 'user.id': userId });
  expect(one('apikey-issue')).toMatchObject({ 'event.category': cred, 'portcullis.api_key_id': first.id });
  expect(one('apikey-rotate')).toMatchObject({
    'event.category': cred,
    'portcullis.api_key_id': second.id,
    'event.reason': `replaces ${first.id}`,
  });
  expect(one('apikey-revoke')).toMatchObject({ 'event.category': cred, 'portcullis.api_key_id': second.id });
  expect(one('key-rotate')).toMatchObject({
    'event.category': 'key-lifecycle',
    'portcullis.key.kid': current,
    'event.reason': 'audit test rotation',
  });
  expect(cli).toHaveLength(9);

  // No secret anywhere in the trail.
  for (const secret of secrets) expect(trail.text.includes(secret), 'a secret is in the trail').toBe(false);

  // The CLI's checkpoints are the key manager's too, and the whole chain verifies.
  expect(new Set(trail.checkpoints.map((c) => c.kid))).toEqual(new Set(trail.keys.map((k) => k.kid)));
  expect(await verify()).toMatchObject({
    ok: true,
    records: trail.events.length,
    checkpointedSeq: trail.events.length,
  });
}, 180_000);
