/**
 * Test helper (audit crash test): emits durable events in a loop and prints each one's reason
 * and seq after `emitDurable` resolved. The test SIGKILLs it at a random moment.
 */
import { join } from 'node:path';
import { AuditLog } from '../log.ts';
import { fileCheckpointSigner } from '../signer.ts';
import { storeSink } from '../sinks/store.ts';
import { openStore } from '../../store/index.ts';

const [dataDir, run] = process.argv.slice(2) as [string, string];
const store = await openStore({ url: 'sqlite:db.sqlite', dataDir });
const log = await AuditLog.open({
  chain: storeSink(store),
  signer: fileCheckpointSigner(dataDir),
  spoolDir: join(dataDir, 'audit', 'spool'),
  checkpointEvery: 7,
});
for (let i = 0; ; i++) {
  void log.emit({
    'event.category': 'authentication',
    'event.action': 'token-verify',
    'event.outcome': 'success',
    'event.reason': `b${run}-${String(i)}`,
  });
  await log.emitDurable({
    'event.category': 'admin',
    'event.action': 'client-create',
    'event.outcome': 'success',
    'event.reason': `d${run}-${String(i)}`,
  });
  process.stdout.write(`d${run}-${String(i)} ${String(log.head?.seq)}\n`);
}
