/**
 * Loads a YAML configuration file, validates it against the schema, fills secure defaults and
 * applies the semantic rules that a schema cannot state (documented exceptions, loopback-only
 * admin, both-or-neither TLS files…). Every problem names the key path and the line.
 */
import { ADMIN_ROLE_NAMES } from './admin-schema.ts';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { dirname, resolve } from 'node:path';
import { Ajv } from 'ajv';
import type { ErrorObject } from 'ajv';
import addFormatsModule from 'ajv-formats';
import { LineCounter, parseDocument, isMap, isNode, isScalar, isSeq } from 'yaml';
import type { Document } from 'yaml';
import { ConfigSchema, DEFAULT_LIMITS } from './schema.ts';
import type { Config, Control } from './schema.ts';
import { substituteSecretRefs } from './secret-refs.ts';
import { checkInternalLinks } from './internal-links.ts';

export type ConfigPath = ReadonlyArray<string | number>;

export interface ConfigIssue {
  /** Dotted key path, e.g. `apis[0].upstream.url`. */
  readonly path: string;
  readonly line?: number;
  readonly column?: number;
  readonly message: string;
}

/** A configuration that cannot be used. `issues` lists every problem found, not just the first. */
export class ConfigError extends Error {
  readonly file: string;
  readonly issues: readonly ConfigIssue[];
  constructor(file: string, issues: readonly ConfigIssue[]) {
    super(`${file}: invalid configuration\n${issues.map((i) => '  ' + formatIssue(file, i)).join('\n')}`);
    this.name = 'ConfigError';
    this.file = file;
    this.issues = issues;
  }
}

export function formatIssue(file: string, issue: ConfigIssue): string {
  const where = issue.line === undefined ? file : `${file}:${issue.line}:${issue.column ?? 1}`;
  return `${where}: ${issue.path || '(top level)'}: ${issue.message}`;
}

export interface LoadedConfig {
  readonly config: Config;
  /** Absolute path of the file. */
  readonly file: string;
  /** Directory relative paths in the file are resolved against. */
  readonly dir: string;
  readonly sha256: string;
  /** Non-fatal findings (an exception that expired or expires soon). */
  readonly warnings: readonly ConfigIssue[];
  /** The line and column where a key path is written (or its nearest written parent). */
  locate(path: ConfigPath): { line: number; column: number } | undefined;
  /** Resolves a file named in the configuration against the configuration's directory. */
  resolvePath(p: string): string;
  /** Whether a documented, unexpired exception weakens `control`. */
  hasException(control: Control): boolean;
}

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv;
const ajv = addFormats(
  new Ajv({ allErrors: true, useDefaults: true, strict: false, coerceTypes: false, verbose: true }),
);
const validate = ajv.compile<Config>(ConfigSchema);

export function pathToString(path: ConfigPath): string {
  let out = '';
  for (const part of path) {
    out += typeof part === 'number' ? `[${part}]` : out === '' ? part : `.${part}`;
  }
  return out;
}

function pointerToPath(pointer: string): (string | number)[] {
  if (pointer === '') return [];
  return pointer
    .slice(1)
    .split('/')
    .map((p) => p.replaceAll('~1', '/').replaceAll('~0', '~'))
    .map((p) => (/^(0|[1-9][0-9]*)$/.test(p) ? Number(p) : p));
}

function makeLocator(doc: Document, counter: LineCounter) {
  return (path: ConfigPath): { line: number; column: number } | undefined => {
    for (let n = path.length; n >= 0; n--) {
      // For a mapping value, point at its key when we can: that is where people look (and a
      // block value starts on the next line).
      const last = path[n - 1];
      if (typeof last === 'string') {
        const parent: unknown = doc.getIn(path.slice(0, n - 1), true);
        const pair = isMap(parent)
          ? parent.items.find((p) => isScalar(p.key) && String(p.key.value) === last)
          : undefined;
        if (pair && isNode(pair.key) && pair.key.range) {
          const pos = counter.linePos(pair.key.range[0]);
          return { line: pos.line, column: pos.col };
        }
      }
      const node: unknown = doc.getIn(path.slice(0, n), true);
      if (isNode(node) && node.range) {
        const pos = counter.linePos(node.range[0]);
        return { line: pos.line, column: pos.col };
      }
    }
    return undefined;
  };
}

/** The key path of the innermost key or value written at `offset` (for YAML errors). */
function pathAt(doc: Document, offset: number): (string | number)[] {
  const path: (string | number)[] = [];
  const within = (node: unknown): boolean =>
    isNode(node) &&
    node.range !== undefined &&
    node.range !== null &&
    offset >= node.range[0] &&
    offset < node.range[2];
  let node: unknown = doc.contents;
  for (;;) {
    if (isMap(node)) {
      const pair = node.items.find((p) => within(p.key) || within(p.value));
      if (!pair || !isScalar(pair.key)) return path;
      path.push(String(pair.key.value));
      if (within(pair.key)) return path;
      node = pair.value;
    } else if (isSeq(node)) {
      const i = node.items.findIndex((item) => within(item));
      if (i < 0) return path;
      path.push(i);
      node = node.items[i];
    } else {
      return path;
    }
  }
}

function describeAjvError(e: ErrorObject): { path: (string | number)[]; message: string } {
  const path = pointerToPath(e.instancePath);
  const schema = e.parentSchema as { description?: string } | undefined;
  const hint = schema?.description ? ` (${schema.description})` : '';
  const params = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'additionalProperties':
      return {
        path: [...path, String(params.additionalProperty)],
        message: 'unknown key (check the spelling; see the configuration reference)',
      };
    case 'required':
      return { path, message: `missing required key "${String(params.missingProperty)}"` };
    case 'type':
      return { path, message: `expected ${String(params.type)}${hint}` };
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
    case 'exclusiveMaximum':
    case 'minLength':
    case 'maxLength':
    case 'minItems':
    case 'maxItems':
      return { path, message: `${e.message ?? 'out of bounds'}${hint}` };
    case 'pattern':
      return {
        path,
        message: `has the wrong form: expected to match ${String(params.pattern)}${hint}`,
      };
    case 'format':
      return { path, message: `expected a ${String(params.format)}${hint}` };
    case 'const':
      return { path, message: `expected ${JSON.stringify(params.allowedValue)}` };
    case 'uniqueItems':
      return { path, message: 'has duplicate entries' };
    default:
      return { path, message: `${e.message ?? 'is invalid'}${hint}` };
  }
}

/** Collapses Ajv's per-branch errors for unions of literals into one "expected one of" line. */
function schemaIssues(errors: readonly ErrorObject[]): { path: (string | number)[]; message: string }[] {
  const anyOfAt = new Map<string, ErrorObject>();
  for (const e of errors) if (e.keyword === 'anyOf') anyOfAt.set(e.instancePath, e);
  const out: { path: (string | number)[]; message: string }[] = [];
  for (const e of errors) {
    const union = anyOfAt.get(e.instancePath);
    if (union && e !== union) continue;
    if (e.keyword === 'anyOf') {
      const branches = e.schema as { const?: unknown }[];
      const values = branches.map((b) => b.const).filter((v) => v !== undefined);
      out.push({
        path: pointerToPath(e.instancePath),
        message:
          values.length > 0
            ? `expected one of ${values.map((v) => JSON.stringify(v)).join(', ')}`
            : 'matches none of the allowed forms',
      });
      continue;
    }
    out.push(describeAjvError(e));
  }
  return out;
}

function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

function validCidr(value: string): boolean {
  const [addr, bits, ...rest] = value.split('/');
  if (rest.length > 0 || addr === undefined) return false;
  const family = isIP(addr);
  if (family === 0) return false;
  if (bits === undefined) return true;
  const n = Number(bits);
  return Number.isInteger(n) && n >= 0 && n <= (family === 4 ? 32 : 128);
}

/**
 * Parses and validates configuration text. Throws {@link ConfigError} listing every problem.
 * `now` decides which documented exceptions are still in force.
 */
export function parseConfig(
  text: string,
  file: string,
  now: Date = new Date(),
  env: NodeJS.ProcessEnv = process.env,
): LoadedConfig {
  const abs = resolve(file);
  const counter = new LineCounter();
  const doc = parseDocument(text, { lineCounter: counter, uniqueKeys: true, prettyErrors: false });
  const locate = makeLocator(doc, counter);
  if (doc.errors.length > 0) {
    throw new ConfigError(
      abs,
      doc.errors.map((err) => {
        const pos = counter.linePos(err.pos[0]);
        return {
          path: pathToString(pathAt(doc, err.pos[0])),
          line: pos.line,
          column: pos.col,
          message: `YAML: ${err.message.split('\n')[0]}`,
        };
      }),
    );
  }
  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 50 }) ?? {};
  } catch (err) {
    throw new ConfigError(abs, [{ path: '', message: `YAML: ${(err as Error).message}` }]);
  }
  const issues: ConfigIssue[] = [];
  const issue = (path: ConfigPath, message: string) => {
    const at = locate(path);
    issues.push({ path: pathToString(path), message, ...(at ? { line: at.line, column: at.column } : {}) });
  };
  substituteSecretRefs(raw, env, dirname(abs), issue);
  if (issues.length > 0) throw new ConfigError(abs, issues);
  if (!validate(raw)) {
    for (const e of schemaIssues(validate.errors ?? [])) issue(e.path, e.message);
    throw new ConfigError(abs, issues);
  }
  const config: Config = raw;
  const warnings: ConfigIssue[] = [];
  const warn = (path: ConfigPath, message: string) => {
    const at = locate(path);
    warnings.push({ path: pathToString(path), message, ...(at ? { line: at.line, column: at.column } : {}) });
  };

  // Documented exceptions: in force until the end of their expiry day (UTC).
  const active = new Set<Control>();
  const expired = new Map<Control, string>();
  const ids = new Set<string>();
  config.exceptions.forEach((ex, i) => {
    if (ids.has(ex.id)) issue(['exceptions', i, 'id'], `duplicate exception id "${ex.id}"`);
    ids.add(ex.id);
    const end = Date.parse(`${ex.expires}T23:59:59.999Z`);
    if (end < now.getTime()) {
      expired.set(ex.control, `exception "${ex.id}" expired on ${ex.expires}`);
      warn(
        ['exceptions', i, 'expires'],
        `exception "${ex.id}" expired on ${ex.expires} and no longer applies`,
      );
    } else {
      active.add(ex.control);
      if (end - now.getTime() < 14 * 86_400_000) {
        warn(['exceptions', i, 'expires'], `exception "${ex.id}" expires on ${ex.expires}`);
      }
    }
  });
  const needs = (control: Control, path: ConfigPath, what: string) => {
    if (!active.has(control)) {
      const note = expired.get(control);
      issue(
        path,
        `${what} weakens a control: it needs an unexpired exception with control "${control}"` +
          (note === undefined ? '' : ` (${note})`),
      );
    }
  };

  // Internal links (store, Redis) off loopback: verified TLS or an exception (issue 13).
  checkInternalLinks(config, needs, issue);

  // Key custody (src/keys/custody.ts): the HSM settings the provider needs.
  if (config.keys.provider === 'pkcs11') {
    if (config.keys.pkcs11 === undefined) {
      issue(['keys', 'provider'], 'pkcs11 needs keys.pkcs11 (module, tokenLabel, pin)');
    } else if (config.keys.pkcs11.signingKeys && config.oauth.signing.alg !== 'ES256') {
      issue(['keys', 'pkcs11', 'signingKeys'], 'signing keys on the token need oauth.signing.alg ES256');
    }
  }
  const { gateway, admin } = config;
  if ((gateway.tls.certFile === undefined) !== (gateway.tls.keyFile === undefined)) {
    issue(['gateway', 'tls'], 'set both certFile and keyFile, or neither (development certificate)');
  }
  for (const key of ['bodyBytes', 'headerBytes', 'urlBytes'] as const) {
    if (gateway.limits[key] > DEFAULT_LIMITS[key]) {
      needs('request-limits', ['gateway', 'limits', key], `a limit above ${DEFAULT_LIMITS[key]} bytes`);
    }
  }
  gateway.trustedProxies.forEach((cidr, i) => {
    if (!validCidr(cidr)) issue(['gateway', 'trustedProxies', i], 'expected an IP address or CIDR range');
  });
  // Roles (issues 13 and 15): the built-in admin roles and the admin scope are not configurable.
  for (const [name, role] of Object.entries(config.roles)) {
    if ((ADMIN_ROLE_NAMES as readonly string[]).includes(name)) {
      issue(['roles', name], `"${name}" is a built-in admin role and cannot be redefined`);
    }
    role.scopes.forEach((scope, i) => {
      if (scope === 'admin')
        issue(['roles', name, 'scopes', i], 'the admin scope comes only with an admin role');
    });
  }
  if (admin.enabled && !isLoopbackHost(admin.host)) {
    needs('admin-loopback', ['admin', 'host'], 'an admin listener off loopback');
  }
  const listeners: { path: ConfigPath; host: string; port: number }[] = [
    { path: ['gateway', 'port'], host: gateway.host, port: gateway.port },
  ];
  if (admin.enabled) listeners.push({ path: ['admin', 'port'], host: admin.host, port: admin.port });
  if (gateway.redirectHttp) {
    listeners.push({ path: ['gateway', 'redirectHttp', 'port'], ...gateway.redirectHttp });
  }
  if (config.demoUpstream) listeners.push({ path: ['demoUpstream', 'port'], ...config.demoUpstream });
  listeners.forEach((l, i) => {
    if (l.port === 0) return;
    const clash = listeners.slice(0, i).find((o) => o.port === l.port);
    if (clash) issue(l.path, `port ${l.port} is already used by ${pathToString(clash.path)}`);
  });

  const names = new Set<string>();
  const bases = new Set<string>();
  config.apis.forEach((api, i) => {
    if (names.has(api.name)) issue(['apis', i, 'name'], `duplicate API name "${api.name}"`);
    names.add(api.name);
    if (bases.has(api.basePath)) issue(['apis', i, 'basePath'], `base path ${api.basePath} is used twice`);
    bases.add(api.basePath);
    const up = new URL(api.upstream.url);
    if (up.username || up.password) {
      issue(['apis', i, 'upstream', 'url'], 'must not carry credentials');
    }
    const upHost = up.hostname.replace(/^\[|\]$/g, '');
    if (up.protocol === 'http:' && !isLoopbackHost(upHost)) {
      needs('upstream-plaintext', ['apis', i, 'upstream', 'url'], 'plain HTTP to a non-loopback upstream');
    }
    if (up.protocol === 'http:' && api.upstream.caFile !== undefined) {
      issue(['apis', i, 'upstream', 'caFile'], 'only applies to an https upstream');
    }
    if (api.audience !== undefined && config.apis.some((o, j) => j < i && o.audience === api.audience)) {
      issue(['apis', i, 'audience'], `audience ${api.audience} is used twice`);
    }
    if (api.cors?.allowCredentials) {
      needs('cors-credentials', ['apis', i, 'cors', 'allowCredentials'], 'credentialed CORS');
    }
  });
  if (config.rateLimits.mode !== 'enforce') {
    needs('rate-limits', ['rateLimits', 'mode'], `rate limits in ${config.rateLimits.mode} mode`);
  }
  if (
    config.redis === undefined &&
    (config.rateLimits.backend === 'redis' || config.idempotency.backend === 'redis')
  ) {
    issue(['redis'], 'a redis backend is configured: set redis.url');
  }
  if (config.cluster.nodes > 1) {
    // Per-process state would split what must be one: a limit N times over, a retry answered twice.
    const n = String(config.cluster.nodes);
    if (!config.store.url.startsWith('postgres')) {
      issue(['store', 'url'], `cluster.nodes is ${n}: the processes must share a postgres:// store`);
    }
    if (config.redis === undefined) {
      issue(['redis'], `cluster.nodes is ${n}: set redis.url (shared counters, revocations and signals)`);
    }
    if (config.rateLimits.mode !== 'off' && config.rateLimits.backend !== 'redis') {
      issue(
        ['rateLimits', 'backend'],
        `cluster.nodes is ${n}: per-process counters would allow ${n} times each limit; set redis`,
      );
    }
    if (!config.audit.store.enabled) {
      issue(
        ['audit', 'store', 'enabled'],
        `cluster.nodes is ${n}: the audit chain must be in the shared store (a file chain per process would fork)`,
      );
    }
    if (config.idempotency.backend === 'memory') {
      issue(
        ['idempotency', 'backend'],
        `cluster.nodes is ${n}: a retry reaching another process would run twice; set redis or store`,
      );
    }
  }
  if (!config.audit.requestEvents) {
    needs('audit-request-events', ['audit', 'requestEvents'], 'not auditing requests');
  }
  if (config.oauth.accessTokenTtlSeconds > 1800) {
    needs('token-lifetime', ['oauth', 'accessTokenTtlSeconds'], 'an access-token lifetime above 30 minutes');
  }
  if (issues.length > 0) throw new ConfigError(abs, issues);

  const dir = dirname(abs);
  return {
    config,
    file: abs,
    dir,
    sha256: createHash('sha256').update(text).digest('hex'),
    warnings,
    locate,
    resolvePath: (p) => resolve(dir, p),
    hasException: (control) => active.has(control),
  };
}

/** Reads and parses a configuration file. */
export async function loadConfig(file: string, now?: Date): Promise<LoadedConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new ConfigError(resolve(file), [{ path: '', message: `cannot read the file (${code})` }]);
  }
  return parseConfig(text, file, now);
}

const SECRET_KEY = /(secret|password|passphrase|token|pepper|privatekey|apikey)$/i;

/** A deep copy with secrets masked: secret-named keys and passwords inside URLs. */
export function maskSecrets<T>(value: T): T {
  const walk = (v: unknown, key: string): unknown => {
    if (Array.isArray(v)) return v.map((x) => walk(x, key));
    if (v !== null && typeof v === 'object') {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x, k)]));
    }
    if (typeof v === 'string') {
      if (SECRET_KEY.test(key)) return '****';
      return v.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/?#@]*):[^@/?#]*@/i, '$1:****@');
    }
    return v;
  };
  return walk(value, '') as T;
}
