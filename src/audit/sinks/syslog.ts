/**
 * The syslog sink: RFC 5424 messages over TLS (RFC 5425), octet-counting framing
 * (`MSG-LEN SP SYSLOG-MSG`), to a collector such as rsyslog, syslog-ng or a SIEM.
 *
 * - The server certificate is always verified against `ca` (and `servername`); TLS 1.2 minimum.
 *   A client certificate (`cert`, `key`) is sent when the collector requires mutual TLS.
 * - Each record is one message: `<PRI>1 TIMESTAMP HOSTNAME portcullis PROCID CATEGORY - JSON`,
 *   where JSON is the record's flat form (event fields and chain fields), so the collector
 *   can verify the chain too. PRI = facility × 8 + severity: failures are warning (4), audit-trail
 *   problems error (3), everything else informational (6).
 * - Delivery means written to the TLS connection. Syslog has no application-level
 *   acknowledgement: records in flight when a connection breaks can be lost by the collector;
 *   a failed write rejects, so the log spools the batch and sends it again (at least once).
 */
import { hostname as osHostname } from 'node:os';
import { connect } from 'node:tls';
import type { TLSSocket } from 'node:tls';
import { recordToJson } from '../chain.ts';
import type { AuditRecord } from '../chain.ts';
import type { ForwardSink } from './types.ts';

export interface SyslogSinkOptions {
  readonly host: string;
  readonly port: number;
  /** PEM CA certificate(s) the collector's certificate must chain to. */
  readonly ca: string;
  /** Name expected in the collector's certificate (default: `host`). */
  readonly servername?: string;
  /** PEM client certificate and key, for collectors that require mutual TLS. */
  readonly cert?: string;
  readonly key?: string;
  /** Syslog facility (default 13, "log audit"). */
  readonly facility?: number;
  /** HOSTNAME field (default: the machine's host name). */
  readonly hostname?: string;
  readonly appName?: string;
  readonly connectTimeoutMs?: number;
}

const PRINTABLE = /[^\x21-\x7e]/g;

function field(value: string, max: number): string {
  const v = value.replace(PRINTABLE, '').slice(0, max);
  return v === '' ? '-' : v;
}

/** Formats one record as an RFC 5424 message (without framing). */
export function formatSyslogMessage(
  record: AuditRecord,
  opts: { facility: number; hostname: string; appName: string; procId: string },
): string {
  const e = record.event;
  const severity = e['event.category'] === 'audit' ? 3 : e['event.outcome'] === 'failure' ? 4 : 6;
  const pri = opts.facility * 8 + severity;
  return `<${String(pri)}>1 ${e['@timestamp']} ${field(opts.hostname, 255)} ${field(opts.appName, 48)} ${field(
    opts.procId,
    128,
  )} ${field(e['event.category'], 32)} - ${JSON.stringify(recordToJson(record))}`;
}

/** RFC 5425 octet-counting frame. */
export function frame(message: string): string {
  return `${String(Buffer.byteLength(message))} ${message}`;
}

export function syslogSink(options: SyslogSinkOptions): ForwardSink {
  const facility = options.facility ?? 13;
  if (!Number.isInteger(facility) || facility < 0 || facility > 23) {
    throw new TypeError('syslogSink: facility must be 0..23');
  }
  const fmt = {
    facility,
    hostname: options.hostname ?? osHostname(),
    appName: options.appName ?? 'portcullis',
    procId: String(process.pid),
  };
  let socket: TLSSocket | undefined;
  let closed = false;

  function open(): Promise<TLSSocket> {
    if (socket !== undefined && !socket.destroyed && socket.writable) return Promise.resolve(socket);
    return new Promise((resolve, reject) => {
      const s = connect({
        host: options.host,
        port: options.port,
        ca: options.ca,
        servername: options.servername ?? options.host,
        minVersion: 'TLSv1.2',
        rejectUnauthorized: true,
        ...(options.cert === undefined ? {} : { cert: options.cert }),
        ...(options.key === undefined ? {} : { key: options.key }),
      });
      const timer = setTimeout(() => {
        s.destroy(new Error('syslog: connect timed out'));
      }, options.connectTimeoutMs ?? 5000);
      s.once('secureConnect', () => {
        clearTimeout(timer);
        socket = s;
        resolve(s);
      });
      s.on('error', (err) => {
        clearTimeout(timer);
        if (socket === s) socket = undefined;
        reject(err instanceof Error ? err : new Error('syslog: connection failed'));
      });
      s.on('close', () => {
        if (socket === s) socket = undefined;
      });
      // The collector never talks back; discard anything it sends.
      s.on('data', () => undefined);
    });
  }

  return {
    name: 'syslog',
    async deliver(records) {
      if (closed) throw new Error('syslog sink is closed');
      const s = await open();
      const text = records.map((r) => frame(formatSyslogMessage(r, fmt))).join('');
      await new Promise<void>((resolve, reject) => {
        s.write(text, (err) => {
          if (err) {
            s.destroy();
            reject(err);
          } else resolve();
        });
      });
    },
    close() {
      closed = true;
      const s = socket;
      socket = undefined;
      if (s === undefined) return Promise.resolve();
      return new Promise<void>((resolve) => {
        s.end(() => {
          resolve();
        });
        s.once('close', () => {
          resolve();
        });
      });
    },
  };
}
