// The hostile clients of bench/hostile.ts: handshakes that stall after the greeting, options sent
// by half, and clients that pipeline large READs and never read a byte of the replies. Each is
// opened, does its harm once and is then left alone until the case ends.

import type { ListenAddress } from '../../lib/server/listener.js';
import { RawClient } from '../../test/helpers/raw-nbd/client.js';
import { greet, negotiate } from '../../test/helpers/raw-nbd/negotiate.js';
import { NBD_CMD_READ, NBD_OPT_GO, optionBytes, requestBytes } from '../../test/helpers/raw-nbd/wire.js';
import { errorText, pool } from './workloads.js';

export type HostileKind = 'stalled-handshake' | 'half-option' | 'non-reader';

export const HOSTILE_KINDS: readonly HostileKind[] = ['stalled-handshake', 'half-option', 'non-reader'];

/** What a non-reader asks for: READs of this size, this many, pipelined in one write. */
export const NON_READER_READ_BYTES = 32 * 1024 * 1024;
export const NON_READER_READS = 16;

/** A half-sent option declares this much data and sends half of it (64 KiB: nbd-cow's maximum). */
const HALF_OPTION_DECLARED = 64 * 1024;

export interface HostileClient {
  readonly kind: HostileKind;
  readonly client: RawClient;
  /** Our local port: the server's peer port for this connection (tcp-peers.ts). */
  readonly port: number;
  /** When its harm was done, ms since the case started. */
  readonly openedMs: number;
}

export interface HostileTarget {
  readonly address: ListenAddress;
  readonly exportName: string;
  /** The export's size, for the non-readers' offsets. */
  readonly size: number;
  /** The case's start (performance.now()). */
  readonly t0: number;
}

export interface OpenedHostile {
  readonly clients: HostileClient[];
  readonly errors: number;
  readonly firstError: string | null;
}

/** Connect and read the greeting; then send nothing. */
async function stalledHandshake(target: HostileTarget): Promise<RawClient> {
  const client = await RawClient.connect(target.address);
  return destroyOnError(client, async () => {
    await client.read(18);
  });
}

/** Run `harm` on `client`; if it throws, drop the socket and throw on. */
async function destroyOnError(client: RawClient, harm: () => Promise<void>): Promise<RawClient> {
  try {
    await harm();
    return client;
  } catch (err) {
    client.destroy();
    throw err;
  }
}

/**
 * Answer the greeting, then half an option: every other client sends half of the 16-byte
 * header, the others a whole NBD_OPT_GO header declaring 64 KiB of data and half of that data.
 */
async function halfOption(target: HostileTarget, index: number): Promise<RawClient> {
  const client = await RawClient.connect(target.address);
  return destroyOnError(client, async () => {
    await greet(client);
    const whole = optionBytes(NBD_OPT_GO, Buffer.alloc(HALF_OPTION_DECLARED, 0x61));
    client.write(index % 2 === 0 ? whole.subarray(0, 8) : whole.subarray(0, 16 + HALF_OPTION_DECLARED / 2));
  });
}

/** Negotiate, stop reading, then pipeline NON_READER_READS READs of NON_READER_READ_BYTES. */
async function nonReader(target: HostileTarget, index: number): Promise<RawClient> {
  const { client } = await negotiate(target.address, { exportName: target.exportName });
  // Paused, the socket stops taking bytes from the kernel once its small buffer is full, so the
  // TCP window closes and the server's replies pile up on its side.
  client.socket.pause();
  const slots = Math.max(1, Math.floor(target.size / NON_READER_READ_BYTES));
  const requests = Array.from({ length: NON_READER_READS }, (_, i) =>
    requestBytes({
      type: NBD_CMD_READ,
      cookie: BigInt(i + 1),
      offset: ((index * NON_READER_READS + i) % slots) * NON_READER_READ_BYTES,
      length: NON_READER_READ_BYTES,
    }),
  );
  client.write(Buffer.concat(requests));
  return client;
}

const OPENERS: Readonly<Record<HostileKind, (target: HostileTarget, index: number) => Promise<RawClient>>> = {
  'stalled-handshake': stalledHandshake,
  'half-option': halfOption,
  'non-reader': nonReader,
};

/** Open `count` clients of `kind`, `concurrency` at a time; `onOpen` hears of each at once. */
export async function openHostile(
  kind: HostileKind,
  count: number,
  target: HostileTarget,
  onOpen: (c: HostileClient) => void,
  concurrency = 20,
): Promise<OpenedHostile> {
  const clients: HostileClient[] = [];
  let errors = 0;
  let firstError: string | null = null;
  await pool(count, concurrency, async (i) => {
    try {
      const client = await OPENERS[kind](target, i);
      const hostile = { kind, client, port: client.socket.localPort ?? 0, openedMs: performance.now() - target.t0 };
      clients.push(hostile);
      onOpen(hostile);
    } catch (err) {
      errors++;
      firstError ??= `${kind}: ${errorText(err)}`;
    }
  });
  return { clients, errors, firstError };
}
