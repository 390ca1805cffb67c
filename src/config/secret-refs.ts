/**
 * Secret references in configuration values: `${env:NAME}` inserts an environment variable and
 * `${file:PATH}` the content of a file (trimmed; a relative path is resolved against the
 * configuration file's folder), so that passwords and shared secrets can come from the service's
 * environment or a secrets mount (systemd credentials, Kubernetes secrets) instead of the file.
 *
 * Only the secret-bearing keys listed in {@link SECRET_REF_KEYS} are substituted, and only these
 * two forms. A problem (unset variable, unreadable, empty or world-readable file, another
 * `${…}` form) is reported against the key, so the operator gets the key and its line; the
 * messages never include the secret.
 */
import { readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';

export type RefPath = ReadonlyArray<string | number>;

/** The keys whose value may carry references: every secret-bearing key of the schema. */
export const SECRET_REF_KEYS: readonly RefPath[] = [
  ['store', 'url'],
  ['redis', 'url'],
  ['oauth', 'federation', 'clientSecret'],
  ['alerts', 'webhook', 'secret'],
];

const REF = /\$\{(env|file):([^}]*)\}/g;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Secrets are short; a larger file is a mistake (a key store, a log) rather than a secret. */
const MAX_FILE_BYTES = 64 * 1024;

function holderOf(raw: unknown, path: RefPath): Record<string | number, unknown> | undefined {
  let node: unknown = raw;
  for (const key of path.slice(0, -1)) {
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<string | number, unknown>)[key];
  }
  return node !== null && typeof node === 'object' ? (node as Record<string | number, unknown>) : undefined;
}

function readSecretFile(path: string): { value: string } | { problem: string } {
  let mode: number;
  let size: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) return { problem: `${path} is not a regular file` };
    mode = st.mode;
    size = st.size;
  } catch (err) {
    return { problem: `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})` };
  }
  if ((mode & 0o004) !== 0) {
    return { problem: `${path} is readable by every user: restrict it (chmod o-rwx) to the service account` };
  }
  if (size > MAX_FILE_BYTES) return { problem: `${path} is larger than ${MAX_FILE_BYTES} bytes` };
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    return { problem: `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})` };
  }
  const value = text.trim();
  if (value === '') return { problem: `${path} is empty` };
  return { value };
}

/**
 * Replaces the references in the secret-bearing keys of `raw` (the parsed YAML, before schema
 * validation) in place. `baseDir` is the configuration file's folder.
 */
export function substituteSecretRefs(
  raw: unknown,
  env: NodeJS.ProcessEnv,
  baseDir: string,
  issue: (path: RefPath, message: string) => void,
): void {
  for (const path of SECRET_REF_KEYS) {
    const holder = holderOf(raw, path);
    const key = path[path.length - 1] as string;
    const value = holder?.[key];
    if (holder === undefined || typeof value !== 'string' || !value.includes('${')) continue;
    let failed = false;
    const replaced = value.replace(REF, (_, kind: string, arg: string) => {
      if (kind === 'env') {
        if (!ENV_NAME.test(arg)) {
          issue(path, `\${env:${arg}} is not a valid environment variable name`);
          failed = true;
          return '';
        }
        const v = env[arg];
        if (v === undefined || v === '') {
          issue(path, `environment variable ${arg} is not set`);
          failed = true;
        }
        return v ?? '';
      }
      if (arg.trim() === '') {
        issue(path, '${file:PATH} needs a path');
        failed = true;
        return '';
      }
      const read = readSecretFile(resolve(baseDir, arg));
      if ('problem' in read) {
        issue(path, read.problem);
        failed = true;
        return '';
      }
      return read.value;
    });
    if (value.replace(REF, '').includes('${')) {
      issue(path, 'only ${env:NAME} and ${file:PATH} references are supported here');
      failed = true;
    }
    if (!failed) holder[key] = replaced;
  }
}
