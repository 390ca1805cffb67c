/**
 * The stdout sink: one JSON line per record (the event's fields plus the chain fields) for a
 * container runtime or log shipper to collect.
 */
import type { Writable } from 'node:stream';
import { recordToJson } from '../chain.ts';
import type { ForwardSink } from './types.ts';

export function stdoutSink(stream: Writable = process.stdout): ForwardSink {
  return {
    name: 'stdout',
    deliver(records) {
      const text = records.map((r) => JSON.stringify(recordToJson(r)) + '\n').join('');
      return new Promise<void>((resolve, reject) => {
        stream.write(text, (err) => {
          if (err) reject(err);
          else resolve();
        });
      });
    },
    close: () => Promise.resolve(),
  };
}
