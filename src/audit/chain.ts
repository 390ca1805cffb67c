/**
 * Tamper evidence: a hash chain over the audit records and signed checkpoints.
 *
 * - Every record carries `seq` (1, 2, 3, … without gaps), `prev` (the previous record's hash,
 *   64 zeros for the first) and `hash` = SHA-256 hex of `prev`, a newline, and the canonical JSON
 *   (keys sorted, no spaces) of the event together with `portcullis.audit.seq`.
 * - A checkpoint signs `(seq, hash)` of the latest record with the audit signing key
 *   ({@link CheckpointSigner}), every N records or T seconds. It proves the chain reached `seq`:
 *   a log cut after a checkpoint is reported as truncated.
 *
 * {@link verifyChain} reports the FIRST problem: an edited, deleted, reordered or truncated record,
 * or a checkpoint whose signature or hash does not hold.
 */
import { createHash, createPrivateKey, createPublicKey, sign, verify } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import type { AuditEvent } from './event.ts';

export const GENESIS = '0'.repeat(64);

/** One chained audit record. */
export interface AuditRecord {
  readonly seq: number;
  readonly prev: string;
  readonly hash: string;
  readonly event: AuditEvent;
}

/** The end of a chain: the last record's seq and hash (`{0, GENESIS}` when empty). */
export interface ChainHead {
  readonly seq: number;
  readonly hash: string;
}

export const EMPTY_HEAD: ChainHead = { seq: 0, hash: GENESIS };

/** A signed statement that the chain reached `seq` with `hash`. */
export interface Checkpoint {
  readonly seq: number;
  readonly hash: string;
  /** ISO-8601 UTC: when it was signed. */
  readonly at: string;
  /** The signing key's id. */
  readonly kid: string;
  /** The signature (base64url) over {@link checkpointPayload}. */
  readonly sig: string;
}

/**
 * Signs audit checkpoints. The key manager provides the production implementation; tests and
 * the interim file-based key use {@link es256Signer}.
 */
export interface CheckpointSigner {
  readonly kid: string;
  sign(data: Buffer): Promise<Buffer>;
}

/** Verifies checkpoint signatures by key id; unknown kids verify as false. */
export interface CheckpointVerifier {
  verify(kid: string, data: Buffer, signature: Buffer): Promise<boolean>;
}

/** Canonical JSON: object keys sorted by code unit, no whitespace; arrays keep their order. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'number' && !Number.isFinite(value))
      throw new TypeError('canonicalJson: non-finite number');
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v)).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}

/** The hash of a record with this seq, prev and event. */
export function recordHash(seq: number, prev: string, event: AuditEvent): string {
  return createHash('sha256')
    .update(prev)
    .update('\n')
    .update(canonicalJson({ ...event, 'portcullis.audit.seq': seq }))
    .digest('hex');
}

/** Chains `events` after `head`. */
export function chainEvents(head: ChainHead, events: readonly AuditEvent[]): AuditRecord[] {
  let { seq, hash } = head;
  return events.map((event) => {
    const prev = hash;
    seq += 1;
    hash = recordHash(seq, prev, event);
    return { seq, prev, hash, event };
  });
}

/** The flat JSON form of a record (files, stdout, syslog): the event plus the chain fields. */
export function recordToJson(record: AuditRecord): Record<string, unknown> {
  return {
    ...record.event,
    'portcullis.audit.seq': record.seq,
    'portcullis.audit.prev': record.prev,
    'portcullis.audit.hash': record.hash,
  };
}

/** Parses the flat JSON form back; throws `Error` when the chain fields are missing. */
export function recordFromJson(value: unknown): AuditRecord {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error('not an object');
  const {
    'portcullis.audit.seq': seq,
    'portcullis.audit.prev': prev,
    'portcullis.audit.hash': hash,
    ...event
  } = value as Record<string, unknown>;
  if (typeof seq !== 'number' || typeof prev !== 'string' || typeof hash !== 'string') {
    throw new Error('record without chain fields');
  }
  return { seq, prev, hash, event: event as unknown as AuditEvent };
}

/** The bytes a checkpoint signature covers. */
export function checkpointPayload(cp: Omit<Checkpoint, 'sig'>): Buffer {
  return Buffer.from(
    canonicalJson({
      purpose: 'portcullis-audit-checkpoint',
      seq: cp.seq,
      hash: cp.hash,
      at: cp.at,
      kid: cp.kid,
    }),
  );
}

/** Signs a checkpoint for `head`. */
export async function signCheckpoint(
  signer: CheckpointSigner,
  head: ChainHead,
  at = new Date(),
): Promise<Checkpoint> {
  const body = { seq: head.seq, hash: head.hash, at: at.toISOString(), kid: signer.kid };
  const sig = await signer.sign(checkpointPayload(body));
  return { ...body, sig: sig.toString('base64url') };
}

/** An ES256 signer over a P-256 private key (node:crypto, IEEE P1363 signatures). */
export function es256Signer(privateKey: KeyObject | string, kid: string): CheckpointSigner {
  const key = typeof privateKey === 'string' ? createPrivateKey(privateKey) : privateKey;
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new TypeError('es256Signer: a P-256 private key is required');
  }
  return {
    kid,
    sign: (data) => Promise.resolve(sign('sha256', data, { key, dsaEncoding: 'ieee-p1363' })),
  };
}

/** A verifier over P-256 public keys by kid. */
export function es256Verifier(publicKeys: ReadonlyMap<string, KeyObject | string>): CheckpointVerifier {
  const keys = new Map<string, KeyObject>();
  for (const [kid, k] of publicKeys) keys.set(kid, typeof k === 'string' ? createPublicKey(k) : k);
  return {
    verify: (kid, data, signature) => {
      const key = keys.get(kid);
      if (key === undefined) return Promise.resolve(false);
      try {
        return Promise.resolve(verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, signature));
      } catch {
        return Promise.resolve(false);
      }
    },
  };
}

export type TamperKind = 'edited' | 'deleted' | 'reordered' | 'truncated' | 'bad-checkpoint';

export interface VerifyProblem {
  readonly kind: TamperKind;
  /** The seq of the first bad (or missing) record. */
  readonly seq: number;
  /** Where it was found (position in the input, 0-based), when it is there at all. */
  readonly index?: number;
  readonly message: string;
}

export interface VerifyResult {
  readonly ok: boolean;
  /** Records checked and found sound. */
  readonly records: number;
  /** The last sound record. */
  readonly head: ChainHead;
  /** Valid checkpoints seen. */
  readonly checkpoints: number;
  /** The highest seq a valid checkpoint vouches for (0: none). */
  readonly checkpointedSeq: number;
  readonly problem?: VerifyProblem;
}

export interface VerifyOptions {
  /**
   * Where the records start when older ones were archived on purpose: the seq and hash of the
   * record before the first one given. Default: the genesis (the first record must be seq 1).
   */
  readonly after?: ChainHead;
}

/**
 * Verifies records in the order they are stored and the checkpoints over them; stops at the
 * first problem.
 *
 * - a record whose hash does not match its content, or whose `prev` does not match → edited;
 * - a seq missing where it was expected and not found later → deleted;
 * - a seq that appears out of order → reordered;
 * - the chain ends before the highest validly signed checkpoint → truncated;
 * - a checkpoint with an invalid signature, or whose hash differs from the record's → bad-checkpoint
 *   (an edited record with a recomputed chain after it).
 */
export async function verifyChain(
  records: readonly AuditRecord[],
  checkpoints: readonly Checkpoint[],
  verifier: CheckpointVerifier,
  options: VerifyOptions = {},
): Promise<VerifyResult> {
  const start = options.after ?? EMPTY_HEAD;
  let head = start;
  let problem: VerifyProblem | undefined;
  const bySeq = new Map<number, string>();
  let sound = 0;
  for (let i = 0; i < records.length; i++) {
    const r = records[i];
    if (r === undefined) break;
    const expected = head.seq + 1;
    if (r.seq !== expected) {
      const later = records.slice(i + 1).some((x) => x.seq === expected);
      const earlier = r.seq <= head.seq;
      problem =
        later || earlier
          ? {
              kind: 'reordered',
              seq: later ? expected : r.seq,
              index: i,
              message: later
                ? `record ${String(expected)} appears after record ${String(r.seq)}`
                : `record ${String(r.seq)} appears again after record ${String(head.seq)}`,
            }
          : {
              kind: 'deleted',
              seq: expected,
              message: `record ${String(expected)} is missing (the next record is ${String(r.seq)})`,
            };
      break;
    }
    if (r.prev !== head.hash || recordHash(r.seq, r.prev, r.event) !== r.hash) {
      problem = { kind: 'edited', seq: r.seq, index: i, message: `record ${String(r.seq)} was modified` };
      break;
    }
    head = { seq: r.seq, hash: r.hash };
    bySeq.set(r.seq, r.hash);
    sound++;
  }
  let valid = 0;
  let checkpointedSeq = 0;
  const sorted = [...checkpoints].sort((a, b) => a.seq - b.seq);
  for (const cp of sorted) {
    const ok = await verifier.verify(cp.kid, checkpointPayload(cp), Buffer.from(cp.sig, 'base64url'));
    if (!ok) {
      problem ??= {
        kind: 'bad-checkpoint',
        seq: cp.seq,
        message: `checkpoint at ${String(cp.seq)} has an invalid signature`,
      };
      continue;
    }
    valid++;
    checkpointedSeq = Math.max(checkpointedSeq, cp.seq);
    const h = bySeq.get(cp.seq);
    if (h !== undefined && h !== cp.hash) {
      problem ??= {
        kind: 'bad-checkpoint',
        seq: cp.seq,
        message: `record ${String(cp.seq)} differs from its signed checkpoint (records before it were rewritten)`,
      };
    }
  }
  if (problem === undefined && checkpointedSeq > head.seq && sound === records.length) {
    problem = {
      kind: 'truncated',
      seq: head.seq + 1,
      message: `the log ends at record ${String(head.seq)} but a signed checkpoint vouches for record ${String(checkpointedSeq)}`,
    };
  }
  return {
    ok: problem === undefined,
    records: sound,
    head,
    checkpoints: valid,
    checkpointedSeq,
    ...(problem === undefined ? {} : { problem }),
  };
}
