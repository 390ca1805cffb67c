/**
 * The quickstart as `npm start` runs it, on free ports: a copy of
 * `examples/quickstart/portcullis.yaml` (OpenAPI path made absolute, demo upstream on its own
 * port) started with the real CLI in a temporary data directory. Used by the tests that drive the
 * quickstart from outside: the README walk-through and `portcullis probe`.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parse, stringify } from 'yaml';
import { freePort } from './admin-harness.ts';
import { ROOT } from './cli-harness.ts';
import { tempDir } from './helpers.ts';

export interface RunningQuickstart {
  readonly gatewayPort: number;
  readonly adminPort: number;
  /** `https://localhost:<gatewayPort>`, the public origin. */
  readonly gatewayUrl: string;
  readonly configFile: string;
  readonly dataDir: string;
  /** Everything the process wrote so far (stdout and stderr). */
  output(): string;
  /** SIGTERM, wait for the exit, remove the temporary directory. */
  close(): Promise<void>;
}

export async function startQuickstart(prefix: string): Promise<RunningQuickstart> {
  const dir = await tempDir(prefix);
  const [gatewayPort, adminPort, demoPort] = [await freePort(), await freePort(), await freePort()];
  const quickstart = parse(readFileSync(join(ROOT, 'examples/quickstart/portcullis.yaml'), 'utf8')) as {
    gateway: { port: number; publicUrl: string };
    admin: { port: number };
    demoUpstream: { port: number };
    apis: { openapi: string; upstream: { url: string } }[];
  };
  const gatewayUrl = `https://localhost:${String(gatewayPort)}`;
  quickstart.gateway.port = gatewayPort;
  quickstart.gateway.publicUrl = gatewayUrl;
  quickstart.admin.port = adminPort;
  quickstart.demoUpstream.port = demoPort;
  for (const api of quickstart.apis) {
    api.openapi = resolve(ROOT, 'examples/quickstart', api.openapi);
    api.upstream.url = `http://127.0.0.1:${String(demoPort)}`;
  }
  const configFile = join(dir, 'portcullis.yaml');
  const dataDir = join(dir, 'data');
  await writeFile(configFile, stringify(quickstart));
  const child = spawn(
    'sh',
    [
      join(ROOT, 'scripts/node24.sh'),
      join(ROOT, 'src/cli/main.ts'),
      'start',
      '--config',
      configFile,
      '--data-dir',
      dataDir,
    ],
    { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (output += d.toString('utf8')));
  const close = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const closed = once(child, 'close');
      child.kill('SIGTERM');
      await closed;
    }
    await rm(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 45_000;
  while (!output.includes('Stop: Ctrl-C')) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await close();
      throw new Error(`portcullis did not start: ${output}`);
    }
    await new Promise((ok) => setTimeout(ok, 100));
  }
  return { gatewayPort, adminPort, gatewayUrl, configFile, dataDir, output: () => output, close };
}
