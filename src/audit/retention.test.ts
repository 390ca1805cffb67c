import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:https';
import type { Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gunzipSync, gzipSync } from 'node:zlib';
import { Value } from '@sinclair/typebox/value';
import { sql } from 'kysely';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigSchema } from '../config/schema.ts';
import type { AuditConfig } from '../config/schema.ts';
import { testBackends } from '../oauth/test-backends.ts';
import { ensureDevCertificates } from '../server/devca.ts';
import { openStore } from '../store/index.ts';
import type { Store } from '../store/index.ts';
import { RefusalAggregator } from './aggregate.ts';
import { AlertEngine, defaultAlertRules } from './alerts.ts';
import { verifyChain } from './chain.ts';
import type { AuditEventInput } from './event.ts';
import { buildAuditEvent } from './event.ts';
import { openAuditLog } from './index.ts';
import { Pipe } from './pipe.ts';
import type { AuditLog } from './log.ts';
import { verifyArchive, verifyPrunedChain } from './prune.ts';
import { fileCheckpointVerifier } from './signer.ts';
import { readStoreLog } from './sinks/store.ts';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const backends = testBackends();
const tmp = mkdtempSync(join(tmpdir(), 'portcullis-retention-'));
const DAY = 86_400_000;
const defaults = (Value.Default(ConfigSchema, {}) as { audit: AuditConfig }).audit;
let dirs = 0;

afterAll(async () => {
  rmSync(tmp, { recursive: true, force: true });
  await backends.cleanup();
});

const refusal = (ip: string, status: number, extra: Partial<AuditEventInput> = {}): AuditEventInput => ({
  'event.category': status === 429 ? 'rate-limit' : 'authentication',
  'event.action': status === 429 ? 'rate-limit' : 'authenticate',
  'event.outcome': 'failure',
  'event.reason': status === 429 ? 'ip' : 'invalid-token',
  'client.ip': ip,
  'http.response.status_code': status,
  'portcullis.listener': 'gateway',
  ...extra,
});

async function open(
  backend: 'sqlite' | 'postgres',
  audit: Partial<AuditConfig> = {},
  registry?: Registry,
): Promise<{ store: Store; log: AuditLog; dataDir: string; url: string }> {
  const dataDir = join(tmp, `d${String(++dirs)}`);
  mkdirSync(dataDir, { recursive: true });
  const url = backend === 'sqlite' ? 'sqlite:db.sqlite' : backends.fresh('postgres');
  const store = await openStore({ url, dataDir });
  const log = await openAuditLog({
    config: { ...defaults, batchMaxDelayMs: 5, ...audit },
    dataDir,
    store,
    storeUrl: url,
    ...(registry === undefined ? {} : { registry }),
  });
  return { store, log, dataDir, url };
}

describe('refusal aggregation (in memory)', () => {
  it('one summary per source, reason and window; bounded memory flushes early and loses nothing', () => {
    let now = Date.UTC(2030, 0, 1);
    const out: AuditEventInput[] = [];
    const agg = new RefusalAggregator({
      windowMs: 60_000,
      maxSources: 2,
      emit: (e) => out.push(e),
      now: () => now,
    });
    const ev = (ip: string, status: number) => buildAuditEvent(refusal(ip, status));
    // Not limited yet: a 401 is recorded; the first 429 is recorded and starts the limit.
    expect(agg.offer(ev('192.0.2.1', 401))).toBe(false);
    expect(agg.offer(ev('192.0.2.1', 429))).toBe(false);
    for (let i = 0; i < 10; i++) expect(agg.offer(ev('192.0.2.1', 429))).toBe(true);
    expect(agg.offer(ev('192.0.2.1', 401))).toBe(true);
    // An allowed request is never absorbed.
    expect(agg.offer(buildAuditEvent({ ...refusal('192.0.2.1', 200), 'event.outcome': 'success' }))).toBe(
      false,
    );
    now += 61_000;
    agg.flushDue();
    expect(out.map((e) => [e['http.response.status_code'], e['portcullis.aggregate.count']])).toEqual([
      [429, 10],
      [401, 1],
    ]);
    expect(out[0]?.['event.start']).toBe(new Date(Date.UTC(2030, 0, 1)).toISOString());
    // The limit ended (no 429 for a window): refusals are recorded again.
    expect(agg.offer(ev('192.0.2.1', 401))).toBe(false);
    // Bounded: a third limited source flushes the oldest open summary early.
    out.length = 0;
    for (const ip of ['192.0.2.2', '192.0.2.3', '192.0.2.4']) {
      agg.offer(ev(ip, 429));
      agg.offer(ev(ip, 429));
    }
    expect(agg.size.buckets).toBeLessThanOrEqual(2);
    expect(agg.size.sources).toBeLessThanOrEqual(2);
    expect(out).toHaveLength(1);
    agg.close();
    expect(out.map((e) => e['portcullis.aggregate.count'])).toEqual([1, 1, 1]);
  });
});

describe('bounded queue', () => {
  it('a sink slower than its producers spills the oldest waiting batch to the spool, in order', async () => {
    const dir = join(tmp, 'pipe');
    let release: () => void = () => undefined;
    let gate: Promise<void> | undefined = new Promise((r) => (release = r));
    const delivered: number[] = [];
    let spilled = 0;
    const pipe = new Pipe<number>({
      name: 'slow',
      spoolFile: join(dir, 'slow.spool.jsonl'),
      maxBatch: 2,
      maxDelayMs: 1,
      maxSpoolBytes: 1024 * 1024,
      retryInitialMs: 10,
      retryMaxMs: 10,
      maxQueue: 4,
      deliver: async (items) => {
        await gate;
        delivered.push(...items);
      },
      encode: (n) => String(n),
      decode: (l) => Number(l),
      onOverflow: () => undefined,
      onError: () => undefined,
      onSpill: (n) => (spilled += n),
    });
    const acks = Array.from({ length: 12 }, (_, i) => pipe.push(i, i === 0));
    // The first delivery hangs: at most 4 items wait in memory, the rest went to the spool.
    expect(spilled).toBeGreaterThan(0);
    expect(pipe.spooled).toBe(spilled);
    gate = undefined;
    release();
    await Promise.all(acks);
    await pipe.flush();
    while (pipe.spooled > 0) await pipe.retryNow();
    await pipe.close();
    expect(delivered).toEqual(Array.from({ length: 12 }, (_, i) => i));
  });
});

describe.each(backends.names)('audit retention and aggregation on %s', (backend) => {
  it('a flood of 429s from one source becomes a bounded number of events with correct counts', async () => {
    const { store, log, dataDir } = await open(backend);
    try {
      for (let i = 0; i < 300; i++)
        void log.emit(refusal('198.51.100.1', 429, { 'trace.id': `t-${String(i)}` }));
      for (let i = 0; i < 40; i++) void log.emit(refusal('198.51.100.1', 401));
      for (let i = 0; i < 5; i++) void log.emit(refusal('198.51.100.2', 401));
      for (let i = 0; i < 3; i++) void log.emit(refusal('198.51.100.3', 429));
      await log.flush();
      expect(
        (await log.registry.getSingleMetric('portcullis_audit_aggregated_refusals_total')?.get())?.values[0]
          ?.value,
      ).toBe(299 + 40 + 2);
    } finally {
      await log.close(); // flushes the open summaries
    }
    const { records, checkpoints } = await readStoreLog(store.db);
    const by = (ip: string) =>
      records
        .filter((r) => r.event['client.ip'] === ip)
        .map((r) => [r.event['http.response.status_code'], r.event['portcullis.aggregate.count'] ?? null]);
    expect(by('198.51.100.1')).toEqual([
      [429, null],
      [429, 299],
      [401, 40],
    ]);
    // A source that is not limited keeps one event per refusal.
    expect(by('198.51.100.2')).toEqual(Array.from({ length: 5 }, () => [401, null]));
    expect(by('198.51.100.3')).toEqual([
      [429, null],
      [429, 2],
    ]);
    const summary = records.find((r) => r.event['portcullis.aggregate.count'] === 299)?.event;
    expect(summary?.['trace.id']).toBe('t-1');
    expect(summary?.['event.start']).toBeDefined();
    expect((await verifyChain(records, checkpoints, fileCheckpointVerifier(dataDir))).ok).toBe(true);
    await store.close();
  });

  it('prunes into an archive: the rest and the archive verify, tampering with either is detected', async () => {
    const { store, log, dataDir } = await open(backend);
    const archiveDir = join(dataDir, 'audit', 'archive');
    const old = new Date(Date.now() - 400 * DAY);
    const before = new Date(Date.now() - 365 * DAY);
    let archive: string;
    try {
      for (let i = 0; i < 30; i++)
        void log.emit({
          'event.category': 'authorization',
          'event.action': 'allow',
          'event.outcome': 'success',
          '@timestamp': new Date(old.getTime() + i * 1000),
          'trace.id': `old-${String(i)}`,
        });
      await log.flush();
      for (let i = 0; i < 10; i++)
        void log.emit({
          'event.category': 'authorization',
          'event.action': 'allow',
          'event.outcome': 'success',
        });
      await log.flush();
      const dry = await log.prune({ before, dryRun: true });
      expect(dry).toMatchObject({ records: 30, from: 1, through: 30, dryRun: true });
      expect(existsSync(archiveDir)).toBe(false);
      const steps: string[] = [];
      const result = await log.prune({ before, onProgress: (s) => steps.push(s) });
      expect(steps).toEqual(['plan', 'checkpoint', 'archive', 'record', 'delete']);
      expect(result).toMatchObject({ records: 30, from: 1, through: 30, dryRun: false });
      archive = result.archive ?? '';
      expect(archive).toMatch(/audit-000000000001-000000000030\.jsonl\.gz$/);
      // Nothing older is left: a second prune has nothing to do.
      expect((await log.prune({ before })).records).toBe(0);
      void log.emit({
        'event.category': 'authorization',
        'event.action': 'allow',
        'event.outcome': 'success',
      });
    } finally {
      await log.close();
    }
    const verifier = fileCheckpointVerifier(dataDir);
    const { records, checkpoints } = await readStoreLog(store.db);
    expect(records[0]?.seq).toBe(31);
    expect(records.some((r) => r.event['trace.id']?.startsWith('old-') === true)).toBe(false);
    expect(records.find((r) => r.event['event.action'] === 'prune')?.event).toMatchObject({
      'portcullis.audit.pruned': 30,
      'portcullis.audit.boundary.seq': 30,
      'portcullis.audit.archive': 'audit-000000000001-000000000030.jsonl.gz',
    });
    expect((await verifyPrunedChain(records, checkpoints, verifier)).ok).toBe(true);
    // Without the recorded prune, the missing front is a deletion.
    expect((await verifyChain(records, checkpoints, verifier)).problem?.kind).toBe('deleted');
    const arch = await verifyArchive(archive, verifier);
    expect(arch).toMatchObject({ ok: true, records: 30, checkpointedSeq: 30 });

    // Tampering with the archive.
    const lines = gunzipSync(readFileSync(archive)).toString('utf8').split('\n');
    const tampered = join(dataDir, 'tampered.jsonl.gz');
    const write = (l: string[]) => {
      writeFileSync(tampered, gzipSync(l.join('\n')));
    };
    write(lines.map((l, i) => (i === 5 ? l.replace('"old-4"', '"old-X"') : l)));
    expect((await verifyArchive(tampered, verifier)).problem?.kind).toBe('edited');
    write(lines.filter((_, i) => i !== 7));
    expect((await verifyArchive(tampered, verifier)).problem?.kind).toBe('deleted');
    write(lines.filter((l) => !l.includes('"checkpoint"')).slice(0, -3));
    expect((await verifyArchive(tampered, verifier)).ok).toBe(false);
    writeFileSync(tampered, Buffer.concat([readFileSync(archive).subarray(0, 40), Buffer.from('garbage')]));
    expect((await verifyArchive(tampered, verifier)).ok).toBe(false);

    // Tampering with the remaining chain.
    await sql`update audit_events set event = replace(event, '"allow"', '"deny"') where seq = 33`.execute(
      store.db,
    );
    let after = await readStoreLog(store.db);
    expect((await verifyPrunedChain(after.records, after.checkpoints, verifier)).problem).toMatchObject({
      kind: 'edited',
      seq: 33,
    });
    await sql`update audit_events set event = replace(event, '"deny"', '"allow"') where seq = 33`.execute(
      store.db,
    );
    await sql`delete from audit_events where seq = 31`.execute(store.db);
    after = await readStoreLog(store.db);
    expect((await verifyPrunedChain(after.records, after.checkpoints, verifier)).ok).toBe(false);
    await store.close();
  });

  describe('disk usage', () => {
    let server: Server;
    let url: string;
    let ca: string;
    const received: string[] = [];
    beforeAll(async () => {
      const certs = await ensureDevCertificates(join(tmp, `tls-${backend}`));
      ca = certs.caCertPem;
      server = createServer({ cert: certs.certPem, key: certs.keyPem }, (req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          received.push(Buffer.concat(chunks).toString('utf8'));
          res.statusCode = 204;
          res.end();
        });
      });
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      url = `https://localhost:${String((server.address() as AddressInfo).port)}/hooks`;
    });
    afterAll(async () => {
      server.closeAllConnections();
      await new Promise((ok) => server.close(ok));
    });

    it('reports bytes per sink, and the built-in alert fires through the webhook only above the threshold', async () => {
      const registry = new Registry();
      const { store, log } = await open(
        backend,
        {
          disk: { alertBytes: 1024 * 1024 * 1024, checkSeconds: 3600 },
          file: { ...defaults.file, enabled: true },
        },
        registry,
      );
      const engine = new AlertEngine({
        rules: defaultAlertRules('secops'),
        webhook: { url, secret: 'whsec-test-0123456789abcdef0123456789abcdef', ca },
        audit: log,
      });
      engine.attach(log);
      try {
        void log.emit({
          'event.category': 'authorization',
          'event.action': 'allow',
          'event.outcome': 'success',
        });
        await log.flush();
        const metric = await registry.getSingleMetricAsString('portcullis_audit_disk_bytes');
        const bytes = (sink: string) =>
          Number(new RegExp(`sink="${sink}"} (\\d+)`).exec(metric)?.[1] ?? Number.NaN);
        expect(bytes('store')).toBeGreaterThan(0);
        expect(bytes('file')).toBeGreaterThan(0);
        expect(bytes('spool')).toBe(0);
        // Below the threshold: nothing.
        const total = await log.checkDiskUsage();
        expect(total).toBeGreaterThan(0);
        await log.flush();
        await engine.idle();
        expect(received.filter((b) => b.includes('audit-disk-usage'))).toHaveLength(0);
      } finally {
        await engine.close();
        await log.close();
        await store.close();
      }
      // Above it: an audit/disk-usage-high event, and the alert delivered.
      const low = await open(backend, { disk: { alertBytes: 1024, checkSeconds: 3600 } });
      const engine2 = new AlertEngine({
        rules: defaultAlertRules('secops'),
        webhook: { url, secret: 'whsec-test-0123456789abcdef0123456789abcdef', ca },
        audit: low.log,
      });
      engine2.attach(low.log);
      try {
        await low.log.checkDiskUsage();
        await low.log.flush();
        await engine2.idle();
        await low.log.flush();
        const alert = received.find((b) => b.includes('audit-disk-usage'));
        expect(alert).toBeDefined();
        expect(JSON.parse(alert ?? '{}')).toMatchObject({
          rule: { id: 'audit-disk-usage' },
          severity: 'high',
          count: 1,
        });
      } finally {
        await engine2.close();
        await low.log.close();
      }
      const { records } = await readStoreLog(low.store.db);
      expect(records.find((r) => r.event['event.action'] === 'disk-usage-high')?.event).toMatchObject({
        'portcullis.audit.disk.limit': 1024,
      });
      await low.store.close();
    });
  });
});

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

it('portcullis audit prune archives, and audit verify checks the rest and the archive', async () => {
  const { store, log, dataDir } = await open('sqlite');
  for (let i = 0; i < 12; i++)
    void log.emit({
      'event.category': 'authorization',
      'event.action': 'allow',
      'event.outcome': 'success',
      '@timestamp': new Date(Date.now() - 400 * DAY),
    });
  await log.close();
  await store.close();
  const configFile = join(dataDir, 'portcullis.yaml');
  writeFileSync(
    configFile,
    'version: 1\ngateway:\n  publicUrl: https://localhost:8443\nstore:\n  url: "sqlite:db.sqlite"\n',
  );
  const common = ['--config', configFile, '--data-dir', dataDir];
  const dry = await cli(['audit', 'prune', '--dry-run', '--json', ...common]);
  expect(dry.code).toBe(0);
  expect(JSON.parse(dry.stdout)).toMatchObject({ records: 12, dryRun: true });
  const pruned = await cli(['audit', 'prune', '--json', ...common]);
  expect(pruned.code).toBe(0);
  const result = JSON.parse(pruned.stdout) as { records: number; archive: string };
  expect(result.records).toBe(12);
  const verified = await cli(['audit', 'verify', '--json', ...common]);
  expect(verified.code).toBe(0);
  expect((await cli(['audit', 'verify', '--archive', result.archive, ...common])).code).toBe(0);
  const lines = gunzipSync(readFileSync(result.archive)).toString('utf8').split('\n');
  writeFileSync(result.archive, gzipSync(lines.filter((_, i) => i !== 3).join('\n')));
  const bad = await cli(['audit', 'verify', '--json', '--archive', result.archive, ...common]);
  expect(bad.code).toBe(1);
  expect(JSON.parse(bad.stdout)).toMatchObject({ ok: false, problem: { kind: 'deleted' } });
}, 600_000);
