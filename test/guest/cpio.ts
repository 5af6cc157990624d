// A newc cpio writer (no cpio tool, no root: device nodes are only headers). build.ts writes the
// cached initramfs with it, and guest.ts a small second archive per boot (the kernel unpacks
// archives laid end to end), so files made at test time reach the guest without a rebuild.

import { dirname } from 'node:path';

export class Cpio {
  readonly #parts: Buffer[] = [];
  #ino = 1;
  readonly #dirs = new Set<string>();

  #entry(name: string, mode: number, data: Buffer, rdev: [number, number] = [0, 0]): void {
    const fields = [this.#ino++, mode, 0, 0, 1, 0, data.length, 0, 0, rdev[0], rdev[1], Buffer.byteLength(name) + 1, 0];
    const header = `070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}`;
    const head = Buffer.from(`${header + name}\0`, 'latin1');
    this.#parts.push(head, Buffer.alloc((4 - (head.length % 4)) % 4));
    this.#parts.push(data, Buffer.alloc((4 - (data.length % 4)) % 4));
  }

  dir(path: string): void {
    const parts = path.split('/').filter((p) => p !== '');
    for (let i = 1; i <= parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (this.#dirs.has(d)) continue;
      this.#dirs.add(d);
      this.#entry(d, 0o040755, Buffer.alloc(0));
    }
  }

  file(path: string, data: Buffer, perm = 0o644): void {
    const p = path.replace(/^\/+/, '');
    this.dir(dirname(p) === '.' ? '' : dirname(p));
    this.#entry(p, 0o100000 | perm, data);
  }

  symlink(path: string, target: string): void {
    const p = path.replace(/^\/+/, '');
    this.dir(dirname(p) === '.' ? '' : dirname(p));
    this.#entry(p, 0o120777, Buffer.from(target));
  }

  charDevice(path: string, major: number, minor: number, perm = 0o600): void {
    const p = path.replace(/^\/+/, '');
    this.dir(dirname(p));
    this.#entry(p, 0o020000 | perm, Buffer.alloc(0), [major, minor]);
  }

  /** The archive, ending in its trailer; its length is a multiple of 4, so another may follow. */
  finish(): Buffer {
    this.#entry('TRAILER!!!', 0, Buffer.alloc(0));
    return Buffer.concat(this.#parts);
  }
}
