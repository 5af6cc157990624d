// The pure part of --workers N: the addresses a worker reads from its environment. The processes themselves are tested with real clients in test/e2e/workers.test.ts.

import t from 'tap';
import { parseWorkerAddresses } from '../../lib/server/worker-process.js';

t.test('parseWorkerAddresses: the primary listeners, or a clear error', (t) => {
  const addresses = [
    { kind: 'tcp', host: '127.0.0.1', port: 10809 },
    { kind: 'unix', path: '/run/nbd.sock' },
  ];
  t.same(parseWorkerAddresses(JSON.stringify(addresses)), addresses);
  t.throws(() => parseWorkerAddresses('[]'), /no listener addresses from the primary/);
  t.throws(() => parseWorkerAddresses('{}'), /no listener addresses from the primary/);
  t.throws(() => parseWorkerAddresses('not json'));
  t.end();
});
