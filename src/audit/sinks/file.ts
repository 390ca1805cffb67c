/**
 * The JSON Lines file sink: one record per line (the event's fields plus the chain fields),
 * files and directories owner-only (0600 / 0700), every batch fsynced before it counts as
 * written.
 *
 * Rotation by size: when `audit.jsonl` reaches `maxBytes` it is renamed to
 * `audit-<first seq, 12 digits>.jsonl` and a new file starts; the chain continues across files,
 * so `portcullis audit verify` reads them in order. Checkpoints go to `audit.checkpoints.jsonl`
 * beside them. Rotated files are never deleted by Portcullis: archiving them is an operator's
 * decision, and verification then needs the seq and hash the archive ended with.
 *
 * Single writer: one process per file. A torn last line (a crash in the middle of a write
 * that was never acknowledged) is cut off when the file is opened.
 */
import { closeSync, fstatSync, fsyncSync, ftruncateSync, openSync, readSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { chainEvents, EMPTY_HEAD, recordFromJson, recordToJson } from '../chain.ts';
import type { AuditRecord, ChainHead, Checkpoint } from '../chain.ts';
import type { ChainSink, ForwardSink } from './types.ts';

export interface FileSinkOptions {
  /** The current file, e.g. `<dataDir>/audit/audit.jsonl`. */
  readonly path: string;
  /** Rotate once the current file reaches this size (bytes). */
  readonly maxBytes: number;
}

const ROTATED = /^(.*)-(\d{12})\.jsonl$/;

function stem(path: string): string {
  return basename(path).replace(/\.jsonl$/, '');
}

/** The checkpoint file beside `path`. */
export function checkpointFile(path: string): string {
  return join(dirname(path), `${stem(path)}.checkpoints.jsonl`);
}

/** The rotated files of `path` (oldest first), then `path` itself. */
export async function logFiles(path: string): Promise<string[]> {
  const dir = dirname(path);
  const names = await readdir(dir).catch(() => [] as string[]);
  const rotated = names
    .filter((n) => {
      const m = ROTATED.exec(n);
      return m !== null && m[1] === stem(path);
    })
    .sort();
  return [...rotated.map((n) => join(dir, n)), path];
}

/** Cuts a torn last line; returns the last complete line (or undefined). */
function repairAndLastLine(path: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, 'r+');
  } catch {
    return undefined;
  }
  try {
    const size = fstatSync(fd).size;
    const chunk = Math.min(size, 1 << 20);
    const buf = Buffer.alloc(chunk);
    readSync(fd, buf, 0, chunk, size - chunk);
    const text = buf.toString('utf8');
    const lastNl = text.lastIndexOf('\n');
    if (lastNl !== text.length - 1) {
      ftruncateSync(fd, size - chunk + (lastNl + 1));
      fsyncSync(fd);
    }
    const body = text.slice(0, lastNl + 1).trimEnd();
    const line = body.slice(body.lastIndexOf('\n') + 1);
    return line === '' ? undefined : line;
  } finally {
    closeSync(fd);
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const h = await open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

export interface FileSink extends ChainSink, ForwardSink {}

/** Opens (creating) the file sink; usable as the chain sink or as a forward sink. */
export async function fileSink(options: FileSinkOptions): Promise<FileSink> {
  const { path, maxBytes } = options;
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  let head: ChainHead = EMPTY_HEAD;
  const files = await logFiles(path);
  for (const f of [...files].reverse()) {
    const line = repairAndLastLine(f);
    if (line === undefined) continue;
    const r = recordFromJson(JSON.parse(line));
    head = { seq: r.seq, hash: r.hash };
    break;
  }
  let handle: FileHandle = await open(path, 'a', 0o600);
  await handle.chmod(0o600);
  let size = (await handle.stat()).size;
  let firstSeq = size === 0 ? head.seq + 1 : await firstSeqOf(path);
  let chain: Promise<unknown> = Promise.resolve();

  async function write(records: readonly AuditRecord[]): Promise<void> {
    const fresh = records.filter((r) => r.seq > head.seq);
    if (fresh.length === 0) return;
    const text = fresh.map((r) => JSON.stringify(recordToJson(r)) + '\n').join('');
    await handle.write(text);
    await handle.datasync();
    size += Buffer.byteLength(text);
    const last = fresh.at(-1);
    if (last !== undefined) head = { seq: last.seq, hash: last.hash };
    if (size >= maxBytes) {
      await handle.close();
      await rename(path, join(dirname(path), `${stem(path)}-${String(firstSeq).padStart(12, '0')}.jsonl`));
      handle = await open(path, 'a', 0o600);
      await fsyncDir(dirname(path));
      size = 0;
      firstSeq = head.seq + 1;
    }
  }

  /** Serialises writers (the chain sink and checkpoints share the handle state). */
  function serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = chain.then(fn, fn);
    chain = run.catch(() => undefined);
    return run;
  }

  return {
    name: 'file',
    head: () => Promise.resolve(head),
    append: (events) =>
      serial(async () => {
        const records = chainEvents(head, events);
        await write(records);
        return records;
      }),
    deliver: (records) => serial(() => write(records)),
    appendCheckpoint: (cp) =>
      serial(async () => {
        const h = await open(checkpointFile(path), 'a', 0o600);
        try {
          await h.write(JSON.stringify(cp) + '\n');
          await h.datasync();
        } finally {
          await h.close();
        }
      }),
    close: () => serial(() => handle.close()),
  };
}

async function firstSeqOf(path: string): Promise<number> {
  const text = await readFile(path, 'utf8');
  const first = text.slice(0, text.indexOf('\n'));
  return recordFromJson(JSON.parse(first)).seq;
}

/**
 * Reads a file log (rotated files oldest first, then the current one) and its checkpoints. A
 * line that does not parse becomes a record that fails verification as edited.
 */
export async function readFileLog(
  path: string,
): Promise<{ records: AuditRecord[]; checkpoints: Checkpoint[] }> {
  const records: AuditRecord[] = [];
  for (const f of await logFiles(path)) {
    const text = await readFile(f, 'utf8').catch(() => '');
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      try {
        records.push(recordFromJson(JSON.parse(line)));
      } catch {
        const seq = (records.at(-1)?.seq ?? 0) + 1;
        records.push({ seq, prev: '', hash: '', event: {} as AuditRecord['event'] });
      }
    }
  }
  const cpText = await readFile(checkpointFile(path), 'utf8').catch(() => '');
  const checkpoints: Checkpoint[] = [];
  for (const line of cpText.split('\n')) {
    if (line.trim() === '') continue;
    try {
      checkpoints.push(JSON.parse(line) as Checkpoint);
    } catch {
      // A damaged checkpoint line vouches for nothing.
    }
  }
  return { records, checkpoints };
}
