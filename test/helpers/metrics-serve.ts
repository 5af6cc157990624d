// The CLI under test with --metrics: `serve` prints its NBD URI, then its metrics URL; both are
// awaited here (startServe reads only the first line). Stopped by its own pid in t.teardown.
// Also: a scrape as a map from series (`name{labels}`) to value.

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Test } from 'tap';
import { pidOf, ROOT } from './processes.js';
import { CLI } from './server-process.js';
import { within } from './wait.js';

export interface MetricsServe {
  /** nbd://127.0.0.1:PORT/EXPORT */
  readonly uri: string;
  /** http://127.0.0.1:PORT/metrics */
  readonly metricsUri: string;
  readonly pid: number;
  stderr(): string;
  /** SIGTERM, and the exit code. */
  stop(): Promise<number | null>;
}

/** `nbd-cow serve BASE -p 0 --metrics 127.0.0.1:0 ARGS…`, once both URLs are printed. */
export function startMetricsServe(
  t: Test,
  base: string,
  args: readonly string[] = [],
  env: NodeJS.ProcessEnv = process.env,
): Promise<MetricsServe> {
  return startPrinting(t, ['serve', base, '-p', '0', '--metrics', '127.0.0.1:0', ...args], env);
}

/** `nbd-cow serve --config FILE` for a file with one listener and `metrics:`, once both URLs are printed. */
export function startMetricsServeConfig(t: Test, configFile: string): Promise<MetricsServe> {
  return startPrinting(t, ['serve', '--config', configFile]);
}

async function startPrinting(t: Test, argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<MetricsServe> {
  const child = spawn(CLI, argv, {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const stop = async (): Promise<number | null> => {
    if (child.exitCode === null && child.signalCode === null) process.kill(pidOf(child), 'SIGTERM');
    return within(exited, 20_000, 'the server to exit');
  };
  t.teardown(async () => {
    await stop().catch(() => child.kill('SIGKILL'));
  });
  const lines: string[] = [];
  const input = createInterface({ input: child.stdout });
  const printed = new Promise<void>((resolve, reject) => {
    input.on('line', (line) => {
      lines.push(line.trim());
      if (lines.length === 2) resolve();
    });
    void exited.then((code) => reject(new Error(`server exited (${code}) before its URLs; stderr: ${stderr}`)));
  });
  await within(printed, 30_000, 'the server to print its URI and metrics URL');
  const [uri = '', metricsUri = ''] = lines;
  return { uri, metricsUri, pid: pidOf(child), stderr: () => stderr, stop };
}

/** The Prometheus text exposition as series text → value (comments and blank lines left out). */
export function parseExposition(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const cut = line.lastIndexOf(' ');
    samples.set(line.slice(0, cut), Number(line.slice(cut + 1)));
  }
  return samples;
}

/** GET `metricsUri`: its content type and its samples. */
export async function scrape(metricsUri: string): Promise<{ type: string | null; text: string; samples: Map<string, number> }> {
  const response = await fetch(metricsUri, { signal: AbortSignal.timeout(10_000) });
  const text = await response.text();
  if (!response.ok) throw new Error(`${metricsUri}: HTTP ${response.status}`);
  return { type: response.headers.get('content-type'), text, samples: parseExposition(text) };
}

/**
 * Scrape until `ready` holds for the samples (a connection's close is counted once its socket
 * and device are gone, a moment after the client returns); the last scrape if it never does.
 */
export async function scrapeUntil(
  metricsUri: string,
  ready: (samples: Map<string, number>) => boolean,
  timeoutMs = 10_000,
): Promise<Map<string, number>> {
  const deadline = Date.now() + timeoutMs;
  let samples = (await scrape(metricsUri)).samples;
  while (!ready(samples) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    samples = (await scrape(metricsUri)).samples;
  }
  return samples;
}
