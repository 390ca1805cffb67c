/**
 * Loaded with `--import` into a server process by bench/memory.ts (never by the product): every
 * 250 ms it writes one JSON line with `process.memoryUsage()`, V8's heap spaces and
 * `/proc/self/smaps_rollup` to the file named by PORTCULLIS_MEMORY_PROBE (replaced atomically, so
 * the file always holds the latest reading); worker threads write `<file>.<threadId>` with their
 * own heap. With PORTCULLIS_MEMORY_PROBE_MODULES set, the main thread also writes the packages and
 * source files it loaded, with counts, to that file.
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { registerHooks } from 'node:module';
import { getHeapSpaceStatistics } from 'node:v8';
import cluster from 'node:cluster';
import { isMainThread, threadId } from 'node:worker_threads';

const base = process.env.PORTCULLIS_MEMORY_PROBE;
const modulesFile = process.env.PORTCULLIS_MEMORY_PROBE_MODULES;
const mib = (n: number) => Math.round((n / 1048576) * 10) / 10;

function write(file: string, text: string): void {
  writeFileSync(`${file}.tmp`, text);
  renameSync(`${file}.tmp`, file);
}

if (base !== undefined && base !== '') {
  // A cluster worker (`--workers N`) reports as `<file>.w<pid>`, its threads after that.
  const own = cluster.isWorker ? `${base}.w${String(process.pid)}` : base;
  const file = isMainThread ? own : `${own}.${String(threadId)}`;
  const timer = setInterval(() => {
    const usage = process.memoryUsage();
    const spaces: Record<string, number> = {};
    for (const s of getHeapSpaceStatistics()) if (s.space_size > 0) spaces[s.space_name] = mib(s.space_size);
    const reading: Record<string, unknown> = {
      heapTotal: mib(usage.heapTotal),
      heapUsed: mib(usage.heapUsed),
      external: mib(usage.external),
      arrayBuffers: mib(usage.arrayBuffers),
      new: spaces.new_space,
      old: spaces.old_space,
      code: spaces.code_space,
    };
    if (isMainThread) {
      const rollup: Record<string, number> = {};
      for (const line of readFileSync('/proc/self/smaps_rollup', 'utf8').split('\n')) {
        const m = /^(\w+):\s+(\d+) kB/.exec(line);
        if (m !== null) rollup[m[1] as string] = Number(m[2]) * 1024;
      }
      reading.rss = mib(usage.rss);
      reading.anon = mib(rollup.Anonymous ?? 0);
      reading.file = mib((rollup.Rss ?? 0) - (rollup.Anonymous ?? 0));
      reading.threads = Number(/^Threads:\s+(\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]);
    }
    write(file, JSON.stringify(reading) + '\n');
  }, 250);
  timer.unref();
}

if (isMainThread && cluster.isPrimary && modulesFile !== undefined && modulesFile !== '') {
  const loaded = new Map<string, number>();
  registerHooks({
    load(url, context, next) {
      const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
      const key = m !== null ? m[1]! : url.startsWith('file:') ? url.replace(/^.*?\/src\//, 'src/') : url;
      loaded.set(key, (loaded.get(key) ?? 0) + 1);
      return next(url, context);
    },
  });
  const timer = setInterval(() => {
    const sorted = [...loaded].sort((a, b) => b[1] - a[1]);
    write(modulesFile, sorted.map(([k, n]) => `${String(n)}\t${k}`).join('\n') + '\n');
  }, 1000);
  timer.unref();
}
