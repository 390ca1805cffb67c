/**
 * The audit trail: event schema, redaction, hash chain with signed checkpoints, durable log
 * and sinks. `openAuditLog` builds the log the configuration describes.
 */
import { readFileSync } from 'node:fs';
import { extname, isAbsolute, join, resolve } from 'node:path';
import type { Writable } from 'node:stream';
import type { Registry } from 'prom-client';
import type { AuditConfig } from '../config/schema.ts';
import { sql } from 'kysely';
import { parseStoreUrl } from '../store/index.ts';
import type { Store } from '../store/index.ts';
import type { CheckpointSigner } from './chain.ts';
import { AuditLog } from './log.ts';
import { fileCheckpointSigner } from './signer.ts';
import { checkpointFile, fileSink, logFiles } from './sinks/file.ts';
import { stdoutSink } from './sinks/stdout.ts';
import { storeSink } from './sinks/store.ts';
import { workerStoreSink } from './sinks/worker-store.ts';
import type { AuditDbTarget } from './store-db.ts';
import { syslogSink } from './sinks/syslog.ts';
import type { ChainSink, ForwardSink } from './sinks/types.ts';

export * from './chain.ts';
export * from './event.ts';
export { AuditLog, SpoolOverflowError } from './log.ts';
export type {
  AuditLogOptions,
  AuditListener,
  AuditMetrics,
  Durability,
  PruneOptions,
  PruneResult,
} from './log.ts';
export { looksLikeCredential, REDACTED } from './redact.ts';
export type { ChainSink, ForwardSink } from './sinks/types.ts';

export interface OpenAuditLogOptions {
  readonly config: AuditConfig;
  readonly dataDir: string;
  /** The open store (used when `audit.store.enabled`). */
  readonly store: Store;
  /** The checkpoint signer; default: the interim file key under `<dataDir>/audit/`. */
  readonly signer?: CheckpointSigner;
  readonly stdout?: Writable;
  readonly registry?: Registry;
  readonly onError?: (error: unknown, sink: string) => void;
  /**
   * Names this process among several sharing the data directory (`--workers`): its spools go
   * to `<dataDir>/audit/spool/<instance>/`, so that no two processes append to or replay one spool.
   */
  readonly instance?: string;
  /**
   * The store URL (`store.url`): lets the audit worker thread open its own connection. Without
   * it a SQLite file store is found through the open connection; a PostgreSQL store then keeps
   * the store sink on the event loop.
   */
  readonly storeUrl?: string;
}

/** The database the audit worker connects to; undefined when it cannot have its own connection. */
async function workerTarget(options: OpenAuditLogOptions): Promise<AuditDbTarget | undefined> {
  if (options.storeUrl !== undefined) {
    const t = parseStoreUrl(options.storeUrl, options.dataDir);
    if (t.kind === 'postgres')
      return { kind: 'postgres', connectionString: t.connectionString, schema: t.schema };
    return t.path === ':memory:' ? undefined : { kind: 'sqlite', path: t.path };
  }
  if (options.store.kind !== 'sqlite') return undefined;
  const r = await sql<{ file: string }>`select file from pragma_database_list where name = 'main'`.execute(
    options.store.db,
  );
  const file = r.rows[0]?.file;
  return file === undefined || file === '' ? undefined : { kind: 'sqlite', path: file };
}

/** The file sink's path for a configuration. */
export function auditFilePath(config: AuditConfig, dataDir: string, instance?: string): string {
  const path = isAbsolute(config.file.path) ? config.file.path : resolve(dataDir, config.file.path);
  if (instance === undefined) return path;
  // One file per worker: several processes appending to (and rotating) one file would interleave.
  const ext = extname(path);
  return `${path.slice(0, path.length - ext.length)}.${instance}${ext}`;
}

/** Opens the audit log with the sinks the configuration enables. */
export async function openAuditLog(options: OpenAuditLogOptions): Promise<AuditLog> {
  const { config, dataDir } = options;
  const forward: ForwardSink[] = [];
  let chain: ChainSink;
  if (config.store.enabled) {
    // Off the event loop when the worker can open its own connection (SQLite file, PostgreSQL).
    const target = await workerTarget(options);
    chain = target === undefined ? storeSink(options.store) : workerStoreSink(target);
    if (config.file.enabled)
      forward.push(
        await fileSink({
          path: auditFilePath(config, dataDir, options.instance),
          maxBytes: config.file.maxBytes,
        }),
      );
  } else if (config.file.enabled) {
    chain = await fileSink({
      path: auditFilePath(config, dataDir, options.instance),
      maxBytes: config.file.maxBytes,
    });
  } else {
    throw new Error('audit: enable the store sink or the file sink (one of them holds the chain)');
  }
  if (config.stdout.enabled) forward.push(stdoutSink(options.stdout));
  if (config.syslog !== undefined) {
    const s = config.syslog;
    forward.push(
      syslogSink({
        host: s.host,
        port: s.port,
        ca: readFileSync(s.caFile, 'utf8'),
        facility: s.facility,
        ...(s.serverName === undefined ? {} : { servername: s.serverName }),
        ...(s.certFile === undefined ? {} : { cert: readFileSync(s.certFile, 'utf8') }),
        ...(s.keyFile === undefined ? {} : { key: readFileSync(s.keyFile, 'utf8') }),
      }),
    );
  }
  const archiveDir = isAbsolute(config.retention.archiveDir)
    ? config.retention.archiveDir
    : resolve(dataDir, config.retention.archiveDir);
  const filePath = config.file.enabled ? auditFilePath(config, dataDir, options.instance) : undefined;
  return AuditLog.open({
    chain,
    ...(config.aggregation.enabled
      ? {
          aggregation: {
            windowMs: config.aggregation.windowSeconds * 1000,
            maxSources: config.aggregation.maxSources,
          },
        }
      : {}),
    retention: {
      days: config.retention.days,
      archiveDir,
      // One process of a --workers group runs the scheduled prune (close() stops it, so one-shot
      // commands never reach it); separate gateways sharing a store prune the same range in turn.
      ...(config.retention.schedule && (options.instance ?? 'worker-1') === 'worker-1'
        ? { intervalMs: config.retention.intervalSeconds * 1000 }
        : {}),
    },
    disk: {
      paths: [
        ...(filePath === undefined
          ? []
          : [{ sink: 'file', list: async () => [...(await logFiles(filePath)), checkpointFile(filePath)] }]),
        { sink: 'archive', list: () => Promise.resolve([archiveDir]) },
      ],
      alertBytes: config.disk.alertBytes,
      checkMs: config.disk.checkSeconds * 1000,
    },
    forward,
    signer: options.signer ?? fileCheckpointSigner(dataDir),
    spoolDir:
      options.instance === undefined
        ? join(dataDir, 'audit', 'spool')
        : join(dataDir, 'audit', 'spool', options.instance),
    durability: config.durability,
    maxBatch: config.batchMaxEvents,
    maxDelayMs: config.batchMaxDelayMs,
    checkpointEvery: config.checkpointEvery,
    checkpointSeconds: config.checkpointSeconds,
    spoolMaxBytes: config.spoolMaxBytes,
    queueMaxEvents: config.queueMaxEvents,
    ...(options.registry === undefined ? {} : { registry: options.registry }),
    ...(options.onError === undefined ? {} : { onError: options.onError }),
  });
}
