// Parser for the recorded client transcripts in fixtures/transcripts/*.hex (written by
// fixtures/record-transcript.ts): `> hex` client to server, `< hex` server to client,
// `> end` / `< end` that side closing, `#` comment lines naming the message that follows.

export type Direction = '>' | '<';

export interface TranscriptStep {
  readonly dir: Direction;
  /** 'bytes' carries `bytes`; 'end' is that side closing the connection. */
  readonly kind: 'bytes' | 'end';
  readonly bytes: Buffer;
  /** The comment line above the step (the message's name), or '' if none. */
  readonly label: string;
  /** 1-based line number of the step's first line, for failure messages. */
  readonly line: number;
}

interface Draft {
  dir: Direction;
  kind: 'bytes' | 'end';
  hex: string;
  label: string;
  line: number;
}

const LINE = /^([<>]) (end|[0-9a-f ]+)$/;

/**
 * Steps in file order. Consecutive data lines in one direction with no comment between them
 * form one step (one message); a comment line names the next step and starts a new one.
 */
export function parseTranscript(text: string): TranscriptStep[] {
  const drafts: Draft[] = [];
  let label: string | null = null;
  text.split('\n').forEach((raw, index) => {
    const line = raw.trimEnd();
    if (line === '') return;
    if (line.startsWith('#')) {
      label = line.replace(/^#\s?/, '');
      return;
    }
    const match = LINE.exec(line);
    const dir = match?.[1] as Direction | undefined;
    const body = match?.[2];
    if (dir === undefined || body === undefined)
      throw new Error(`transcript line ${index + 1}: cannot parse ${JSON.stringify(line)}`);
    const last = drafts[drafts.length - 1];
    if (body === 'end') {
      drafts.push({ dir, kind: 'end', hex: '', label: label ?? '', line: index + 1 });
    } else if (label === null && last !== undefined && last.dir === dir && last.kind === 'bytes') {
      last.hex += body.replace(/ /g, '');
    } else {
      drafts.push({ dir, kind: 'bytes', hex: body.replace(/ /g, ''), label: label ?? '', line: index + 1 });
    }
    label = null;
  });
  return drafts.map((d) => {
    if (d.hex.length % 2 !== 0) throw new Error(`transcript line ${d.line}: odd number of hex digits`);
    return { dir: d.dir, kind: d.kind, bytes: Buffer.from(d.hex, 'hex'), label: d.label, line: d.line };
  });
}
