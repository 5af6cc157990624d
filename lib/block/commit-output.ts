// Where `overlay commit` writes: NEW.tmp, created exclusively next to NEW and given the final
// name by rename(2) only once it is complete and verified, so an interrupted commit never
// leaves a half image under the name NEW. The rules, checked before a byte is written:
//
//   - NEW (or NEW.tmp) that is the base or the overlay (same device and inode, through any
//     link) is refused, --force or not: a commit never replaces its own inputs;
//   - NEW that exists is refused unless --force (then the rename replaces it whole);
//   - NEW.tmp that exists (an interrupted commit, or one running now) is refused unless --force
//     (then it is removed first).

import fs from 'node:fs';
import { dirname } from 'node:path';
import { codedError } from './coded-error.js';
import { removeFile, syncDirectory } from './control-file.js';
import { DataFile } from './data-file.js';
import { DirectIoFile } from './direct-io-file.js';
import { O_CREAT_EXCL_RDWR } from './syscalls.js';

/** Mode of the new image before the umask, as open(2) by cp or qemu-img gives it. */
const NEW_IMAGE_MODE = 0o666;

/** stat(2) of `path`, or undefined when nothing is there. */
function statPath(path: string): Promise<fs.Stats | undefined> {
  return new Promise((resolve, reject) => {
    fs.stat(path, (err, stats) => {
      if (err === null) resolve(stats);
      else if (err.code === 'ENOENT') resolve(undefined);
      else reject(err);
    });
  });
}

function renameFile(from: string, to: string): Promise<void> {
  return new Promise((resolve, reject) => fs.rename(from, to, (err) => (err ? reject(err) : resolve())));
}

export interface CommitOutputOptions {
  /** Replace an existing NEW and remove a leftover NEW.tmp. */
  readonly force: boolean;
  /** Files the output must never be: the base and the overlay, named for the message. */
  readonly inputs: ReadonlyArray<{ readonly path: string; readonly what: string }>;
}

export class CommitOutput {
  /** The final name. */
  readonly path: string;
  /** The name written to until publish(). */
  readonly tmpPath: string;
  readonly file: DataFile;
  /** The same file for the copy: direct I/O where the file system has it (direct-io-file.ts). */
  readonly target: DirectIoFile;
  /** Whether publish() replaces a file that was at `path` (--force). */
  readonly replaces: boolean;
  #open = true;

  private constructor(path: string, tmpPath: string, file: DataFile, target: DirectIoFile, replaces: boolean) {
    this.path = path;
    this.tmpPath = tmpPath;
    this.file = file;
    this.target = target;
    this.replaces = replaces;
  }

  /** Check the rules above, then create NEW.tmp (empty, O_EXCL). */
  static async create(path: string, options: CommitOutputOptions): Promise<CommitOutput> {
    const tmpPath = `${path}.tmp`;
    const inputs = await Promise.all(options.inputs.map(async (input) => ({ ...input, stats: await statPath(input.path) })));
    let replaces = false;
    for (const candidate of [path, tmpPath]) {
      const stats = await statPath(candidate);
      if (stats === undefined) continue;
      if (candidate === path) replaces = true;
      const same = inputs.find((i) => i.stats !== undefined && i.stats.dev === stats.dev && i.stats.ino === stats.ino);
      if (same !== undefined)
        throw codedError('EINVAL', `${candidate} is the ${same.what} (${same.path}): a commit never writes over its inputs`);
      if (stats.isDirectory()) throw codedError('EISDIR', `${candidate} is a directory`);
      if (options.force) continue;
      throw candidate === path
        ? codedError('EEXIST', `${path} exists: not overwritten (--force replaces it)`)
        : codedError('EEXIST', `${tmpPath} exists (an interrupted commit, or one running now): remove it, or --force`);
    }
    if (options.force) await removeFile(tmpPath);
    const file = await DataFile.open(tmpPath, O_CREAT_EXCL_RDWR, NEW_IMAGE_MODE);
    try {
      return new CommitOutput(path, tmpPath, file, await DirectIoFile.open(file), replaces);
    } catch (err) {
      await file.close();
      await removeFile(tmpPath);
      throw err;
    }
  }

  /**
   * Give NEW.tmp the name NEW, then (`durable`, the default) fsync the directory so the name is
   * durable. A durable caller has made the data durable first (file.sync()), so the name never
   * points at a file whose data a power loss could still take.
   */
  async publish({ durable = true }: { durable?: boolean } = {}): Promise<void> {
    await this.#close();
    await renameFile(this.tmpPath, this.path);
    if (durable) await syncDirectory(dirname(this.path));
  }

  /** Close and remove NEW.tmp (a failed or interrupted commit). Never throws. */
  async discard(): Promise<void> {
    await this.#close().catch(() => undefined);
    await removeFile(this.tmpPath).catch(() => undefined);
  }

  async #close(): Promise<void> {
    if (!this.#open) return;
    this.#open = false;
    await this.target.close();
    await this.file.close();
  }
}
