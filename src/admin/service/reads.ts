/**
 * Read-only admin resources: the API inventory, API keys, the effective configuration (secrets
 * masked), signing keys, alert rules, the audit trail and its verification. Each read is an
 * audited admin action (who read what, with which role).
 */
import { auditPage, DEFAULT_PAGE, queryStoreLog } from '../../audit/query.ts';
import type { AuditQuery } from '../../audit/query.ts';
import { readStoreLog } from '../../audit/sinks/store.ts';
import { verifyPrunedChain } from '../../audit/prune.ts';
import type { VerifyResult } from '../../audit/chain.ts';
import type { Config } from '../../config/schema.ts';
import type { OpenApiDocument } from '../../gateway/openapi.ts';
import { storeAuditVerifier } from '../../keys/index.ts';
import type { KeySummary } from '../../keys/index.ts';
import type { Store } from '../../store/index.ts';
import { listApiKeys } from '../../tokens/api-keys.ts';
import type { ApiKeyRecord } from '../../tokens/api-keys.ts';
import type { AdminActor } from '../actor.ts';
import { AdminError, adminAction } from './context.ts';
import type { AdminServices } from './context.ts';

export interface InventoryOperation {
  readonly method: string;
  readonly path: string;
  readonly operationId: string | null;
  /** `public`, or the schemes a caller may use (any one requirement suffices). */
  readonly authentication: readonly string[];
  readonly scopes: readonly string[];
}

export interface InventoryApi {
  readonly name: string;
  readonly basePath: string;
  readonly title: string;
  readonly version: string;
  readonly owner: string | null;
  readonly dataClassification: string | null;
  readonly environment: string | null;
  readonly deprecated: boolean;
  readonly sunsetAt: string | null;
  /** Documented exceptions in the configuration (they are global; listed on every API). */
  readonly exceptions: readonly string[];
  readonly operations: readonly InventoryOperation[];
}

/** The inventory of every API from the configuration and its contract (no I/O). */
export function inventory(
  config: Pick<Config, 'apis' | 'exceptions'>,
  documents: ReadonlyMap<string, OpenApiDocument>,
): InventoryApi[] {
  return config.apis.map((api) => {
    const doc = documents.get(api.name);
    const schemes = doc?.securitySchemes ?? {};
    return {
      name: api.name,
      basePath: api.basePath,
      title: doc?.title ?? api.name,
      version: doc?.version ?? '',
      owner: api.owner ?? null,
      dataClassification: api.dataClassification ?? null,
      environment: api.environment ?? null,
      deprecated: api.deprecation !== undefined,
      sunsetAt: api.deprecation?.sunsetAt ?? null,
      exceptions: config.exceptions.map((e) => `${e.id} (${e.control}, until ${e.expires})`),
      operations: (doc?.operations ?? []).map((op) => {
        const auth = new Set<string>();
        const scopes = new Set<string>();
        for (const req of op.security) {
          for (const [name, list] of Object.entries(req)) {
            const s = schemes[name];
            auth.add(typeof s?.type === 'string' ? `${name} (${s.type})` : name);
            for (const x of list) scopes.add(x);
          }
        }
        return {
          method: op.method,
          path: api.basePath + (op.path === '/' ? '' : op.path),
          operationId: op.operationId ?? null,
          authentication: op.security.length === 0 ? ['public'] : [...auth],
          scopes: [...scopes].sort(),
        };
      }),
    };
  });
}

export function listInventory(
  svc: AdminServices,
  actor: AdminActor,
  documents: ReadonlyMap<string, OpenApiDocument>,
): Promise<InventoryApi[]> {
  return adminAction(svc, actor, { action: 'apis-list', permission: 'apis:read' }, () =>
    Promise.resolve(inventory(svc.config(), documents)),
  );
}

export function apiKeysList(svc: AdminServices, actor: AdminActor, store: Store): Promise<ApiKeyRecord[]> {
  return adminAction(svc, actor, { action: 'api-keys-list', permission: 'apikeys:read' }, () =>
    listApiKeys(store),
  );
}

const SECRET_KEY = /(secret|password|passphrase|pin|token|credential|privatekey|apikey)$/i;
export const MASK = '********';

/** A copy of `value` with every secret-bearing key masked, and passwords removed from URLs. */
export function maskSecrets(value: unknown, key = ''): unknown {
  if (Array.isArray(value)) return value.map((v) => maskSecrets(v, key));
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, maskSecrets(v, k)]));
  }
  if (typeof value !== 'string') return value;
  if (SECRET_KEY.test(key)) return MASK;
  if (/url$/i.test(key) && /^[a-z][a-z0-9+.-]*:\/\/[^/@\s]*@/i.test(value)) {
    return value.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@\s]*@/i, `$1${MASK}@`);
  }
  return value;
}

export function effectiveConfig(svc: AdminServices, actor: AdminActor): Promise<unknown> {
  return adminAction(svc, actor, { action: 'config-read', permission: 'config:read' }, () =>
    Promise.resolve(maskSecrets(svc.config())),
  );
}

export function signingKeys(
  svc: AdminServices,
  actor: AdminActor,
  keys: { list(): KeySummary[] } | undefined,
): Promise<KeySummary[]> {
  return adminAction(svc, actor, { action: 'keys-list', permission: 'keys:read' }, () =>
    Promise.resolve(keys?.list() ?? []),
  );
}

export function alertRules(svc: AdminServices, actor: AdminActor): Promise<unknown> {
  return adminAction(svc, actor, { action: 'alerts-read', permission: 'alerts:read' }, () =>
    Promise.resolve(maskSecrets(svc.config().alerts)),
  );
}

export function auditSearch(
  svc: AdminServices,
  actor: AdminActor,
  q: AuditQuery,
): Promise<ReturnType<typeof auditPage>> {
  return adminAction(svc, actor, { action: 'audit-search', permission: 'audit:read' }, async () => {
    if (!svc.config().audit.store.enabled) {
      throw new AdminError('not-found', 'audit-store-sink-off', 'the audit trail is not in the store');
    }
    return auditPage(await queryStoreLog(svc.db, q), q.limit ?? DEFAULT_PAGE);
  });
}

export function auditVerify(svc: AdminServices, actor: AdminActor): Promise<VerifyResult> {
  return adminAction(
    svc,
    actor,
    { action: 'audit-verify', permission: 'audit:verify', category: 'audit' },
    async () => {
      if (!svc.config().audit.store.enabled) {
        throw new AdminError('not-found', 'audit-store-sink-off', 'the audit trail is not in the store');
      }
      const log = await readStoreLog(svc.db);
      return verifyPrunedChain(log.records, log.checkpoints, storeAuditVerifier(svc.db));
    },
    (r) => (r.ok ? {} : { 'event.reason': 'chain-broken' }),
  );
}
