// The metrics of a server started with them (--metrics), loaded only then: the Prometheus client
// and what it brings (prom-client, @opentelemetry/api) took about 85 ms and 11 MiB of RSS in
// every process that loaded them, a plain `serve` and each worker of --workers N included.

import type { ServerMetrics } from './metrics.js';

export async function newServerMetrics(): Promise<ServerMetrics> {
  const { ServerMetrics } = await import('./metrics.js');
  return new ServerMetrics();
}
