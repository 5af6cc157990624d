// mqtt-packet style fixtures for the pure codecs: one annotated byte string checked both ways.

import t from 'tap';

/** Decode the bytes, encode the object, and round trip both ways, as one named test. */
export function testParseGenerate<T>(
  name: string,
  object: T,
  bytes: Buffer,
  decode: (buf: Buffer) => T,
  encode: (obj: T) => Buffer,
): void {
  t.test(name, async (t) => {
    t.strictSame(decode(bytes), object, 'decode');
    t.strictSame(encode(object), bytes, 'encode');
    t.strictSame(decode(encode(object)), object, 'round trip object');
    t.strictSame(encode(decode(bytes)), bytes, 'round trip bytes');
  });
}
