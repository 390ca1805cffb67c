/**
 * A ClamAV daemon client: one `zINSTREAM` per scan over clamd's unix socket or TCP port (clamd's
 * own protocol: the data in chunks, each preceded by its 4-byte big-endian length, a zero length
 * to end, then one NUL-terminated reply line).
 */
import { connect } from 'node:net';
import type { Socket } from 'node:net';

export type ScanVerdict =
  | { readonly kind: 'clean' }
  | { readonly kind: 'infected'; readonly signature: string }
  /** clamd answered but could not scan it (e.g. above its StreamMaxLength). */
  | { readonly kind: 'unscannable'; readonly detail: string };

export interface ClamdTarget {
  /** Unix socket path of clamd (`LocalSocket`). */
  readonly socket?: string | undefined;
  /** Or its TCP address (`TCPSocket` / `TCPAddr`). */
  readonly host?: string | undefined;
  readonly port?: number | undefined;
  readonly timeoutMs: number;
}

/** The scanner could not be reached or did not answer in time. */
export class ScannerUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ScannerUnavailableError';
  }
}

const CHUNK = 64 * 1024;
const MAX_REPLY = 4096;
/** Signature names as clamd prints them; anything else is not echoed into audit events. */
const SIGNATURE = /^[A-Za-z0-9._:/-]{1,200}$/;

/** Parses clamd's reply to INSTREAM. */
export function parseReply(reply: string): ScanVerdict {
  const text = reply.replace(/\0+$/, '').trim();
  const body = text.startsWith('stream:') ? text.slice('stream:'.length).trim() : text;
  if (body === 'OK') return { kind: 'clean' };
  const found = /^(.+) FOUND$/.exec(body);
  if (found !== null) {
    const name = (found[1] ?? '').trim();
    return { kind: 'infected', signature: SIGNATURE.test(name) ? name : 'unnamed-signature' };
  }
  return { kind: 'unscannable', detail: body.endsWith('ERROR') ? body.slice(0, 200) : 'unexpected reply' };
}

/** Scans `data` with clamd. Rejects with {@link ScannerUnavailableError} when clamd cannot answer. */
export function scanWithClamd(target: ClamdTarget, data: Buffer): Promise<ScanVerdict> {
  return new Promise((resolve, reject) => {
    let socket: Socket;
    if (target.socket !== undefined) socket = connect({ path: target.socket });
    else socket = connect({ host: target.host ?? '127.0.0.1', port: target.port ?? 3310 });
    let reply = '';
    let settled = false;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      fn();
    };
    const timer = setTimeout(() => {
      finish(() => {
        reject(new ScannerUnavailableError(`clamd did not answer within ${String(target.timeoutMs)} ms`));
      });
    }, target.timeoutMs);
    socket.on('error', (err: NodeJS.ErrnoException) => {
      finish(() => {
        // clamd answers a stream over its limit and closes while we still write: its answer counts.
        if (reply !== '') resolve(parseReply(reply));
        else reject(new ScannerUnavailableError(`clamd unreachable (${err.code ?? 'error'})`));
      });
    });
    socket.on('data', (chunk: Buffer) => {
      reply += chunk.toString('latin1');
      if (reply.includes('\0') || reply.length > MAX_REPLY) {
        finish(() => {
          resolve(parseReply(reply));
        });
      }
    });
    socket.on('end', () => {
      finish(() => {
        if (reply === '') reject(new ScannerUnavailableError('clamd closed the connection without a reply'));
        else resolve(parseReply(reply));
      });
    });
    socket.on('connect', () => {
      socket.write('zINSTREAM\0');
      for (let at = 0; at < data.length; at += CHUNK) {
        const part = data.subarray(at, Math.min(at + CHUNK, data.length));
        const len = Buffer.alloc(4);
        len.writeUInt32BE(part.length);
        socket.write(len);
        socket.write(part);
      }
      socket.write(Buffer.alloc(4));
    });
  });
}
