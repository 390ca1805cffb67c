/**
 * The README's walk-through, run as written: every command of every `sh` block between
 * "Five-minute walk-through" and "Commands" runs in bash (real curl, real `npx portcullis`)
 * against a started quickstart. The only rewrites are the ones a second copy of the quickstart
 * needs: free ports instead of 8443/9443/4010, and a temporary configuration and data directory
 * instead of `examples/quickstart/portcullis.yaml` and `.portcullis/`. A line the reader fills in
 * (`ID=pc_…; SECRET=…`) takes its values from the previous command's JSON output, as a reader
 * would copy them. Each command must exit 0, and a command whose line ends in `# NNN` must
 * answer that HTTP status (curl's `-w`), so a README that drifts from the product fails here.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from './cli-harness.ts';
import { startQuickstart } from './quickstart-harness.ts';
import type { RunningQuickstart } from './quickstart-harness.ts';

/** The walk-through's commands, in order: continuation lines joined, comments and blanks dropped. */
export function walkthroughCommands(readme: string): string[] {
  const start = readme.indexOf('## Five-minute walk-through');
  const end = readme.indexOf('## Commands');
  if (start < 0 || end < start) throw new Error('README has no walk-through section before Commands');
  const section = readme.slice(start, end);
  const commands: string[] = [];
  for (const block of section.matchAll(/^```sh\n([\s\S]*?)^```/gm)) {
    const text = (block[1] ?? '').replace(/\\\n\s*/g, '');
    for (const line of text.split('\n')) {
      const trimmed = line.trim();
      if (trimmed === '' || trimmed.startsWith('#')) continue;
      commands.push(trimmed);
    }
  }
  return commands;
}

/** The HTTP status a line documents with a trailing `# NNN`, if any. */
function documentedStatus(line: string): number | undefined {
  const m = /#\s*(\d{3})\b[^#]*$/.exec(line);
  return m === null ? undefined : Number(m[1]);
}

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function bash(command: string, env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((ok) => {
    execFile('bash', ['-c', command], { cwd: ROOT, env, timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
      ok({ code, stdout, stderr });
    });
  });
}

let qs: RunningQuickstart;

beforeAll(async () => {
  qs = await startQuickstart('portcullis-readme-');
}, 90_000);

afterAll(async () => {
  await qs.close();
}, 30_000);

describe('the README walk-through', () => {
  it('finds the commands a reader runs, with the statuses they document', () => {
    const commands = walkthroughCommands(readFileSync(join(ROOT, 'README.md'), 'utf8'));
    expect(commands.length).toBeGreaterThan(10);
    expect(commands.filter((c) => c.startsWith('curl')).every((c) => documentedStatus(c) !== undefined)).toBe(
      true,
    );
  });

  it('runs every command as written against a started quickstart', async () => {
    const commands = walkthroughCommands(readFileSync(join(ROOT, 'README.md'), 'utf8'));
    const rewrite = (line: string) =>
      line
        .replaceAll('https://localhost:8443', qs.gatewayUrl)
        .replaceAll('https://127.0.0.1:9443', `https://127.0.0.1:${String(qs.adminPort)}`)
        .replaceAll(
          '--config examples/quickstart/portcullis.yaml',
          `--config ${qs.configFile} --data-dir ${qs.dataDir}`,
        )
        .replaceAll('.portcullis/tls/ca.crt', join(qs.dataDir, 'tls/ca.crt'));
    const env: NodeJS.ProcessEnv = { ...process.env };
    let lastJson: Record<string, unknown> | undefined;
    const ran: string[] = [];
    for (const original of commands) {
      // The install-and-start line is what beforeAll did on free ports.
      if (original.startsWith('npm install && npm start')) continue;
      const line = rewrite(original);
      const fillIn = /^(\w+)=[^;\s]*…;\s*(\w+)=…$/.exec(line);
      if (fillIn !== null) {
        expect(lastJson, `${original}: no JSON output to copy from`).toBeDefined();
        env[fillIn[1] ?? ''] = String(lastJson?.client_id);
        env[fillIn[2] ?? ''] = String(lastJson?.client_secret);
        continue;
      }
      const assignment = /^(\w+)=(.*)$/.exec(line);
      if (assignment !== null) {
        // `VAR=value` or `VAR=$(…)`: evaluated by bash, kept for the next commands.
        const r = await bash(`printf %s ${assignment[2] ?? ''}`, env);
        expect(r.code, `${original}\n${r.stderr}`).toBe(0);
        env[assignment[1] ?? ''] = r.stdout.trim();
        expect(env[assignment[1] ?? ''], `${original} set nothing`).not.toBe('');
        continue;
      }
      const expected = documentedStatus(line);
      const command =
        expected === undefined
          ? line.replace(/\s#.*$/, '')
          : `${line.replace(/\s#.*$/, '')} -w '\\n@@status=%{http_code}'`;
      const r = await bash(command, env);
      expect(r.code, `${original}\n${r.stderr}`).toBe(0);
      if (expected !== undefined) {
        const status = /@@status=(\d{3})/.exec(r.stdout)?.[1];
        expect(Number(status), `${original}\n${r.stdout}`).toBe(expected);
      }
      const json = /^\{.*\}$/m.exec(r.stdout)?.[0];
      if (json !== undefined) {
        try {
          lastJson = JSON.parse(json) as Record<string, unknown>;
        } catch {
          // not JSON after all (a header line in braces): keep the previous one
        }
      }
      ran.push(original);
    }
    expect(ran.length).toBeGreaterThan(10);
    // What the walk-through used never reaches the logs.
    for (const secret of [env.SECRET, env.TOKEN]) {
      expect(secret).toBeTruthy();
      expect(qs.output()).not.toContain(secret);
    }
  }, 240_000);
});
