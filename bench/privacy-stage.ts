/**
 * What the privacy stage costs per request on an annotated operation once the subject's choices
 * are cached (issue 16): the stage function alone, against a real store (SQLite in memory) and the
 * real privacy service, for a subject with consents granted. Unannotated operations have no such
 * stage at all (test/privacy-contract.test.ts checks their chain), so they pay nothing.
 *
 *   sh scripts/node24.sh bench/privacy-stage.ts [--iterations 200000]
 */
import { openStore } from '../src/store/index.ts';
import { readOperationPrivacy } from '../src/privacy/annotations.ts';
import { createPrivacyService } from '../src/privacy/service.ts';
import { compilePrivacyStage } from '../src/gateway/stages/privacy/index.ts';
import type { GatewayRequest } from '../src/gateway/context.ts';

const arg = process.argv.indexOf('--iterations');
const iterations = arg > 0 ? Number(process.argv[arg + 1]) : 200_000;

const store = await openStore({ url: 'sqlite::memory:', dataDir: '/tmp' });
const service = createPrivacyService({
  db: store.db,
  audit: { emitDurable: () => Promise.resolve() },
});
const actor = { listener: 'gateway', source: 'subject' } as const;
for (const purpose of ['analytics', 'profiling']) {
  await service.setConsent('user-1', { purpose, granted: true, noticeVersion: 'v1' }, actor);
}
const privacy = readOperationPrivacy(
  {
    method: 'GET',
    path: '/insights',
    operationId: 'insights',
    definition: { 'x-portcullis-purposes': ['analytics', 'profiling'], responses: {} },
  },
  [],
);
const stage = compilePrivacyStage(privacy, service);
const req = {
  headers: {},
  principal: { scheme: 'oauth2', subject: 'user-1', clientId: 'c', scopes: new Set(['x']) },
  clientIp: '127.0.0.1',
  correlationId: 'x',
} as unknown as GatewayRequest;

for (let i = 0; i < 10_000; i++) await stage(req);
const start = process.hrtime.bigint();
for (let i = 0; i < iterations; i++) await stage(req);
const ns = Number(process.hrtime.bigint() - start) / iterations;
process.stdout.write(
  `privacy stage, cached choices: ${ns.toFixed(0)} ns per request (${String(iterations)} iterations)\n`,
);
await store.close();
