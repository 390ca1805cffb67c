/**
 * The `portcullis start` banner: where the listeners are ({@link startBanner}, printed once by
 * the single process or by the primary of `--workers N`), and the "how to get a token" part
 * (DESIGN.md, quickstart contract): the exact commands a new user copies, built from the
 * configuration in force, so that each one works as printed (test/quickstart.test.ts runs the
 * same sequence).
 */
import { isAbsolute, relative } from 'node:path';
import type { Runtime } from '../gateway/compile.ts';
import type { TlsMaterial } from '../server/tls.ts';
import { resolvePaths } from './paths.ts';

export interface TokenHowToInput {
  readonly runtime: Runtime;
  /** What this process serves. */
  readonly role: 'all' | 'gateway' | 'authorization-server';
  /** The configuration file and data directory in force (absolute). */
  readonly configFile: string;
  readonly dataDir: string;
  /** The development CA file, when the listener uses the development certificate. */
  readonly caFile: string | undefined;
  /** Working directory the commands are meant for (default `process.cwd()`). */
  readonly cwd?: string;
}

interface Example {
  readonly path: string;
  readonly scopes: readonly string[];
  /** The API's audience, when the token request must name it (more than one API). */
  readonly resource: string | undefined;
}

/**
 * The fewest of `--config` / `--data-dir` a command run from `cwd` needs to find what `start` uses
 * (src/cli/paths.ts): none from the folder the quickstart starts in.
 */
export function locatorArgs(configFile: string, dataDir: string, cwd: string): string[] {
  const candidates: { config?: string; dataDir?: string }[] = [
    {},
    { dataDir },
    { config: configFile, dataDir },
  ];
  for (const c of candidates) {
    try {
      const found = resolvePaths({ ...c, command: 'other', cwd });
      if (found.configFile === configFile && found.dataDir === dataDir) {
        return [
          ...(c.config === undefined ? [] : ['--config', shellQuote(displayPath(cwd, c.config))]),
          ...(c.dataDir === undefined ? [] : ['--data-dir', shellQuote(displayPath(cwd, c.dataDir))]),
        ];
      }
    } catch {
      // not found that way: try with more flags
    }
  }
  return [
    '--config',
    shellQuote(displayPath(cwd, configFile)),
    '--data-dir',
    shellQuote(displayPath(cwd, dataDir)),
  ];
}

/** POSIX shell quoting, only where needed. */
export function shellQuote(value: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}

/** A path relative to `cwd` when it lies inside it, else absolute. */
function displayPath(cwd: string, file: string): string {
  const rel = relative(cwd, file);
  return rel === '' || rel.startsWith('..') || isAbsolute(rel) ? file : rel;
}

/** The first parameterless GET protected by OAuth scopes: the call a token is for. */
function example(runtime: Runtime): Example | undefined {
  const { config } = runtime.loaded;
  for (const [i, api] of runtime.apis.entries()) {
    const oauthSchemes = new Set(
      Object.entries(api.document.securitySchemes)
        .filter(([, scheme]) => scheme.type === 'oauth2')
        .map(([name]) => name),
    );
    for (const op of api.document.operations) {
      if (op.method !== 'GET' || op.path.includes('{')) continue;
      for (const requirement of op.security) {
        const names = Object.keys(requirement);
        if (names.length !== 1 || !oauthSchemes.has(names[0] ?? '')) continue;
        const scopes = requirement[names[0] ?? ''] ?? [];
        const declared = config.apis[i];
        const audience = declared?.audience ?? `${config.gateway.publicUrl}${api.basePath}`;
        return {
          path: `${api.basePath}${op.path}`,
          scopes,
          resource: runtime.apis.length > 1 ? audience : undefined,
        };
      }
    }
  }
  return undefined;
}

/**
 * Lines for the banner: register a client, get a token at `/token`, call the API with it. Empty
 * when this process does not issue tokens or no API operation takes an OAuth token.
 */
export function tokenHowTo(input: TokenHowToInput): string[] {
  const { runtime, role } = input;
  const { config } = runtime.loaded;
  if (!config.oauth.enabled || role === 'gateway') return [];
  const ex = example(runtime);
  if (ex === undefined) return [];
  const cwd = input.cwd ?? process.cwd();
  const origin = config.gateway.publicUrl;
  const common = locatorArgs(input.configFile, input.dataDir, cwd);
  const scope = ex.scopes.join(' ');
  const create = [
    'npx portcullis clients create --name demo --grant client_credentials',
    `--scope ${JSON.stringify(scope)}`,
    '--json',
    ...common,
  ].join(' ');
  const ca = input.caFile === undefined ? '' : `--cacert ${shellQuote(displayPath(cwd, input.caFile))} `;
  const tokenCall = [
    `curl ${ca}-u "$CLIENT_ID:$CLIENT_SECRET"`,
    '-d grant_type=client_credentials',
    ...(scope === '' ? [] : [`-d scope=${shellQuote(scope)}`]),
    ...(ex.resource === undefined ? [] : [`-d resource=${shellQuote(ex.resource)}`]),
    `${origin}/token`,
  ].join(' ');
  const apiCall = `curl ${ca}-H "Authorization: Bearer $TOKEN" ${origin}${ex.path}`;
  return [
    '  Get a token and call the API:',
    `    1. ${create}`,
    '       prints {"client_id": …, "client_secret": …}; the secret is shown only this once.',
    '       Set CLIENT_ID and CLIENT_SECRET from it.',
    `    2. ${tokenCall}`,
    '       prints {"access_token": …}; set TOKEN to it.',
    `    3. ${apiCall}`,
    '',
  ];
}

export interface StartBannerInput extends Omit<TokenHowToInput, 'caFile'> {
  readonly gatewayUrl: string;
  readonly adminUrl: string | undefined;
  readonly redirectUrl: string | undefined;
  readonly demoUpstreamUrl: string | undefined;
  readonly tls: TlsMaterial;
  /** Processes serving these listeners (`--workers`); shown when more than one. */
  readonly workers?: number;
}

/** The lines `portcullis start` prints on stderr once everything listens. */
export function startBanner(input: StartBannerInput): string[] {
  const cwd = input.cwd ?? process.cwd();
  const origin = input.runtime.loaded.config.gateway.publicUrl;
  const ca = input.tls.source === 'development' ? relative(cwd, input.tls.caCertFile) : undefined;
  const workers = input.workers ?? 1;
  return [
    '',
    workers > 1
      ? `  Portcullis is running: ${String(workers)} worker processes (primary pid ${String(process.pid)}).`
      : `  Portcullis is running.`,
    `    gateway   ${input.gatewayUrl}  (public origin ${origin})`,
    ...(input.adminUrl ? [`    admin     ${input.adminUrl}  (/healthz, /readyz)`] : []),
    ...(input.redirectUrl ? [`    redirect  ${input.redirectUrl} -> HTTPS`] : []),
    ...(input.demoUpstreamUrl
      ? [`    demo API  ${input.demoUpstreamUrl}  (reached through the gateway under /v1)`]
      : []),
    ...(ca ? [`    dev CA    ${ca}  (trust it for local HTTPS)`] : []),
    '',
    ...(ca && input.demoUpstreamUrl
      ? [
          `  Try:  curl --cacert ${ca} ${origin}/v1/status`,
          `        curl --cacert ${ca} -i ${origin}/v1/patients   # 401: a token is required`,
          '',
        ]
      : []),
    ...tokenHowTo({
      ...input,
      caFile: input.tls.source === 'development' ? input.tls.caCertFile : undefined,
    }),
    '  Reload: edit the configuration (or send SIGHUP). Stop: Ctrl-C.',
    '',
  ];
}
