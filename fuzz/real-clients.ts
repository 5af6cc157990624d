// Between batches a real client must still be served: nbdinfo --size in clear and over TLS
// (PSK), and python3-libnbd writing and reading back on the throwaway export (an untouched
// range must read as the base) and on a named overlay, whose previous round's block must still
// hold what that round wrote.

import { pythonWithNbd, which } from '../test/helpers/clients.js';
import { run } from '../test/helpers/processes.js';

export interface ClientTarget {
  readonly port: number;
  readonly exportName: string;
  readonly exportSize: number;
  readonly base: string;
  readonly pskIdentity: string;
  readonly pskFile: string;
}

export interface ClientCheck {
  readonly name: string;
  readonly ok: boolean;
  /** Why it failed (the client's output), or ''. */
  readonly detail: string;
}

/** The named overlay the checks own; no fuzzed name can reach it (hostile-names.ts). */
const HEALTH_OVERLAY = 'fuzz-health';
const CLIENT_TIMEOUT_MS = 60_000;

// argv: uri named_uri base_path round. Prints nothing and exits 0 when every check holds.
const PYTHON_CHECK = `
import sys, nbd
uri, named_uri, base_path, rnd = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def check(cond, what):
    if not cond:
        print(what)
        sys.exit(1)
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
span = 65536
off = (rnd * 7 * 4096) % (size - span - 4096)
data = bytes(((i * 13 + rnd) & 0xff) for i in range(span))
h.pwrite(data, off)
check(h.pread(span, off) == data, "throwaway export: read after write differs at offset %d" % off)
with open(base_path, "rb") as f:
    f.seek(off + span)
    base = f.read(4096)
check(h.pread(4096, off + span) == base, "throwaway export: untouched range differs from the base at %d" % (off + span))
h.flush()
h.shutdown()
n = nbd.NBD()
n.connect_uri(named_uri)
blocks = size // 4096
if rnd > 0:
    prev = rnd - 1
    got = n.pread(4096, (prev % blocks) * 4096)
    check(got == bytes([prev & 0xff]) * 4096, "named overlay: round %d's block lost" % prev)
n.pwrite(bytes([rnd & 0xff]) * 4096, (rnd % blocks) * 4096)
n.flush()
n.shutdown()
`;

/** What is missing to run the checks (empty when nothing is). */
export function missingClients(): string[] {
  const missing = ['nbdinfo'].filter((name) => which(name) === undefined);
  if (pythonWithNbd() === undefined) missing.push('python3-libnbd');
  return missing;
}

async function nbdinfoSize(name: string, uri: string, expected: number): Promise<ClientCheck> {
  const r = await run('nbdinfo', ['--size', uri], { timeoutMs: CLIENT_TIMEOUT_MS });
  const ok = r.code === 0 && r.stdout.trim() === String(expected);
  return {
    name,
    ok,
    detail: ok ? '' : `exit ${r.code ?? r.signal}${r.timedOut ? ' (timed out)' : ''}: ${r.stdout.trim()} ${r.stderr.trim()}`,
  };
}

/** Run every check; `round` (0, 1, 2 …, one per call on one overlay directory) places the writes. */
export async function checkRealClients(target: ClientTarget, round: number): Promise<ClientCheck[]> {
  const host = `127.0.0.1:${target.port}`;
  const plain = `nbd://${host}/${target.exportName}`;
  const tls = `nbds://${target.pskIdentity}@${host}/${target.exportName}?tls-psk-file=${encodeURIComponent(target.pskFile)}`;
  const named = `nbd://${host}/${encodeURIComponent(`${target.exportName}@${HEALTH_OVERLAY}`)}`;
  const checks = [
    await nbdinfoSize('nbdinfo', plain, target.exportSize),
    await nbdinfoSize('nbdinfo-tls', tls, target.exportSize),
  ];
  const python = pythonWithNbd();
  if (python === undefined) return [...checks, { name: 'python3-libnbd', ok: false, detail: 'not installed' }];
  const r = await run(python, ['-c', PYTHON_CHECK, plain, named, target.base, String(round)], { timeoutMs: CLIENT_TIMEOUT_MS });
  const ok = r.code === 0;
  return [
    ...checks,
    { name: 'python3-libnbd', ok, detail: ok ? '' : `exit ${r.code ?? r.signal}: ${r.stdout.trim()} ${r.stderr.trim()}` },
  ];
}
