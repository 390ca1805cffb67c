/**
 * Verification across a prune (retention; `AuditLog.prune` does the pruning).
 *
 * A prune archives records `from`…`through` to `audit-<from>-<through>.jsonl.gz`, signs a
 * checkpoint at `through`, records an `audit` / `prune` event naming the boundary
 * (`portcullis.audit.boundary.seq` / `.hash`) and the archive, then deletes the range. So:
 *
 * - the remaining chain verifies from the boundary: its first record must follow a boundary that
 *   a prune event IN the remaining (hash-chained, checkpointed) records vouches for; records
 *   removed from the front any other way are still `deleted`;
 * - an archive verifies on its own: its records chain from the header's `after` to the
 *   boundary, whose signed checkpoint is in the archive; an edit, a deletion or a cut is
 *   reported like in the live chain.
 */
import { readFile } from 'node:fs/promises';
import { gunzipSync } from 'node:zlib';
import { recordFromJson, verifyChain } from './chain.ts';
import type { AuditRecord, ChainHead, Checkpoint, CheckpointVerifier, VerifyResult } from './chain.ts';

/** The boundary the remaining chain starts after, when a recorded prune explains its start. */
export function pruneAnchor(records: readonly AuditRecord[]): ChainHead | undefined {
  const first = records[0];
  if (first === undefined || first.seq <= 1) return undefined;
  for (const r of records) {
    const e = r.event;
    if (
      e['event.category'] === 'audit' &&
      e['event.action'] === 'prune' &&
      e['portcullis.audit.boundary.seq'] === first.seq - 1 &&
      typeof e['portcullis.audit.boundary.hash'] === 'string'
    ) {
      return { seq: first.seq - 1, hash: e['portcullis.audit.boundary.hash'] };
    }
  }
  return undefined;
}

/** Verifies a store (or file) chain that may have been pruned. */
export function verifyPrunedChain(
  records: readonly AuditRecord[],
  checkpoints: readonly Checkpoint[],
  verifier: CheckpointVerifier,
): Promise<VerifyResult> {
  const after = pruneAnchor(records);
  return verifyChain(records, checkpoints, verifier, after === undefined ? {} : { after });
}

export interface ArchiveHeader {
  readonly type: 'portcullis-audit-archive';
  readonly version: 1;
  readonly after: ChainHead;
  readonly through: ChainHead;
  readonly records: number;
}

/** Thrown when an archive cannot be read at all (not gzip, no header): it verifies as edited. */
export class ArchiveFormatError extends Error {
  readonly code = 'AUDIT_ARCHIVE_FORMAT';
}

function isHead(v: unknown): v is ChainHead {
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof (v as ChainHead).seq === 'number' &&
    typeof (v as ChainHead).hash === 'string'
  );
}

/** Reads an archive: its header, records and checkpoints. */
export async function readArchive(
  file: string,
): Promise<{ header: ArchiveHeader; records: AuditRecord[]; checkpoints: Checkpoint[] }> {
  let text: string;
  try {
    text = gunzipSync(await readFile(file)).toString('utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw error;
    throw new ArchiveFormatError('the archive is not a readable gzip file (damaged or edited)');
  }
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  let header: unknown;
  try {
    header = JSON.parse(lines[0] ?? '');
  } catch {
    header = undefined;
  }
  const h = header as Partial<ArchiveHeader> | undefined;
  if (h?.type !== 'portcullis-audit-archive' || !isHead(h.after) || !isHead(h.through)) {
    throw new ArchiveFormatError('the archive has no valid header');
  }
  const records: AuditRecord[] = [];
  const checkpoints: Checkpoint[] = [];
  for (const line of lines.slice(1)) {
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      value = undefined;
    }
    if (typeof value === 'object' && value !== null && (value as { type?: unknown }).type === 'checkpoint') {
      const { seq, hash, at, kid, sig } = value as Checkpoint;
      checkpoints.push({ seq, hash, at, kid, sig });
      continue;
    }
    try {
      records.push(recordFromJson(value));
    } catch {
      // A damaged line fails verification as an edited record.
      const seq = (records.at(-1)?.seq ?? h.after.seq) + 1;
      records.push({ seq, prev: '', hash: '', event: {} as AuditRecord['event'] });
    }
  }
  return { header: h as ArchiveHeader, records, checkpoints };
}

/**
 * Verifies an archive on its own: the chain from `after` to the boundary and the signed
 * checkpoint at the boundary (without it, a cut archive could not be told from a whole one).
 */
export async function verifyArchive(file: string, verifier: CheckpointVerifier): Promise<VerifyResult> {
  let read;
  try {
    read = await readArchive(file);
  } catch (error) {
    if (!(error instanceof ArchiveFormatError)) throw error;
    return {
      ok: false,
      records: 0,
      head: { seq: 0, hash: '' },
      checkpoints: 0,
      checkpointedSeq: 0,
      problem: { kind: 'edited', seq: 0, message: error.message },
    };
  }
  const { header, records, checkpoints } = read;
  const result = await verifyChain(records, checkpoints, verifier, { after: header.after });
  if (!result.ok) return result;
  if (result.head.seq !== header.through.seq || result.head.hash !== header.through.hash) {
    return {
      ...result,
      ok: false,
      problem: {
        kind: result.head.seq < header.through.seq ? 'truncated' : 'edited',
        seq: Math.min(result.head.seq + 1, header.through.seq),
        message: `the archive ends at record ${String(result.head.seq)} but its header names record ${String(header.through.seq)}`,
      },
    };
  }
  if (result.checkpointedSeq < header.through.seq) {
    return {
      ...result,
      ok: false,
      problem: {
        kind: 'bad-checkpoint',
        seq: header.through.seq,
        message: `no valid signed checkpoint vouches for the archive's last record ${String(header.through.seq)}`,
      },
    };
  }
  return result;
}
