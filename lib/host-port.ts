// TCP addresses as an operator writes them: `127.0.0.1:9810`, `lab1:10809`, `[::1]:9810` (an
// IPv6 address needs its brackets, or its colons would swallow the port). One reader for the
// command line (--metrics) and the configuration file (listen, metrics); a bad value is a plain
// Error whose message says what was expected, for either to wrap.

/** A TCP port, 0 (pick a free one) to 65535, written in decimal digits only. */
export function parsePort(value: string): number {
  const port = Number(value);
  if (!/^\d+$/.test(value) || port > 65535) throw new Error('expected a port number from 0 to 65535');
  return port;
}

/** HOST:PORT or [IPv6]:PORT, split; the host is checked for shape only (no lookup). */
export function parseHostPort(value: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d+)$/.exec(value);
  const host = match?.[1] ?? match?.[2];
  if (host === undefined || match?.[3] === undefined) {
    throw new Error('expected HOST:PORT, such as 127.0.0.1:9810 or [::1]:9810');
  }
  return { host, port: parsePort(match[3]) };
}
