// The fuzzer's seeds: what real clients sent, from the recordings in fixtures/transcripts/*.hex
// (client-to-server messages only, one per recorded message, in order).

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseTranscript } from '../test/helpers/transcript.js';

export interface Message {
  /** The recording's comment naming the message (`NBD_OPT_GO: export "pattern", …`). */
  readonly label: string;
  readonly bytes: Buffer;
}

export interface Recording {
  /** The file name without `.hex`, e.g. `qemu-io-write-read`. */
  readonly name: string;
  /** Client flags first, then options, then requests, as the client sent them. */
  readonly messages: readonly Message[];
}

/** Every recording in `dir`, sorted by name so that a seed means the same streams on every machine. */
export function loadRecordings(dir: string): Recording[] {
  const files = readdirSync(dir)
    .filter((name) => name.endsWith('.hex'))
    .sort();
  const recordings = files.map((file) => {
    const steps = parseTranscript(readFileSync(join(dir, file), 'utf8'));
    const messages = steps
      .filter((step) => step.dir === '>' && step.kind === 'bytes')
      .map((step) => ({ label: step.label, bytes: step.bytes }));
    return { name: file.slice(0, -'.hex'.length), messages };
  });
  if (recordings.length === 0) throw new Error(`no recordings (*.hex) in ${dir}`);
  return recordings;
}

/** All of a recording's client bytes, as one stream. */
export function joined(messages: readonly Message[]): Buffer {
  return Buffer.concat(messages.map((m) => m.bytes));
}
