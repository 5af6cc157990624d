// How the command line ends on an error: one line on stderr, exit status 1.

export function fail(err: unknown): never {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`nbd-cow: ${message}\n`);
  process.exit(1);
}
