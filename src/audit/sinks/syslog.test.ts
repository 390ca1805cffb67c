import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { ensureDevCertificates } from '../../server/devca.ts';
import { es256Signer } from '../chain.ts';
import { generateKeyPairSync } from 'node:crypto';
import { AuditLog } from '../log.ts';
import { fileSink } from './file.ts';
import { formatSyslogMessage, frame, syslogSink } from './syslog.ts';

const RSYSLOGD = '/usr/sbin/rsyslogd';
const tmp = mkdtempSync(join(tmpdir(), 'portcullis-syslog-'));
let daemon: ChildProcess | undefined;
afterAll(() => {
  daemon?.kill('SIGTERM');
  rmSync(tmp, { recursive: true, force: true });
});

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function until(what: string, check: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`gave up waiting for ${what}`);
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.on('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

async function startRsyslog(port: number, out: string): Promise<void> {
  const dev = await ensureDevCertificates(join(tmp, 'pki'));
  const work = join(tmp, 'work');
  rmSync(work, { recursive: true, force: true });
  const conf = join(tmp, `rsyslog-${String(port)}.conf`);
  writeFileSync(
    conf,
    `global(workDirectory="${tmp}"
  DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="${dev.caCertFile}"
  DefaultNetstreamDriverCertFile="${dev.certFile}"
  DefaultNetstreamDriverKeyFile="${dev.keyFile}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" port="${String(port)}" address="127.0.0.1")
action(type="omfile" file="${out}" template="RSYSLOG_SyslogProtocol23Format")
`,
  );
  if (daemon !== undefined) {
    const exited = new Promise((r) => daemon?.once('exit', r));
    daemon.kill('SIGTERM');
    await exited;
  }
  daemon = spawn(RSYSLOGD, ['-n', '-f', conf, '-i', join(tmp, `rsyslogd-${String(port)}.pid`)], {
    stdio: 'ignore',
  });
  await until('rsyslogd to listen', () => listening(port));
}

const SECRETS = [
  'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJlX3NpZ25hdHVyZQ',
  'pcl_U2VjcmV0QXBpS2V5VmFsdWUwMTIzNDU2Nzg5',
];

it('formats RFC 5424 with RFC 5425 octet counting', () => {
  const msg = formatSyslogMessage(
    {
      seq: 1,
      prev: '0'.repeat(64),
      hash: 'f'.repeat(64),
      event: {
        '@timestamp': '2030-01-01T00:00:00.000Z',
        'event.id': 'x',
        'event.kind': 'event',
        'event.category': 'authentication',
        'event.action': 'token-verify',
        'event.outcome': 'failure',
        'event.reason': 'é',
      },
    },
    { facility: 13, hostname: 'gw 1', appName: 'portcullis', procId: '42' },
  );
  expect(msg.startsWith('<108>1 2030-01-01T00:00:00.000Z gw1 portcullis 42 authentication - {')).toBe(true);
  expect(frame(msg)).toBe(`${String(Buffer.byteLength(msg))} ${msg}`);
  expect(Buffer.byteLength(msg)).toBeGreaterThan(msg.length); // counted in octets, not characters
});

it('delivers to a real rsyslogd over TLS, spooling while it is down and in order after it returns', async () => {
  expect(existsSync(RSYSLOGD), 'apt-get install -y rsyslog rsyslog-gnutls').toBe(true);
  const port = await freePort();
  const out = join(tmp, 'received.log');
  const dev = await ensureDevCertificates(join(tmp, 'pki'));
  const sink = syslogSink({
    host: '127.0.0.1',
    port,
    ca: dev.caCertPem,
    servername: 'localhost',
    hostname: 'gw1',
  });
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const log = await AuditLog.open({
    chain: await fileSink({ path: join(tmp, 'audit.jsonl'), maxBytes: 1 << 20 }),
    forward: [sink],
    signer: es256Signer(privateKey, 'k'),
    spoolDir: join(tmp, 'spool'),
    retryInitialMs: 3_600_000,
  });
  const emit = (i: number) =>
    log.emitDurable({
      'event.category': 'authentication',
      'event.action': 'token-verify',
      'event.outcome': i % 2 ? 'failure' : 'success',
      'event.reason': i % 5 === 0 ? `Bearer ${SECRETS[0]!}` : `r${String(i)}`,
      'user.id': i % 7 === 0 ? SECRETS[1]! : 'alice',
    });
  // The collector is down: events are spooled.
  for (let i = 0; i < 20; i++) await emit(i);
  await log.flush();
  expect(readFileSync(join(tmp, 'spool/syslog.spool.jsonl'), 'utf8').trim().split('\n')).toHaveLength(20);
  // It comes up: the spool goes first, then new events.
  await startRsyslog(port, out);
  await until('the spool to drain', () => log.retryNow());
  for (let i = 20; i < 50; i++) await emit(i);
  await log.close();
  await until(
    'rsyslogd to write 50 messages',
    () => existsSync(out) && readFileSync(out, 'utf8').trim().split('\n').length >= 50,
  );
  const text = readFileSync(out, 'utf8');
  for (const s of SECRETS) expect(text).not.toContain(s);
  const lines = text.trim().split('\n');
  const seqs = lines.map((l) => {
    const m = /^<(\d+)>1 (\S+) gw1 portcullis \d+ authentication - (\{.*\})$/.exec(l);
    expect(m, l).not.toBeNull();
    const body = JSON.parse(m![3]!) as Record<string, unknown>;
    expect(Number(m![1])).toBe(13 * 8 + (body['event.outcome'] === 'failure' ? 4 : 6));
    return body['portcullis.audit.seq'];
  });
  expect(seqs).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
});

it('refuses a collector whose certificate the CA did not sign', async () => {
  const other = await ensureDevCertificates(join(tmp, 'other-pki'));
  const port = await freePort();
  await startRsyslog(port, join(tmp, 'x.log'));
  const sink = syslogSink({ host: '127.0.0.1', port, ca: other.caCertPem, servername: 'localhost' });
  await expect(
    sink.deliver([
      {
        seq: 1,
        prev: '0'.repeat(64),
        hash: '1'.repeat(64),
        event: {
          '@timestamp': '2030-01-01T00:00:00.000Z',
          'event.id': 'x',
          'event.kind': 'event',
          'event.category': 'audit',
          'event.action': 'test',
          'event.outcome': 'success',
        },
      },
    ]),
  ).rejects.toThrow(/certificate/);
  await sink.close();
});
