/**
 * Starting, reloading and stopping Portcullis.
 *
 * Reload (SIGHUP, or a change to the configuration or an OpenAPI file it names): the new
 * configuration is loaded and compiled in full, then replaces the old runtime in one assignment.
 * A configuration that fails anywhere is refused with a log line naming key and line; the old
 * runtime keeps serving. Listener settings (ports, TLS files, timeouts) apply at the next start.
 *
 * Shutdown (SIGTERM, SIGINT): listeners stop accepting, in-flight requests drain for up to
 * `gateway.shutdownGraceMs`, then remaining connections are closed.
 */
import { watchTlsFailures } from './tls-failures.ts';
import { rateLimitKeyHasher } from '../audit/request-fields.ts';
import { sweepExceptions } from '../admin/service/exceptions.ts';
import { openKms } from '../keys/kms.ts';
import { createUsers, kmsSecretWrapper } from '../oauth/users.ts';
import { mkdir } from 'node:fs/promises';
import { readFileSync, watch } from 'node:fs';
import type { FSWatcher } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { basename, dirname, resolve } from 'node:path';
import type { Server } from 'node:http';
import { isDeepStrictEqual } from 'node:util';
import { ConfigError, formatIssue, loadConfig } from '../config/load.ts';
import type { LoadedConfig } from '../config/load.ts';
import { compileRuntime } from '../gateway/compile.ts';
import { logCircuitStateChanges } from '../gateway/resilience/guard.ts';
import { createLimitBackends } from '../gateway/stages/rate-limit/index.ts';
import type { TokenSource } from '../gateway/compile.ts';
import { createApiKeyAuthority } from '../tokens/api-keys.ts';
import { createIdentitySigner } from '../tokens/identity.ts';
import { createPrivacyService } from '../privacy/service.ts';
import type { PrivacyService } from '../privacy/service.ts';
import { createMetrics } from '../admin/metrics.ts';
import { openAuditLog } from '../audit/index.ts';
import type { AuditLog } from '../audit/index.ts';
import type { Metrics } from '../admin/metrics.ts';
import { startAlerting } from '../audit/alerts.ts';
import type { AlertEngine } from '../audit/alerts.ts';
import type { CircuitStateChange } from '../gateway/resilience/guard.ts';
import { onDegraded, onLimited, onRestored } from '../gateway/stages/rate-limit/index.ts';
import { setupCluster } from './cluster.ts';
import { createObserver } from './observe.ts';
import type { Runtime } from '../gateway/compile.ts';
import { openKeyManager } from '../keys/index.ts';
import { createSealers } from '../keys/envelope.ts';
import { applyFipsMode, decideFipsMode, fipsProviderActive } from '../keys/fips.ts';
import type { StoreKeyManager } from '../keys/index.ts';
import type { AuthorizationServer } from '../oauth/provider.ts';
import { openStore, recordConfigVersion } from '../store/index.ts';
import type { Store } from '../store/index.ts';
import { createAdminServer } from './admin-server.ts';
import type { AdminApp } from './admin-server.ts';
import { createGatewayServer } from './gateway-server.ts';
import type { GatewayServer, RuntimeHolder } from './gateway-server.ts';
import { createLogger, describeError } from '../log/index.ts';
import type { Logger } from '../log/index.ts';
import { createRedirectServer } from './redirect-server.ts';
import { LISTEN_BACKLOG } from './connection-guard.ts';
import { protectAdmin, protectGateway, protectRedirect } from './protect-listeners.ts';
import type * as DemoModule from '../../examples/demo-upstream/server.ts';
import { loadTlsMaterial } from './tls.ts';
import type { TlsMaterial } from './tls.ts';

export interface StartOptions {
  readonly configFile: string;
  readonly dataDir: string;
  /** A logger to use instead of JSON on stdout (tests capture logs through this). */
  readonly logger?: Logger;
  /** Install SIGHUP/SIGTERM/SIGINT handlers (the CLI does; in-process tests don't). */
  readonly signals?: boolean;
  /** Watch the configuration and its OpenAPI files for changes. */
  readonly watch?: boolean;
  /**
   * Test hook: stands in for `crypto.getFips()` (1: the FIPS provider is active). The restriction
   * logic is then exercised on an OpenSSL without a FIPS provider; never set it in production.
   */
  readonly getFips?: () => number;
  /**
   * What this process serves: `all` (default), `gateway` (APIs only) or `authorization-server`
   * (only the OAuth/OIDC paths; `oauth.enabled` must be on).
   */
  readonly role?: 'all' | 'gateway' | 'authorization-server';
  /** This process's name among several on one data directory (`--workers`), e.g. `worker-2`. */
  readonly instance?: string;
  /** What the admin `/metrics` answers instead of this process's registry (every worker's). */
  readonly metricsText?: () => Promise<string>;
}

export interface ReloadResult {
  readonly status: 'applied' | 'unchanged' | 'refused';
  readonly version: string;
  readonly issues?: readonly string[];
}

export interface Portcullis {
  readonly gatewayUrl: string;
  readonly adminUrl: string | undefined;
  readonly redirectUrl: string | undefined;
  readonly demoUpstreamUrl: string | undefined;
  readonly tls: TlsMaterial;
  readonly logger: Logger;
  readonly store: Store;
  /** The key manager and authorization server, when this process serves OAuth. */
  readonly keys: StoreKeyManager | undefined;
  readonly audit: AuditLog;
  readonly metrics: Metrics;
  readonly authorizationServer: AuthorizationServer | undefined;
  /** Consents and opt-outs of data subjects (issue 16): the service the admin side calls. */
  readonly privacy: PrivacyService;
  runtime(): Runtime;
  reload(trigger?: string): Promise<ReloadResult>;
  close(): Promise<void>;
}

/** Settings that belong to listeners and therefore need a restart to change. */
function listenerSettings(loaded: LoadedConfig): unknown {
  const { gateway, admin, store, demoUpstream } = loaded.config;
  return {
    host: gateway.host,
    port: gateway.port,
    http2: gateway.http2,
    tls: gateway.tls,
    timeouts: gateway.timeouts,
    connections: gateway.connections,
    redirectHttp: gateway.redirectHttp,
    mtls: gateway.mtls?.caFiles,
    apiKeys: gateway.apiKeys,
    admin,
    store,
    redis: loaded.config.redis,
    cluster: loaded.config.cluster,
    demoUpstream,
    logging: loaded.config.logging,
  };
}

function summarize(rt: Runtime): string {
  return rt.apis
    .map((a) => `${a.name}@${a.basePath} (${String(a.document.operations.length)} operations)`)
    .join(', ');
}

function urlOf(scheme: string, address: AddressInfo | string | null, host: string): string {
  if (address === null || typeof address === 'string') return '';
  const h =
    host === '127.0.0.1' || host === '0.0.0.0' || host === '::'
      ? host === '::'
        ? '[::1]'
        : '127.0.0.1'
      : host;
  return `${scheme}://${h.includes(':') && !h.startsWith('[') ? `[${h}]` : h}:${String(address.port)}`;
}

async function listen(
  server: Server | GatewayServer['server'] | AdminApp['server'],
  port: number,
  host: string,
): Promise<void> {
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    // Issue 12: a connection flood overflowed Node's default backlog (511): SYNs dropped, 1 s retries.
    server.listen({ port, host, backlog: LISTEN_BACKLOG }, () => {
      server.off('error', fail);
      ok();
    });
  });
}

export async function startPortcullis(options: StartOptions): Promise<Portcullis> {
  const configFile = resolve(options.configFile);
  const dataDir = resolve(options.dataDir);
  const loaded = await loadConfig(configFile);
  const logger = options.logger ?? createLogger(loaded.config.logging.level);
  for (const w of loaded.warnings) logger.warn({ event: 'config-warning' }, formatIssue(loaded.file, w));
  // FIPS mode (crypto.fips): decided before any key or listener exists; refuses to start when
  // required and the OpenSSL FIPS provider is not active.
  const fips = decideFipsMode(loaded.config, fipsProviderActive(options.getFips), (path) => {
    const at = loaded.locate(path.split('.'));
    return at === undefined
      ? `${loaded.file}: ${path}`
      : `${loaded.file}:${String(at.line)}:${String(at.column)}: ${path}`;
  });
  applyFipsMode(fips);
  (fips.configured !== 'off' && fips.mode !== 'fips' ? logger.warn.bind(logger) : logger.info.bind(logger))(
    {
      event: 'crypto-mode',
      fips: fips.mode,
      configured: fips.configured,
      providerActive: fips.providerActive,
    },
    fips.mode === 'fips' ? 'FIPS mode: approved algorithms only' : 'cryptography: standard mode (not FIPS)',
  );

  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const store = await openStore({
    url: loaded.config.store.url,
    dataDir,
    waits: { connectMs: loaded.config.store.connectTimeoutMs, queryMs: loaded.config.store.queryTimeoutMs },
    onPoolError: (err) =>
      logger.warn({ event: 'store-error', error: describeError(err) }, 'store connection error'),
  });
  const cleanups: (() => Promise<void>)[] = [
    () => {
      applyFipsMode({ ...fips, mode: 'standard' });
      return Promise.resolve();
    },
    () => store.close(),
  ];
  const cleanup = async () => {
    for (const fn of cleanups.reverse()) await fn().catch(() => undefined);
  };
  try {
    const { config } = loaded;
    /** The configuration in force, for parts that read it per request (login pages). */
    let currentLoaded: LoadedConfig = loaded;
    const role = options.role ?? 'all';
    if (role === 'authorization-server' && !config.oauth.enabled) {
      throw new Error('--role authorization-server needs oauth.enabled in the configuration');
    }
    let authorizationServer: AuthorizationServer | undefined;
    let tokens: TokenSource | undefined;
    // The key manager signs tokens and caller assertions and holds the peppers of keyed hashes
    // (API keys); its keys live in the store, shared by every process.
    const openedKeys = await openKeyManager({
      store,
      dataDir,
      config: config.oauth,
      keys: config.keys,
      logger,
    });
    const keys: StoreKeyManager = openedKeys;
    // Encryption at rest (idempotency records, authorization-server payloads): data keys wrapped
    // by the key manager's ring (src/keys/envelope.ts).
    const sealers = createSealers({ db: store.db, kms: openedKeys.kms });
    cleanups.push(async () => {
      openedKeys.close();
    });
    // Observation: one metrics registry, the audit log (durable before control-plane changes
    // report success), alert rules over its stream, and the observer that feeds both.
    const metrics = createMetrics();
    // Rate-limit counters, Redis connections and idempotency records outlive each reload.
    const backends = createLimitBackends({ logger, nodes: config.cluster.nodes });
    cleanups.push(() => backends.close());
    // Shared with the other gateway processes through Redis when there is one: the revocation
    // denylist, the DPoP replay cache and the signals that keep caches in step.
    const cluster = await setupCluster({ config, store, backends, metrics, logger });
    cleanups.push(() => cluster.close());
    if (config.oauth.enabled) {
      // The gateway verifies the built-in server's tokens in every role.
      tokens = {
        issuer: config.gateway.publicUrl,
        keys: () => openedKeys.publicJwks(),
        isRevoked: (jti) => cluster.revocations.isRevoked(jti),
      };
    }
    // Assigned once alerting starts; the audit log reports sink errors to it from then on.
    let alerts: AlertEngine | undefined = undefined;
    const audit = await openAuditLog({
      config: config.audit,
      dataDir,
      store,
      // The audit worker thread opens its own connection to the same database.
      storeUrl: config.store.url,
      // Checkpoints are signed by the key manager's audit-checkpoint key (KMS-wrapped).
      signer: openedKeys.auditCheckpointSigner(),
      registry: metrics.registry,
      ...(options.instance === undefined ? {} : { instance: options.instance }),
      onError: (err, sink) => {
        alerts?.sinkError(sink);
        logger.warn({ event: 'audit-sink-error', sink, error: describeError(err) }, 'audit sink error');
      },
    });
    cleanups.push(() => audit.close());
    alerts = startAlerting({
      config: config.alerts,
      audit,
      registry: metrics.registry,
      resolvePath: (f) => loaded.resolvePath(f),
      onError: (err, what) =>
        logger.warn({ event: 'alert-error', what, error: describeError(err) }, 'alert delivery problem'),
    });
    const alertEngine = alerts;
    cleanups.push(async () => {
      await alertEngine.close();
    });
    const observer = createObserver(audit, metrics, logger, {
      requestEvents: config.audit.requestEvents,
      // Issue 13: one key for every process of the store, so hashed rate-limit keys correlate.
      rateLimitKeyHash: rateLimitKeyHasher(
        Buffer.from(openedKeys.hmac('client-secret', 'portcullis/audit-rate-limit-key/v1'), 'base64url'),
      ),
    });
    const unsubscribe = [
      onLimited((e) => {
        metrics.rateLimited(e.dimension);
      }),
      onDegraded((e) => {
        observer.event({
          'event.category': 'rate-limit',
          'event.action': 'limiter-degraded',
          'event.outcome': 'failure',
          'event.reason': `redis unavailable (${e.error}); local limits apply: 1/${String(config.cluster.nodes)} of each limit per process`,
          'portcullis.listener': 'gateway',
        });
      }),
      onRestored(() => {
        observer.event({
          'event.category': 'rate-limit',
          'event.action': 'limiter-restored',
          'event.outcome': 'success',
          'event.reason': 'redis reachable again; shared limits apply',
          'portcullis.listener': 'gateway',
        });
      }),
      openedKeys.onChange(() => {
        void observer
          .durable({
            'event.category': 'key-lifecycle',
            'event.action': 'key-set-changed',
            'event.outcome': 'success',
            'portcullis.key.kid': openedKeys.current().kid,
            'portcullis.listener': 'gateway',
          })
          .catch(() => undefined);
      }),
    ];
    cleanups.push(async () => {
      for (const off of unsubscribe) off();
    });
    await observer.durable({
      'event.category': 'configuration',
      'event.action': 'config-load',
      'event.outcome': 'success',
      'portcullis.listener': 'gateway',
      'portcullis.config.summary': `started as ${role}`,
    });

    const apiKeys = createApiKeyAuthority(store, openedKeys, {
      environment: config.gateway.apiKeys.environment === 'test' ? 'test' : 'live',
      onAnomaly: (event) => {
        logger.warn({ event: 'api-key-anomaly', anomaly: event }, 'API key anomaly');
        // Issue 13: one action the `api-key-anomaly` alert rule matches; the type is the reason.
        // A key used after revocation, expiry or rotation was refused (failure); a new network or
        // a volume spike was allowed and is noticed (success).
        observer.event({
          'event.category': 'authentication',
          'event.action': 'api-key-anomaly',
          'event.outcome': event.type.startsWith('used-after-') ? 'failure' : 'success',
          'event.reason': event.type,
          'portcullis.api_key_id': event.keyId,
          'portcullis.listener': 'gateway',
        });
      },
      onError: (err) =>
        logger.warn({ event: 'api-key-usage-error', error: describeError(err) }, 'API key usage'),
    });
    cleanups.push(() => apiKeys.close());
    const privacy = createPrivacyService({
      db: store.db,
      audit: { emitDurable: (e) => observer.durable(e) },
      // Other processes drop their cached copies at once (Redis), else within 5 s.
      onChange: () => {
        cluster.privacyChanged();
      },
    });
    const logCircuit = logCircuitStateChanges(logger);
    const compileOptions = {
      backends,
      onCircuitStateChange: (change: CircuitStateChange) => {
        logCircuit(change);
        metrics.circuitState(change.upstream, change.to);
        observer.event({
          'event.category': 'upstream',
          'event.action': `circuit-${change.to}`,
          'event.outcome': change.to === 'closed' ? 'success' : 'failure',
          'portcullis.api': change.api,
          'portcullis.listener': 'gateway',
        });
      },
      tokens,
      apiKeys,
      dpopReplay: cluster.dpopReplay,
      db: store.db,
      idempotencySealer: sealers.for('idempotency'),
      // Issue 16: consents and opt-outs (changes audited durably), contract warnings logged.
      privacy,
      onWarning: (message: string) => {
        logger.warn({ event: 'contract-warning' }, message);
      },
      identity: createIdentitySigner({
        issuer: config.gateway.publicUrl,
        signingJwks: () => openedKeys.signingJwks(),
        ttlSeconds: config.gateway.identity.ttlSeconds,
        currentKid: () => openedKeys.current().kid,
        currentSigner: () => {
          const kid = openedKeys.current().kid;
          return openedKeys.signers().find((s) => s.kid === kid);
        },
      }),
    };

    const first = await compileRuntime(loaded, compileOptions);
    cleanups.push(() => first.close());
    // Created after the first compile, so that a broken contract is reported with its key and line.
    if (config.oauth.enabled && role !== 'gateway') {
      // Loaded only when this process serves OAuth: a gateway-only process never loads
      // oidc-provider and its dependencies.
      const [{ createServerInteractions }, { createAuthorizationServer }] = await Promise.all([
        import('../oauth/interactions/hooks.ts'),
        import('../oauth/provider.ts'),
      ]);
      const interactions = createServerInteractions({
        loaded: () => currentLoaded,
        store,
        keys: openedKeys,
        dataDir,
        logger,
        audit: (input) => {
          observer.event(input);
        }, // issue 13: sign-in on the audit trail
      });
      const as = await createAuthorizationServer({
        loaded,
        store,
        keys: openedKeys,
        logger,
        interactions,
        onEvent: (event, context) => observer.oauth(event, context),
        revocations: cluster.revocations,
      });
      authorizationServer = as;
      cleanups.push(() => as.close());
      // issue 13: client secrets about to expire are audited (built-in alert client-secret-expiry).
      const { watchClientSecretExpiry } = await import('../oauth/secret-expiry-watch.ts');
      const expiry = watchClientSecretExpiry({
        db: store.db,
        audit,
        warnSeconds: () => currentLoaded.config.oauth.clientSecrets.expiryWarningDays * 86_400,
        onError: (err) =>
          logger.warn(
            { event: 'client-secret-expiry-check-failed', error: describeError(err) },
            'check failed',
          ),
      });
      cleanups.push(() => {
        expiry.close();
        return Promise.resolve();
      });
    }

    await recordConfigVersion(store.db, {
      sha256: first.version,
      source: configFile,
      summary: summarize(first),
    });
    const holder: RuntimeHolder = { current: first };

    let demoUpstreamUrl: string | undefined;
    if (config.demoUpstream) {
      const demoModule = '../../examples/demo-upstream/server.ts';
      const demo = (await import(demoModule)) as typeof DemoModule;
      const { host, port } = config.demoUpstream;
      // It verifies the caller assertion, addressed (as the proxy does) to the origin of the API
      // that points at it.
      const pointing = config.apis
        .map((a) => new URL(a.upstream.url))
        .find((u) => u.protocol === 'http:' && Number(u.port || 80) === port);
      const up = await demo.startDemoUpstream({
        host,
        port,
        identity: {
          issuer: config.gateway.publicUrl,
          audience:
            pointing?.origin ??
            new URL(`http://${host.includes(':') ? `[${host}]` : host}:${String(port)}`).origin,
          jwks: () => openedKeys.publicJwks(),
          header: config.gateway.identity.header,
        },
      });
      cleanups.push(() => up.close());
      demoUpstreamUrl = up.url;
    }

    const resolveFile = (f: string | undefined) => (f === undefined ? undefined : loaded.resolvePath(f));
    const tls = await loadTlsMaterial(
      {
        certFile: resolveFile(config.gateway.tls.certFile),
        keyFile: resolveFile(config.gateway.tls.keyFile),
      },
      dataDir,
      'gateway.tls',
    );
    const gateway = createGatewayServer({
      holder,
      logger,
      tls,
      http2: config.gateway.http2,
      timeouts: config.gateway.timeouts,
      accessLog: config.logging.accessLog,
      observer,
      ...(config.gateway.mtls === undefined
        ? {}
        : {
            clientCertificateCas: config.gateway.mtls.caFiles.map((f) =>
              readFileSync(loaded.resolvePath(f), 'utf8'),
            ),
          }),
      authorizationServer,
      role,
      handshakeTimeoutMs: config.gateway.connections.handshakeTimeoutMs,
    });
    // Issue 12: connection caps, fd pressure, HTTP/2 limits (src/server/protect-listeners.ts).
    const gatewayGuard = protectGateway(gateway.server, config.gateway, {
      metrics,
      logger,
      observer,
      correlationHeader: () => holder.current.correlationHeader,
    });
    cleanups.push(async () => {
      gatewayGuard.stop();
    });
    const tlsWatch = { metrics, observer, ...config.audit.aggregation }; // issue 13: TLS handshake failures
    const gatewayTls = watchTlsFailures(gateway.server, 'gateway', tlsWatch);
    cleanups.push(async () => gatewayTls.stop());
    await listen(gateway.server, config.gateway.port, config.gateway.host);
    cleanups.push(() => gateway.close());
    const gatewayUrl = urlOf('https', gateway.server.address(), config.gateway.host);

    let adminUrl: string | undefined;
    /** `POST /admin/v1/config/reload` (set once `reload` below exists). */
    let reloadHook = (_trigger: string): Promise<ReloadResult> => Promise.reject(new Error('not started'));
    if (config.admin.enabled) {
      const admin = createAdminServer({
        holder,
        store,
        logger,
        tls,
        metrics: options.metricsText === undefined ? metrics : { ...metrics, text: options.metricsText },
        audit,
        checks: [
          ...cluster.checks,
          // crypto: the FIPS mode in force (crypto.fips), never a failure once started.
          {
            name: 'crypto',
            check: () => ({ status: 'ok', detail: `fips=${fips.mode} (crypto.fips: ${fips.configured})` }),
          },
        ],
        // With Redis (several processes) a store outage degrades: tokens keep flowing on cached keys.
        storeOutage: config.redis === undefined ? 'failed' : 'degraded',
        // Admin authentication (issue 15): the built-in server's tokens, the users they name.
        tokens,
        users: createUsers({
          db: store.db,
          wrapper: kmsSecretWrapper(openKms(config.oauth.kms, dataDir).kms),
          login: config.oauth.login,
          issuerName: new URL(config.gateway.publicUrl).host,
        }),
        keys: openedKeys,
        reload: (trigger: string) => reloadHook(trigger),
      });
      await admin.ready();
      const adminGuard = protectAdmin(admin.server, { metrics, logger, observer }); // issue 12
      const adminTls = watchTlsFailures(admin.server, 'admin', tlsWatch); // issue 13
      cleanups.push(async () => adminTls.stop());
      cleanups.push(async () => {
        adminGuard.stop();
      });
      await listen(admin.server, config.admin.port, config.admin.host);
      cleanups.push(() => admin.close());
      adminUrl = urlOf('https', admin.server.address(), config.admin.host);
    }
    // The exceptions registry (issue 15): warnings before expiry and expiries, audited (and so
    // alerted by the configuration-change rule) within a minute, without a restart.
    const sweep = setInterval(() => {
      void sweepExceptions({ db: store.db, audit }).catch((err: unknown) => {
        logger.warn(
          { event: 'exceptions-sweep-failed', error: describeError(err) },
          'exceptions sweep failed',
        );
      });
    }, 60_000);
    sweep.unref();
    cleanups.push(async () => {
      clearInterval(sweep);
    });
    let redirectUrl: string | undefined;
    if (config.gateway.redirectHttp) {
      const redirect = createRedirectServer(config.gateway.publicUrl, config.gateway.limits.urlBytes);
      const redirectGuard = protectRedirect(redirect, { metrics, logger, observer }); // issue 12
      cleanups.push(async () => {
        redirectGuard.stop();
      });
      await listen(redirect, config.gateway.redirectHttp.port, config.gateway.redirectHttp.host);
      cleanups.push(
        () =>
          new Promise<void>((ok) => {
            redirect.close(() => ok());
            redirect.closeAllConnections();
          }),
      );
      redirectUrl = urlOf('http', redirect.address(), config.gateway.redirectHttp.host);
    }

    // Reload: compile fully first, swap in one assignment, retire the old runtime after in-flight
    // requests had time to finish with its upstream pools.
    const startedListeners = listenerSettings(loaded);
    let chain: Promise<unknown> = Promise.resolve();
    const retire = (old: Runtime) => {
      setTimeout(() => void old.close().catch(() => undefined), config.gateway.timeouts.requestMs).unref();
    };
    const reloadOnce = async (trigger: string): Promise<ReloadResult> => {
      const current = holder.current;
      let next: Runtime;
      try {
        const nextLoaded = await loadConfig(configFile);
        next = await compileRuntime(nextLoaded, compileOptions);
        for (const w of nextLoaded.warnings)
          logger.warn({ event: 'config-warning' }, formatIssue(nextLoaded.file, w));
      } catch (err) {
        const issues =
          err instanceof ConfigError
            ? err.issues.map((i) => formatIssue(err.file, i))
            : [(err as Error).message];
        logger.error(
          { event: 'config-reload-refused', trigger, issues, keptVersion: current.version },
          'configuration refused; the previous configuration keeps serving',
        );
        observer.event({
          'event.category': 'configuration',
          'event.action': 'config-reload',
          'event.outcome': 'failure',
          'event.reason': `refused: ${String(issues.length)} issue(s); see the server log`,
          'portcullis.config.version': current.version,
          'portcullis.listener': 'gateway',
        });
        return { status: 'refused', version: current.version, issues };
      }
      // The version covers the configuration text and every OpenAPI document it names.
      if (next.version === current.version) {
        await next.close();
        return { status: 'unchanged', version: current.version };
      }
      if (!isDeepStrictEqual(listenerSettings(next.loaded), startedListeners)) {
        logger.warn(
          { event: 'config-restart-needed' },
          'listener, TLS, store or logging settings changed; they apply at the next restart',
        );
      }
      // The change is on the audit trail, durably, before it takes effect.
      try {
        await observer.durable({
          'event.category': 'configuration',
          'event.action': 'config-reload',
          'event.outcome': 'success',
          'event.reason': trigger,
          'portcullis.config.version': next.version,
          'portcullis.config.summary': summarize(next),
          'portcullis.listener': 'gateway',
        });
      } catch (err) {
        await next.close();
        logger.error(
          { event: 'config-reload-refused', trigger, error: describeError(err) },
          'the change could not be audited; the previous configuration keeps serving',
        );
        return { status: 'refused', version: current.version, issues: ['the audit trail is unavailable'] };
      }
      holder.current = next;
      currentLoaded = next.loaded;
      retire(current);
      if (trigger !== 'cluster-signal') cluster.configApplied(next.version);
      if (authorizationServer !== undefined) {
        await authorizationServer.reload(next.loaded).catch((err: unknown) => {
          logger.error(
            { event: 'oauth-reload-failed', error: describeError(err) },
            'the authorization server keeps its previous settings',
          );
        });
      }
      try {
        await recordConfigVersion(store.db, {
          sha256: next.version,
          source: configFile,
          summary: summarize(next),
        });
      } catch (err) {
        logger.warn(
          { event: 'store-error', error: describeError(err) },
          'could not record the configuration version',
        );
      }
      logger.info(
        {
          event: 'config-reloaded',
          trigger,
          version: next.version,
          previousVersion: current.version,
          apis: summarize(next),
        },
        'configuration reloaded',
      );
      return { status: 'applied', version: next.version };
    };
    reloadHook = (trigger) => reload(trigger);
    const reload = (trigger = 'api'): Promise<ReloadResult> => {
      const run = chain.then(() => reloadOnce(trigger));
      chain = run.catch(() => undefined);
      return run;
    };

    const watchers: FSWatcher[] = [];
    if (options.watch) {
      const watched = new Map<string, Set<string>>();
      const add = (file: string) => {
        const dir = dirname(file);
        const names = watched.get(dir) ?? new Set<string>();
        names.add(basename(file));
        watched.set(dir, names);
      };
      add(configFile);
      for (const api of config.apis) add(loaded.resolvePath(api.openapi));
      let timer: NodeJS.Timeout | undefined;
      for (const [dir, names] of watched) {
        const w = watch(dir, { persistent: false }, (_event, name) => {
          if (name === null || !names.has(name)) return;
          clearTimeout(timer);
          timer = setTimeout(() => void reload('file-change').catch(() => undefined), 250);
        });
        w.on('error', (err) =>
          logger.warn({ event: 'watch-error', error: describeError(err) }, 'file watch failed'),
        );
        watchers.push(w);
      }
      cleanups.push(async () => {
        clearTimeout(timer);
        for (const w of watchers) w.close();
      });
    }

    let closing: Promise<void> | undefined;
    const close = (): Promise<void> => {
      closing ??= (async () => {
        holder.closing = true;
        const grace = config.gateway.shutdownGraceMs;
        const force = setTimeout(() => {
          logger.warn({ event: 'shutdown-forced' }, 'grace period over; closing remaining connections');
          gateway.server.close();
          const s = gateway.server as unknown as { closeAllConnections?: () => void };
          s.closeAllConnections?.();
          gatewayGuard.destroyAll(); // issue 12: sockets HTTP never saw (mid-handshake) too
        }, grace);
        force.unref();
        await cleanup();
        clearTimeout(force);
        await holder.current.close().catch(() => undefined);
        logger.info({ event: 'stopped' }, 'portcullis stopped');
      })();
      return closing;
    };

    cluster.attach({ keys: openedKeys, apiKeys, reload, version: () => holder.current.version, privacy });

    if (options.signals) {
      process.on('SIGHUP', () => void reload('SIGHUP'));
      const stop = (signal: string) => {
        logger.info({ event: 'stopping', signal }, 'draining in-flight requests');
        void close().then(() => process.exit(0));
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    }

    logger.info(
      {
        event: 'started',
        gateway: gatewayUrl,
        admin: adminUrl,
        version: first.version,
        apis: summarize(first),
      },
      'portcullis started',
    );
    return {
      gatewayUrl,
      adminUrl,
      redirectUrl,
      demoUpstreamUrl,
      tls,
      logger,
      store,
      keys,
      audit,
      metrics,
      authorizationServer,
      privacy,
      runtime: () => holder.current,
      reload,
      close,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
