// An NbdListener on 127.0.0.1 serving one in-memory export named "fake" whose devices the test
// supplies; its clients and the listener itself are cleaned up at teardown.

import type { Test } from 'tap';
import type { BlockDevice } from '../../lib/block/device.js';
import { createLogger } from '../../lib/log.js';
import { type ConnectionLimits, DEFAULT_LIMITS } from '../../lib/server/connection-limits.js';
import { type Export, singleExportRegistry } from '../../lib/server/exports.js';
import { NbdListener } from '../../lib/server/listener.js';
import { MemoryBudget } from '../../lib/server/memory-budget.js';
import { NO_TLS, type TlsSettings } from '../../lib/server/tls-credentials.js';
import { within } from './wait.js';

export interface FakeListenerOptions {
  readonly size: number;
  readonly description?: string;
  /** Called at each GO / EXPORT_NAME. */
  readonly openDevice: () => Promise<BlockDevice>;
  readonly limits?: Partial<ConnectionLimits> | undefined;
  /** The memory budget shared by the connections (default: 256 MiB, stall limit from `limits`). */
  readonly budget?: MemoryBudget;
  readonly tls?: TlsSettings;
  /** Runs at teardown after the clients are destroyed, before the listener stops. */
  readonly beforeStop?: () => void;
}

export interface FakeListener {
  readonly listener: NbdListener;
  /** Remember a client so that teardown destroys it. */
  track<T extends { destroy(): void }>(client: T): T;
}

/** The listener, not listening yet (for tests of listen() itself; nothing stops it). */
export function createFakeListener(options: Omit<FakeListenerOptions, 'beforeStop'>): NbdListener {
  const exp: Export = {
    name: 'fake',
    description: options.description ?? '',
    size: options.size,
    readOnly: false,
    preferredBlockSize: 4096,
    openDevice: options.openDevice,
  };
  const limits = { ...DEFAULT_LIMITS, ...options.limits };
  return new NbdListener({
    registry: singleExportRegistry(exp),
    log: createLogger('silent'),
    limits,
    budget: options.budget ?? new MemoryBudget({ limit: 256 * 1024 * 1024, stallMs: limits.replyStallMs }),
    tls: options.tls ?? NO_TLS,
  });
}

export async function startFakeListener(t: Test, options: FakeListenerOptions): Promise<FakeListener> {
  const listener = createFakeListener(options);
  await listener.listen({ kind: 'tcp', host: '127.0.0.1', port: 0 });
  const clients: { destroy(): void }[] = [];
  t.teardown(async () => {
    for (const c of clients) c.destroy();
    options.beforeStop?.();
    await within(listener.stop(), 10_000, 'listener.stop()');
  });
  return {
    listener,
    track(client) {
      clients.push(client);
      return client;
    },
  };
}

/** Let the event loop turn a few times (used only before checking that nothing happened). */
export function settle(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 50));
}
