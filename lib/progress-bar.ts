// A progress bar for long commands (`overlay commit`), drawn with cli-progress on a terminal
// only: when the stream is a pipe or a file (a script, a log, CI) or the command was given
// --quiet, nothing is written at all, so output meant for machines stays clean. Each phase
// ("copy", "verify") gets a bar of its own, left on screen at 100 % when the next one starts.

import { Presets, SingleBar } from 'cli-progress';
import { humanSize } from './block/overlay-report.js';

export interface ProgressBar {
  /** `done` of `total` bytes of `phase`; a new phase closes the bar before it and opens its own. */
  update(phase: string, done: number, total: number): void;
  /** Close the last bar (idempotent). */
  stop(): void;
}

const SILENT: ProgressBar = {
  update: () => undefined,
  stop: () => undefined,
};

export interface ProgressBarOptions {
  /** Where to draw: a terminal's stream (process.stderr); anything else gets no bar. */
  readonly stream: NodeJS.WritableStream & { readonly isTTY?: boolean };
  readonly quiet?: boolean;
}

/** A bar on `stream` if it is a terminal and not `quiet`, else one that prints nothing. */
export function progressBar(options: ProgressBarOptions): ProgressBar {
  if (options.quiet === true || options.stream.isTTY !== true) return SILENT;
  let bar: SingleBar | undefined;
  let current = '';
  const stop = (): void => {
    bar?.stop();
    bar = undefined;
  };
  return {
    update(phase, done, total) {
      const sizes = { done: humanSize(done), size: humanSize(total) };
      if (bar === undefined || phase !== current) {
        stop();
        current = phase;
        bar = new SingleBar(
          {
            stream: options.stream,
            format: `${phase.padEnd(6)} |{bar}| {percentage}% | {done} of {size} | ETA {eta_formatted}`,
            hideCursor: true,
            fps: 10,
          },
          Presets.shades_classic,
        );
        bar.start(total, done, sizes);
      } else bar.update(done, sizes);
    },
    stop,
  };
}
