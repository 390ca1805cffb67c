/**
 * `sh scripts/node24.sh bench/audit.ts --gateway`: the gateway end to end with
 * `audit.durability: batched` against `strict` (see bench/audit.ts for why batched is the
 * baseline), and the demo upstream directly as a reference. Gateways run as `portcullis start`
 * child processes (bench/processes.ts) and are loaded with autocannon (bench/load.ts).
 */
import { loadavg } from 'node:os';
import { measure, stopActiveLoad } from './load.ts';
import type { LoadTarget, Measurement } from './load.ts';
import { cleanup, httpsGet, makeTempDir, startGateway, startUpstream } from './processes.ts';
import type { GatewayProcess } from './processes.ts';
import { openStore } from '../src/store/index.ts';
import { HIGH_RATE_LIMITS } from './apis.ts';

/** Rate limits that count every request but never refuse one (the load comes from one address). */
/** The baseline gateway turns request events off, which the config refuses without this. */
const AUDIT_OFF_EXCEPTION = {
  id: 'bench-audit-off',
  control: 'audit-request-events',
  scope: 'the benchmark baseline gateway only',
  rationale: 'measures what request auditing costs against the same gateway without it',
  compensatingControls: ['throwaway benchmark data directory'],
  owner: 'bench/audit-gateway.ts',
  approver: 'bench/audit-gateway.ts',
  expires: '2099-12-31',
};

export interface GatewayBenchOptions {
  readonly durationS: number;
  readonly connections: number;
  readonly rounds: number;
  readonly json: boolean;
}

const median = (values: readonly number[]): number => {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] ?? 0) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
};

function progress(message: string): void {
  process.stderr.write(`bench: ${message}\n`);
}

async function auditRows(gw: GatewayProcess): Promise<number> {
  const store = await openStore({ url: 'sqlite:portcullis.db', dataDir: gw.dataDir });
  try {
    const row = await store.db
      .selectFrom('audit_events')
      .select((eb) => eb.fn.countAll<number | string>().as('n'))
      .executeTakeFirstOrThrow();
    return Number(row.n);
  } finally {
    await store.close();
  }
}

export async function benchGateway(options: GatewayBenchOptions): Promise<void> {
  const stop = () => {
    stopActiveLoad();
    void cleanup().then(() => process.exit(130));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const root = await makeTempDir();
    const upstream = await startUpstream();
    progress(`demo upstream ${upstream.url}`);
    const gateways: Record<'off' | 'batched' | 'strict', GatewayProcess> = {
      off: await startGateway(root, {
        name: 'audit-off',
        upstreamUrl: upstream.url,
        logLevel: 'warn',
        accessLog: false,
        extraConfig: {
          audit: { requestEvents: false },
          exceptions: [AUDIT_OFF_EXCEPTION],
          rateLimits: HIGH_RATE_LIMITS,
        },
      }),
      batched: await startGateway(root, {
        name: 'audit-batched',
        upstreamUrl: upstream.url,
        logLevel: 'warn',
        accessLog: false,
        extraConfig: { audit: { durability: 'batched' }, rateLimits: HIGH_RATE_LIMITS },
      }),
      strict: await startGateway(root, {
        name: 'audit-strict',
        upstreamUrl: upstream.url,
        logLevel: 'warn',
        accessLog: false,
        extraConfig: { audit: { durability: 'strict' }, rateLimits: HIGH_RATE_LIMITS },
      }),
    };
    const targets: LoadTarget[] = [
      { name: 'upstream direct (http)', url: `${upstream.url}/status`, expectStatus: 200 },
      ...(['off', 'batched', 'strict'] as const).map((mode) => ({
        name: `gateway, audit ${mode}`,
        url: `${gateways[mode].url}/v1/status`,
        expectStatus: 200,
        servername: gateways[mode].servername,
        ca: gateways[mode].ca,
      })),
    ];
    for (const gw of Object.values(gateways)) {
      const answer = await httpsGet(`${gw.url}/v1/status`, gw.ca, gw.servername);
      if (answer.status !== 200) throw new Error(`${gw.name}: /v1/status answered ${String(answer.status)}`);
    }
    const before = {
      batched: await auditRows(gateways.batched),
      strict: await auditRows(gateways.strict),
    };
    for (const t of targets) await measure(t, { durationS: 2, connections: options.connections }); // warm-up
    const warm = {
      batched: await auditRows(gateways.batched),
      strict: await auditRows(gateways.strict),
    };
    const runs = new Map<string, Measurement[]>(targets.map((t) => [t.name, []]));
    for (let r = 0; r < options.rounds; r++) {
      for (let k = 0; k < targets.length; k++) {
        const t = targets[(k + r) % targets.length];
        if (t === undefined) continue;
        progress(`round ${String(r + 1)}/${String(options.rounds)}: ${t.name}`);
        runs
          .get(t.name)
          ?.push(await measure(t, { durationS: options.durationS, connections: options.connections }));
      }
    }
    // Batched events reach the store within batchMaxDelayMs; give them a moment.
    await new Promise((ok) => setTimeout(ok, 500));
    const responses = (name: string) => (runs.get(name) ?? []).reduce((n, m) => n + m.responses, 0);
    const audited = {
      batched: (await auditRows(gateways.batched)) - warm.batched,
      strict: (await auditRows(gateways.strict)) - warm.strict,
    };
    const base = median((runs.get('gateway, audit off') ?? []).map((m) => m.rps));
    const baseP99 = median((runs.get('gateway, audit off') ?? []).map((m) => m.p99));
    const rows = targets.map((t) => {
      const ms = runs.get(t.name) ?? [];
      const rps = median(ms.map((m) => m.rps));
      const p99 = median(ms.map((m) => m.p99));
      return {
        target: t.name,
        rps: Math.round(rps),
        p50Ms: Number(median(ms.map((m) => m.p50)).toFixed(2)),
        p99Ms: Number(p99.toFixed(2)),
        rpsVsBatched: Number((rps / base).toFixed(3)),
        p99VsBatched: Number((p99 / baseP99).toFixed(3)),
        rpsPerRound: ms.map((m) => Math.round(m.rps)),
        bad: ms.reduce((n, m) => n + m.unexpected + m.errors, 0),
      };
    });
    const check = (['batched', 'strict'] as const).map((mode) => ({
      mode,
      responses: responses(`gateway, audit ${mode}`),
      auditEvents: audited[mode],
      startUpEvents: before[mode],
    }));
    const meta = {
      durationS: options.durationS,
      connections: options.connections,
      rounds: options.rounds,
      node: process.version,
      loadAverage: loadavg().map((l) => Number(l.toFixed(2))),
      baseline: 'gateway, audit off (audit.requestEvents: false under a documented exception)',
    };
    if (options.json) {
      process.stdout.write(JSON.stringify({ ...meta, results: rows, audited: check }, null, 2) + '\n');
    } else {
      process.stdout.write(
        `gateway end to end, GET /v1/status (${String(options.connections)} connections, ${String(options.rounds)} x ${String(options.durationS)} s, medians; baseline: request auditing off)\n\n` +
          '| target | req/s | p50 ms | p99 ms | req/s vs off | p99 vs off | req/s per round | bad |\n|---|---|---|---|---|---|---|---|\n' +
          rows
            .map(
              (r) =>
                `| ${r.target} | ${String(r.rps)} | ${r.p50Ms.toFixed(2)} | ${r.p99Ms.toFixed(2)} | ${r.rpsVsBatched.toFixed(2)} | ${r.p99VsBatched.toFixed(2)} | ${r.rpsPerRound.join(', ')} | ${String(r.bad)} |`,
            )
            .join('\n') +
          '\n\naudit events committed during the rounds vs responses: ' +
          check.map((c) => `${c.mode} ${String(c.auditEvents)}/${String(c.responses)}`).join(', ') +
          `\nload average at the end: ${meta.loadAverage.join(' ')}\n`,
      );
    }
  } finally {
    await cleanup();
  }
}
