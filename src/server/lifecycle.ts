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
import { mkdir } from 'node:fs/promises';
import { watch } from 'node:fs';
import type { FSWatcher } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { basename, dirname, resolve } from 'node:path';
import type { Server } from 'node:http';
import { isDeepStrictEqual } from 'node:util';
import { ConfigError, formatIssue, loadConfig } from '../config/load.ts';
import type { LoadedConfig } from '../config/load.ts';
import { compileRuntime } from '../gateway/compile.ts';
import type { TokenSource } from '../gateway/compile.ts';
import { createRevocationList } from '../oauth/revocation.ts';
import { createServerInteractions } from '../oauth/interactions/hooks.ts';
import type { Runtime } from '../gateway/compile.ts';
import { openKeyManager } from '../keys/index.ts';
import type { StoreKeyManager } from '../keys/index.ts';
import { createAuthorizationServer } from '../oauth/provider.ts';
import type { AuthorizationServer } from '../oauth/provider.ts';
import { openStore, recordConfigVersion } from '../store/index.ts';
import type { Store } from '../store/index.ts';
import { createAdminServer } from './admin-server.ts';
import type { AdminApp } from './admin-server.ts';
import { createGatewayServer } from './gateway-server.ts';
import type { GatewayApp, RuntimeHolder } from './gateway-server.ts';
import { createLogger, describeError } from './logging.ts';
import type { Logger } from './logging.ts';
import { createRedirectServer } from './redirect-server.ts';
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
   * What this process serves: `all` (default), `gateway` (APIs only) or `authorization-server`
   * (only the OAuth/OIDC paths; `oauth.enabled` must be on).
   */
  readonly role?: 'all' | 'gateway' | 'authorization-server';
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
  readonly authorizationServer: AuthorizationServer | undefined;
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
    redirectHttp: gateway.redirectHttp,
    admin,
    store,
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
  server: Server | GatewayApp['server'] | AdminApp['server'],
  port: number,
  host: string,
): Promise<void> {
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => {
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

  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const store = await openStore({
    url: loaded.config.store.url,
    dataDir,
    onPoolError: (err) =>
      logger.warn({ event: 'store-error', error: describeError(err) }, 'store connection error'),
  });
  const cleanups: (() => Promise<void>)[] = [() => store.close()];
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
    let keys: StoreKeyManager | undefined;
    let authorizationServer: AuthorizationServer | undefined;
    let tokens: TokenSource | undefined;
    // Replaced by the authorization server's list below when it runs in this process, so that
    // its revocations apply here at once.
    let revocations: { isRevoked(jti: string): Promise<boolean> } = createRevocationList({ db: store.db });
    if (config.oauth.enabled) {
      // The gateway verifies the built-in server's tokens in every role; keys live in the store.
      const openedKeys = await openKeyManager({ store, dataDir, config: config.oauth, logger });
      keys = openedKeys;
      cleanups.push(async () => {
        openedKeys.close();
      });
      tokens = {
        issuer: config.gateway.publicUrl,
        keys: () => openedKeys.publicJwks(),
        isRevoked: (jti) => revocations.isRevoked(jti),
      };
    }

    const first = await compileRuntime(loaded, { tokens });
    cleanups.push(() => first.close());
    // Created after the first compile, so that a broken contract is reported with its key and line.
    if (keys !== undefined && role !== 'gateway') {
      const interactions = createServerInteractions({
        loaded: () => currentLoaded,
        store,
        keys: keys,
        dataDir,
        logger,
      });
      const as = await createAuthorizationServer({ loaded, store, keys: keys, logger, interactions });
      authorizationServer = as;
      revocations = as.revocations; // this process's revocations apply at once
      cleanups.push(() => as.close());
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
      const up = await demo.startDemoUpstream({
        host: config.demoUpstream.host,
        port: config.demoUpstream.port,
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
      authorizationServer,
      role,
    });
    await gateway.ready();
    await listen(gateway.server, config.gateway.port, config.gateway.host);
    cleanups.push(() => gateway.close());
    const gatewayUrl = urlOf('https', gateway.server.address(), config.gateway.host);

    let adminUrl: string | undefined;
    if (config.admin.enabled) {
      const admin = createAdminServer({ holder, store, logger, tls });
      await admin.ready();
      await listen(admin.server, config.admin.port, config.admin.host);
      cleanups.push(() => admin.close());
      adminUrl = urlOf('https', admin.server.address(), config.admin.host);
    }
    let redirectUrl: string | undefined;
    if (config.gateway.redirectHttp) {
      const redirect = createRedirectServer(config.gateway.publicUrl, config.gateway.limits.urlBytes);
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
      setTimeout(() => void old.close(), config.gateway.timeouts.requestMs).unref();
    };
    const reloadOnce = async (trigger: string): Promise<ReloadResult> => {
      const current = holder.current;
      let next: Runtime;
      try {
        const nextLoaded = await loadConfig(configFile);
        next = await compileRuntime(nextLoaded, { tokens });
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
      holder.current = next;
      currentLoaded = next.loaded;
      retire(current);
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
          timer = setTimeout(() => void reload('file-change'), 250);
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
        }, grace);
        force.unref();
        await cleanup();
        clearTimeout(force);
        await holder.current.close().catch(() => undefined);
        logger.info({ event: 'stopped' }, 'portcullis stopped');
      })();
      return closing;
    };

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
      authorizationServer,
      runtime: () => holder.current,
      reload,
      close,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
