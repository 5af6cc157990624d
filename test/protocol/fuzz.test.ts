// Bounded fuzz (fixed seed) of every decoder: random bytes and mutated valid messages either
// decode or throw ProtocolError / OptionError / RangeError, never anything else.

import t from 'tap';
import { OptionError, ProtocolError } from '../../lib/protocol/errors.js';
import {
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeOptionReply,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOptionHeader,
  encodeOptionReply,
} from '../../lib/protocol/handshake.js';
import {
  decodeRequest,
  decodeSimpleReply,
  decodeStructuredChunkHeader,
  encodeErrorChunk,
  encodeRequest,
  encodeSimpleReply,
} from '../../lib/protocol/transmission.js';

function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const ITERATIONS = 10_000;

const DECODERS: readonly [string, (buf: Buffer) => unknown][] = [
  ['decodeClientFlags', (b) => decodeClientFlags(b)],
  ['decodeOptionHeader', (b) => decodeOptionHeader(b)],
  ['decodeOptionReply', (b) => decodeOptionReply(b)],
  ['decodeInfoRequest', decodeInfoRequest],
  ['decodeMetaContextRequest', decodeMetaContextRequest],
  ['decodeRequest', (b) => decodeRequest(b)],
  ['decodeSimpleReply', (b) => decodeSimpleReply(b)],
  ['decodeStructuredChunkHeader', (b) => decodeStructuredChunkHeader(b)],
];

const SEEDS: readonly Buffer[] = [
  encodeOptionHeader(7, 10),
  encodeOptionReply(7, 3, Buffer.from('0000000000000000100000ff', 'hex')),
  encodeInfoRequest('golden', [0, 1, 2, 3]),
  encodeMetaContextRequest('golden', ['base:allocation', 'qemu:']),
  encodeRequest({ flags: 1, type: 1, cookie: 0x8000000000000001n, offset: 4096, length: 512 }),
  encodeSimpleReply(22, 5n),
  encodeErrorChunk(5n, 22, 'bad'),
];

function allowed(err: unknown): boolean {
  return err instanceof ProtocolError || err instanceof OptionError || err instanceof RangeError;
}

function mutate(rand: () => number, seed: Buffer): Buffer {
  const buf = Buffer.from(seed);
  const edits = 1 + Math.floor(rand() * 4);
  for (let i = 0; i < edits; i++) {
    const what = rand();
    if (what < 0.6 && buf.length > 0) buf[Math.floor(rand() * buf.length)] = Math.floor(rand() * 256);
    else if (what < 0.8) return Buffer.concat([buf.subarray(0, Math.floor(rand() * (buf.length + 1)))]);
    else return Buffer.concat([buf, Buffer.from([Math.floor(rand() * 256)])]);
  }
  return buf;
}

t.test(`decoders fed ${ITERATIONS} random inputs throw only protocol errors`, async (t) => {
  const rand = seededRandom(0x5eed);
  const unexpected = new Map<string, string>();
  let decoded = 0;
  let rejected = 0;
  for (let i = 0; i < ITERATIONS; i++) {
    let input: Buffer;
    if (i % 2 === 0) {
      input = Buffer.alloc(Math.floor(rand() * 48));
      for (let j = 0; j < input.length; j++) input[j] = Math.floor(rand() * 256);
    } else {
      input = mutate(rand, SEEDS[i % SEEDS.length] as Buffer);
    }
    for (const [name, decode] of DECODERS) {
      try {
        decode(input);
        decoded++;
      } catch (err) {
        if (allowed(err)) rejected++;
        else if (!unexpected.has(name)) unexpected.set(name, `${String(err)} on ${input.toString('hex')}`);
      }
    }
  }
  t.strictSame(Object.fromEntries(unexpected), {}, 'no unexpected exception type');
  t.ok(decoded > 0, `some inputs decode (${decoded})`);
  t.ok(rejected > 0, `some inputs are refused (${rejected})`);
});
