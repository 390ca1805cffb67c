/**
 * Sink contracts. One sink is the chain's record of truth (a {@link ChainSink}: the store, or
 * the JSON Lines file when the store sink is off): it chains events after its own head and
 * makes them durable. The others ({@link ForwardSink}: files, stdout, syslog) receive the
 * records after they were committed, so every sink carries the same chain.
 */
import type { AuditRecord, ChainHead, Checkpoint } from '../chain.ts';
import type { AuditEvent } from '../event.ts';

export interface ChainSink {
  readonly name: string;
  /** The last record's seq and hash. */
  head(): Promise<ChainHead>;
  /**
   * Chains `events` after the current head and makes them durable (fsync, commit) before
   * resolving. Events whose `event.id` is already recorded are skipped (redelivery after a
   * crash), so the result may be shorter than the input. `fresh`: the caller guarantees the
   * events were never handed to a sink before (the check may be skipped; the unique `event.id`
   * still refuses a duplicate, and the caller then redelivers through the checked path).
   */
  append(events: readonly AuditEvent[], fresh?: boolean): Promise<AuditRecord[]>;
  /** Records a checkpoint durably; a second one for the same seq is ignored. */
  appendCheckpoint(checkpoint: Checkpoint): Promise<void>;
  close(): Promise<void>;
}

export interface ForwardSink {
  readonly name: string;
  /**
   * Delivers committed records in order; rejects when the destination is unavailable (the
   * caller spools and retries, so a record may be delivered twice after a failure).
   */
  deliver(records: readonly AuditRecord[]): Promise<void>;
  close(): Promise<void>;
}
