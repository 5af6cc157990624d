// A real nbd-cow (startServer) on a small deterministic base in the test's dir, with raw
// clients that are destroyed, and the server stopped, at teardown. Shared by the socket tests.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { type ListenAddress, type RunningServer, type ServerOptions, startServer } from '../../lib/index.js';
import { writeBaseFile } from './bases.js';
import { RawClient } from './raw-nbd/client.js';
import { type Negotiated, type NegotiateOptions, negotiate } from './raw-nbd/negotiate.js';
import { within } from './wait.js';

export interface ServerFixture {
  readonly server: RunningServer;
  readonly base: { path: string; bytes: Buffer };
  readonly overlayDir: string;
  readonly dir: string;
  connect(options?: NegotiateOptions): Promise<Negotiated>;
  raw(): Promise<RawClient>;
}

/** Start a server on a `size`-byte base; `listen` picks the address (default 127.0.0.1:0). */
export async function startFixture(
  t: Test,
  size: number,
  options: Partial<ServerOptions> = {},
  listen?: (dir: string) => ListenAddress,
): Promise<ServerFixture> {
  const dir = t.testdir({ overlays: {} });
  const base = writeBaseFile(dir, size);
  const overlayDir = join(dir, 'overlays');
  const server = await startServer({
    base: base.path,
    listen: listen?.(dir) ?? { kind: 'tcp', host: '127.0.0.1', port: 0 },
    overlayDir,
    logLevel: 'silent',
    ...options,
  });
  const clients: RawClient[] = [];
  t.teardown(async () => {
    for (const c of clients) c.destroy();
    await within(server.stop(), 10_000, 'server.stop()');
  });
  return {
    server,
    base,
    overlayDir,
    dir,
    async connect(opts = {}) {
      const n = await negotiate(server.address, opts);
      clients.push(n.client);
      return n;
    },
    async raw() {
      const c = await RawClient.connect(server.address);
      clients.push(c);
      return c;
    },
  };
}

/** A short temp dir: a unix socket path must fit sun_path (107 bytes); tap's fixture paths do not. */
export function shortDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'nbdcow-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
