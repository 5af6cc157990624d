// The block layer's errors: plain Errors carrying a POSIX `code` (device.ts), which only the
// server maps to NBD errno values.

/** An Error with `code` set, e.g. codedError('EINVAL', 'bad header'). */
export function codedError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}
