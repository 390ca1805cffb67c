/**
 * Where a command finds its configuration file and data directory, the same way for every
 * command wherever it is run from.
 *
 * Configuration: `--config`, else `$PORTCULLIS_CONFIG`, else `portcullis.yaml` in the working
 * directory, else the configuration that `portcullis start` recorded in the data directory it
 * used (`--data-dir`, `$PORTCULLIS_DATA_DIR`, or a `.portcullis/` found in the working directory
 * or one of its parents). Otherwise the command fails, saying exactly what to pass.
 *
 * Data directory: `--data-dir`, else `$PORTCULLIS_DATA_DIR`, else the one `portcullis start`
 * last used with this configuration (recorded per user, keyed by the configuration's absolute
 * path), else a `.portcullis/` found as above, else — for `start` only — `.portcullis/` in the
 * working directory, created on first start. No command but `start` creates a data directory it
 * was not explicitly given: a command run from another folder never silently gets a new master
 * key and database that the running gateway does not see.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';

export const DEFAULT_CONFIG_NAME = 'portcullis.yaml';
export const DEFAULT_DATA_DIR_NAME = '.portcullis';
/** Written by `start` into its data directory: which configuration it serves. */
export const START_RECORD = 'started.json';
/** Most configurations remembered in the per-user index. */
const INDEX_LIMIT = 64;

/** A command's paths could not be resolved; the message says what to pass. */
export class PathResolutionError extends Error {
  readonly code = 'path-resolution';
  constructor(message: string) {
    super(message);
    this.name = 'PathResolutionError';
  }
}

export interface PathInputs {
  /** `--config` as given, if it was. */
  readonly config?: string | undefined;
  /** `--data-dir` as given, if it was. */
  readonly dataDir?: string | undefined;
  /**
   * `start` may create its data directory; `config` (commands that read only the configuration)
   * needs none; every other command needs an existing one.
   */
  readonly command: 'start' | 'config' | 'other';
  readonly cwd?: string;
  readonly env?: NodeJS.ProcessEnv;
}

export interface ResolvedPaths {
  readonly configFile: string;
  readonly dataDir: string;
  /** How each was found, for a one-line notice on stderr when it was not given. */
  readonly configFrom: 'flag' | 'env' | 'cwd' | 'start-record';
  readonly dataDirFrom: 'flag' | 'env' | 'start-index' | 'found' | 'default';
}

/** The per-user index of `start`s: configuration file → data directory. */
export function stateIndexFile(env: NodeJS.ProcessEnv = process.env): string {
  const dir =
    env.PORTCULLIS_STATE_DIR ??
    join(env.XDG_STATE_HOME ?? join(env.HOME ?? homedir(), '.local', 'state'), 'portcullis');
  return join(dir, 'data-dirs.json');
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as unknown;
  } catch {
    return undefined;
  }
}

function isDir(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

function readIndex(env: NodeJS.ProcessEnv): Record<string, string> {
  const raw = readJson(stateIndexFile(env));
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return {};
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw as Record<string, unknown>)) if (typeof v === 'string') out[k] = v;
  return out;
}

/** The configuration a `start` recorded in `dataDir`, if it did and the file still exists. */
function recordedConfig(dataDir: string): string | undefined {
  const raw = readJson(join(dataDir, START_RECORD));
  const config = (raw as { config?: unknown } | undefined)?.config;
  return typeof config === 'string' && existsSync(config) ? config : undefined;
}

/** The nearest `.portcullis/` holding a start record, from `cwd` up to the root. */
function findStartedDataDir(cwd: string): string | undefined {
  let dir = cwd;
  for (;;) {
    const candidate = join(dir, DEFAULT_DATA_DIR_NAME);
    if (recordedConfig(candidate) !== undefined) return candidate;
    const parent = dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

export function resolvePaths(input: PathInputs): ResolvedPaths {
  const cwd = input.cwd ?? process.cwd();
  const env = input.env ?? process.env;
  const envConfig = env.PORTCULLIS_CONFIG === '' ? undefined : env.PORTCULLIS_CONFIG;
  const envDataDir = env.PORTCULLIS_DATA_DIR === '' ? undefined : env.PORTCULLIS_DATA_DIR;

  let dataDir: string | undefined;
  let dataDirFrom: ResolvedPaths['dataDirFrom'] | undefined;
  if (input.dataDir !== undefined) {
    dataDir = resolve(cwd, input.dataDir);
    dataDirFrom = 'flag';
  } else if (envDataDir !== undefined) {
    dataDir = resolve(cwd, envDataDir);
    dataDirFrom = 'env';
  }

  let configFile: string;
  let configFrom: ResolvedPaths['configFrom'];
  if (input.config !== undefined) {
    configFile = resolve(cwd, input.config);
    configFrom = 'flag';
  } else if (envConfig !== undefined) {
    configFile = resolve(cwd, envConfig);
    configFrom = 'env';
  } else if (existsSync(join(cwd, DEFAULT_CONFIG_NAME))) {
    configFile = join(cwd, DEFAULT_CONFIG_NAME);
    configFrom = 'cwd';
  } else {
    const started = dataDir ?? (input.command === 'start' ? undefined : findStartedDataDir(cwd));
    const recorded = started === undefined ? undefined : recordedConfig(started);
    if (started === undefined || recorded === undefined) {
      throw new PathResolutionError(
        input.command === 'start'
          ? `no configuration file: pass --config FILE (the quickstart is \`npm start\`, which passes --config examples/quickstart/portcullis.yaml), set PORTCULLIS_CONFIG, or run where ${DEFAULT_CONFIG_NAME} is`
          : `no configuration file: pass --config FILE (the one \`portcullis start\` uses; the quickstart's is examples/quickstart/portcullis.yaml), set PORTCULLIS_CONFIG, or run from the folder where the gateway was started`,
      );
    }
    configFile = recorded;
    configFrom = 'start-record';
    if (dataDir === undefined) {
      dataDir = started;
      dataDirFrom = 'found';
    }
  }

  if (dataDir === undefined) {
    const indexed = readIndex(env)[configFile];
    if (indexed !== undefined && isDir(indexed)) {
      dataDir = indexed;
      dataDirFrom = 'start-index';
    } else {
      const found = findStartedDataDir(cwd);
      if (found !== undefined && recordedConfig(found) === configFile) {
        dataDir = found;
        dataDirFrom = 'found';
      } else if (input.command !== 'other' || isDir(join(cwd, DEFAULT_DATA_DIR_NAME))) {
        dataDir = join(cwd, DEFAULT_DATA_DIR_NAME);
        dataDirFrom = 'default';
      } else {
        throw new PathResolutionError(
          `no data directory for ${configFile}: start the gateway with this configuration first (portcullis start --config ${configFile}), or pass --data-dir DIR (the directory the running gateway uses)`,
        );
      }
    }
  }
  return { configFile, dataDir, configFrom, dataDirFrom: dataDirFrom ?? 'default' };
}

/**
 * Records a `start`: the configuration in the data directory, and configuration → data directory
 * in the per-user index (atomic replace; at most {@link INDEX_LIMIT} entries, newest kept). Best
 * effort: a read-only home or data directory must not stop the gateway.
 */
export function recordStart(paths: { configFile: string; dataDir: string }, env = process.env): void {
  try {
    writeFileSync(
      join(paths.dataDir, START_RECORD),
      JSON.stringify({ config: paths.configFile, startedAt: new Date().toISOString() }) + '\n',
      { mode: 0o600 },
    );
  } catch {
    // the data directory is read-only: commands then need --config / --data-dir
  }
  try {
    const file = stateIndexFile(env);
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    const entries = [
      ...Object.entries(readIndex(env)).filter(([config]) => config !== paths.configFile),
      [paths.configFile, paths.dataDir] as const,
    ].slice(-INDEX_LIMIT);
    const tmp = `${file}.${String(process.pid)}.tmp`;
    writeFileSync(tmp, JSON.stringify(Object.fromEntries(entries), null, 2) + '\n', { mode: 0o600 });
    renameSync(tmp, file);
  } catch {
    // no writable home: the data directory's own record still serves commands run beside it
  }
}
