// formatUri for an inherited socket whose address is unknown: described, not a URI (the tcp and
// unix forms are tested in test/index.test.ts through the public API).

import t from 'tap';
import { formatUri } from '../../lib/server/uri.js';

t.test('an unresolved inherited socket is described with its fd and name', async (t) => {
  t.equal(formatUri({ kind: 'inherited', fd: 3 }, 'golden'), 'nbd: inherited socket fd 3, export "golden"');
  t.equal(
    formatUri({ kind: 'inherited', fd: 4, name: 'nbd-cow.socket' }, 'a b', true),
    'nbds: inherited socket fd 4 (nbd-cow.socket), export "a b"',
  );
});
