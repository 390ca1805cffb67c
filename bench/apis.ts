/**
 * OpenAPI documents and configuration pieces shared by bench/hostile.ts and bench/validation.ts.
 *
 * Both documents are the demo patients API (examples/demo-upstream/openapi.yaml, read at run
 * time) with `POST /patients` made public (`security: []`), so that the benchmarks measure
 * validation and rate limiting rather than token verification:
 * - `validated`: the operation as the demo declares it: the `PatientInput` body schema (closed
 *   objects, patterns, `writeOnly`), and response enforcement of the `201` (`Patient` schema, the
 *   `Location` header) and problem responses.
 * - `bare`: the closest the gateway comes to a bare proxy: the body declared as `*\/*` without a
 *   schema (passed as bytes, not parsed), and every response declared without content (passed
 *   unchanged).
 */
import { randomUUID } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { parse, stringify } from 'yaml';
import { onCleanup, ROOT } from './processes.ts';

/** A body that `PatientInput` accepts and the demo upstream stores (201). */
export const VALID_PATIENT = {
  givenName: 'Siobhan',
  familyName: "O'Brien",
  birthDate: '1984-07-21',
  email: 'siobhan.obrien@example.org',
  nationalId: 'AB-123456-C',
};

/** Rate limits that count every request but never refuse one. */
const HIGH = {
  burst: { points: 1_000_000_000, seconds: 1 },
  sustained: { points: 1_000_000_000, seconds: 60 },
};
export const HIGH_RATE_LIMITS = { ip: HIGH, client: HIGH, apiKey: HIGH, user: HIGH };

/** `rateLimits.mode: off` needs a documented exception (src/config/schema.ts, CONTROLS). */
export const RATE_LIMITS_OFF = {
  rateLimits: { mode: 'off' },
  exceptions: [
    {
      id: 'bench-rate-limits-off',
      control: 'rate-limits',
      scope: 'benchmark baseline only',
      rationale: 'measures the gateway without rate limiting, as the baseline',
      compensatingControls: ['loopback only, short-lived process'],
      owner: 'bench',
      approver: 'bench',
      expires: '2999-12-31',
    },
  ],
};

type Json = Record<string, unknown>;

function record(value: unknown, where: string): Json {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new Error(`examples/demo-upstream/openapi.yaml: ${where} is not an object`);
  }
  return value as Json;
}

export interface BenchDocs {
  bare: string;
  validated: string;
}

/** Writes both documents into `dir` and returns their paths. */
export async function writeBenchDocs(dir: string): Promise<BenchDocs> {
  const text = await readFile(join(ROOT, 'examples/demo-upstream/openapi.yaml'), 'utf8');

  const validated = record(parse(text), 'the document');
  const post = record(record(record(validated.paths, 'paths')['/patients'], '/patients').post, 'post');
  post.security = [];

  const bare = record(parse(text), 'the document');
  const barePost = record(record(record(bare.paths, 'paths')['/patients'], '/patients').post, 'post');
  barePost.security = [];
  barePost.requestBody = { required: true, content: { '*/*': {} } };
  barePost.responses = {
    '201': { description: 'Created; passed unchanged.' },
    default: { description: 'Anything else; passed unchanged.' },
  };

  const paths = { bare: join(dir, 'bare.openapi.yaml'), validated: join(dir, 'validated.openapi.yaml') };
  await writeFile(paths.bare, stringify(bare));
  await writeFile(paths.validated, stringify(validated));
  return paths;
}

/** The `apis` section for one document, proxying to `upstreamUrl` under `/v1`. */
export function apisFor(openapi: string, upstreamUrl: string): Json {
  return { apis: [{ name: 'patients', openapi, basePath: '/v1', upstream: { url: upstreamUrl } }] };
}

export const BENCH_PG_URL = process.env.PORTCULLIS_BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
export const BENCH_REDIS_URL = process.env.PORTCULLIS_BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';

const schemas: string[] = [];
let schemaCleanup = false;

/**
 * Distributed mode for `nodes` gateway processes (`cluster.nodes`; `--workers N` needs it): the
 * store in a fresh PostgreSQL schema (dropped at cleanup), Redis under its own key prefix, the
 * rate limiter (raised, never refusing) in Redis or in memory.
 */
export function distributedConfig(nodes: number, limiter: 'redis' | 'memory'): Json {
  if (!schemaCleanup) {
    schemaCleanup = true;
    onCleanup(async () => {
      if (schemas.length === 0) return;
      const client = new pg.Client({ connectionString: BENCH_PG_URL });
      await client.connect();
      try {
        for (const s of schemas) await client.query(`drop schema if exists "${s}" cascade`);
      } finally {
        await client.end();
      }
    });
  }
  const schema = `bench_cluster_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
  schemas.push(schema);
  const url = new URL(BENCH_PG_URL);
  url.searchParams.set('schema', schema);
  return {
    store: { url: url.href },
    redis: { url: BENCH_REDIS_URL, keyPrefix: `bench:${schema}:` },
    cluster: { nodes },
    rateLimits: { ...HIGH_RATE_LIMITS, backend: limiter },
    idempotency: { backend: nodes > 1 ? 'redis' : 'memory' },
  };
}
