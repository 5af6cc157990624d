// `nbd-cow overlay commit` against `qemu-img convert -O raw` making the same raw image: a random
// base, the same random 64 KiB writes (about a tenth of the image) put by qemu-io into a named
// nbd-cow overlay through the real server and into a qcow2 overlay over the same base, then each
// tool run COMMIT_RUNS times, in turns, from the same start (base warm in the page cache, fresh
// memory primed, earlier output synced and deleted). Three pairs, each with the same guarantees
// on both sides: qemu-img as users run it (no flush, no check) against `overlay commit
// --no-verify --no-flush`; `-t writeback` (flushed at the end) against `--no-verify`; and
// `qemu-img compare` after that (checked too) against our default commit. Prints the medians
// and the ratio of each pair; checks that every output is the same bytes. A benchmark, never a
// test: `make bench-commit` (bench/README.md).

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { makeBase, sha256, warmBase } from './lib/base-image.js';
import { die, envNumber, log } from './lib/log.js';

// This file runs as dist/bench/commit.js: the checkout is two levels up.
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const MiB = 1024 * 1024;
const WRITE = 64 * 1024;

const settings = {
  base_mb: Math.floor(envNumber('BASE_MB', 1024)),
  write_fraction: envNumber('COMMIT_WRITE_FRACTION', 0.1),
  // This VM's page cache makes one run in two or three about twice as slow, for every tool
  // (bench/README.md): five runs give a median that is not one of those.
  runs: Math.floor(envNumber('COMMIT_RUNS', 5)),
  block_size: process.env['COMMIT_BLOCK_SIZE'] ?? '4096',
  cli: process.env['COMMIT_CLI'] ?? join(ROOT, 'dist', 'bin', 'nbd-cow.js'),
  results: process.env['COMMIT_RESULTS'] || join(ROOT, 'bench', 'results', 'commit-latest.json'),
  keep_tmp: process.env['KEEP_TMP'] === '1',
  // Seconds between the start state and a tool's start: see timed().
  settle_s: envNumber('COMMIT_SETTLE_S', 3),
};

const WORK = mkdtempSync(join(os.tmpdir(), 'nbd-cow-commit-'));
const SIZE = settings.base_mb * MiB;
let server: ChildProcess | undefined;

function cleanup(): void {
  if (server?.exitCode === null) server.kill('SIGKILL');
  if (!settings.keep_tmp) rmSync(WORK, { recursive: true, force: true });
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    log(`${sig}: stopping`);
    cleanup();
    process.exit(130);
  });
}

/** Run a command to completion; exits the bench if it fails. */
function must(cmd: string, args: readonly string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * MiB });
  if (r.status !== 0) {
    cleanup();
    die(`${cmd} ${args.slice(0, 6).join(' ')}… failed (${r.status ?? r.signal}): ${(r.stderr ?? '').trim().slice(0, 500)}`, 3);
  }
  return r.stdout;
}

/** mulberry32, so every run writes the same places with the same patterns. */
function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** qemu-io -c arguments: distinct random 64 KiB-aligned writes covering `fraction` of the image. */
function writeCommands(fraction: number): string[] {
  const slots = SIZE / WRITE;
  const count = Math.round(slots * fraction);
  const order = Array.from({ length: slots }, (_, i) => i);
  const rand = seededRandom(12);
  for (let i = 0; i < count; i++) {
    const j = i + Math.floor(rand() * (slots - i));
    [order[i], order[j]] = [order[j] as number, order[i] as number];
  }
  return order
    .slice(0, count)
    .flatMap((slot, i) => ['-c', `write -q -P 0x${((i % 255) + 1).toString(16)} ${slot * WRITE} ${WRITE}`]);
}

/** Serve the base with named overlays, let qemu-io write into golden@bench, stop cleanly. */
async function makeNbdCowOverlay(base: string, commands: readonly string[]): Promise<string> {
  const dir = join(WORK, 'overlays');
  const args = ['serve', base, '-x', 'golden', '--overlay-dir', dir, '--overlays', 'named', '--block-size', settings.block_size];
  const child = spawn(process.execPath, [settings.cli, ...args, '-p', '0', '-q'], { stdio: ['ignore', 'pipe', 'inherit'] });
  server = child;
  const uri = await new Promise<string>((done, fail) => {
    createInterface({ input: child.stdout }).once('line', (line) => done(line.trim()));
    child.once('exit', (code) => fail(new Error(`nbd-cow serve exited (${code}) before printing its URI`)));
  });
  must('qemu-io', ['-f', 'raw', ...commands, `${uri}@bench`]);
  const exited = new Promise((done) => child.once('exit', done));
  child.kill('SIGTERM');
  await exited;
  server = undefined;
  return join(dir, 'named-golden@bench.cow');
}

/** What a tool's output is once it exits: flushed to disk, compared with the source. */
type Guarantee = 'not verified, not flushed' | 'flushed' | 'flushed, verified';

interface Tool {
  readonly name: string;
  readonly note: Guarantee;
  readonly output: string;
  readonly steps: ReadonlyArray<readonly [string, readonly string[]]>;
}

/**
 * Seconds a tool's steps take, from the same start every time: base warm, disk synced, then a
 * pause. No memory priming (make bench's): on this VM, memory freed a moment ago is fast to use
 * again and, about a second later, slow (the host has taken it back), so right after priming a
 * tool that starts writing at once gets fast memory and one that starts 0.2 s later does not.
 * Measured: qemu-img convert took 0.49-1.19 s started at once after priming, 1.11-1.31 s after
 * 0.3 s, 1.29-1.96 s after 3 s. After the pause every tool meets the same memory.
 */
function timed(tool: Tool): number {
  rmSync(tool.output, { force: true });
  spawnSync('sync');
  warmBase(join(WORK, 'base.raw'));
  spawnSync('sync');
  spawnSync('sleep', [String(settings.settle_s)]);
  const start = process.hrtime.bigint();
  for (const [cmd, args] of tool.steps) must(cmd, args);
  return Number(process.hrtime.bigint() - start) / 1e9;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

function diskBytes(path: string): number {
  return statSync(path).blocks * 512;
}

async function main(): Promise<void> {
  for (const tool of ['qemu-img', 'qemu-io', 'sha256sum']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0)
      die(`${tool} not found (make deps-bench installs qemu-utils)`);
  }
  const base = join(WORK, 'base.raw');
  log(`base: ${settings.base_mb} MiB of random bytes (${makeBase(base, SIZE)})`);
  const baseSum = sha256(base);
  const commands = writeCommands(settings.write_fraction);
  log(`writing ${commands.length / 2} random 64 KiB blocks into both overlays with qemu-io`);
  const cow = await makeNbdCowOverlay(base, commands);
  const qcow2 = join(WORK, 'overlay.qcow2');
  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', qcow2]);
  must('qemu-io', ['-f', 'qcow2', ...commands, qcow2]);

  // Each tool writes its own output; each run starts from the same state (see timed()).
  const out = (name: string): string => join(WORK, `out-${name}.raw`);
  const commit = (name: string, flags: readonly string[]): ReadonlyArray<readonly [string, readonly string[]]> => [
    [process.execPath, [settings.cli, 'overlay', 'commit', cow, '--base', base, '-o', out(name), '--quiet', '--force', ...flags]],
  ];
  const tools: readonly Tool[] = [
    {
      name: 'nbd-cow overlay commit',
      note: 'flushed, verified',
      output: out('nbd-cow'),
      steps: commit('nbd-cow', []),
    },
    {
      name: 'nbd-cow overlay commit --no-verify',
      note: 'flushed',
      output: out('nbd-cow-nv'),
      steps: commit('nbd-cow-nv', ['--no-verify']),
    },
    {
      name: 'nbd-cow overlay commit --no-verify --no-flush',
      note: 'not verified, not flushed',
      output: out('nbd-cow-fast'),
      steps: commit('nbd-cow-fast', ['--no-verify', '--no-flush']),
    },
    {
      name: 'qemu-img convert -O raw',
      note: 'not verified, not flushed',
      output: out('qemu'),
      steps: [['qemu-img', ['convert', '-O', 'raw', qcow2, out('qemu')]]],
    },
    {
      name: 'qemu-img convert -t writeback -O raw',
      note: 'flushed',
      output: out('qemu-wb'),
      steps: [['qemu-img', ['convert', '-t', 'writeback', '-O', 'raw', qcow2, out('qemu-wb')]]],
    },
    {
      name: '… then qemu-img compare',
      note: 'flushed, verified',
      output: out('qemu-cmp'),
      steps: [
        ['qemu-img', ['convert', '-t', 'writeback', '-O', 'raw', qcow2, out('qemu-cmp')]],
        ['qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'qcow2', out('qemu-cmp'), qcow2]],
      ],
    },
  ];
  const times = new Map<string, number[]>(tools.map((tool) => [tool.name, []]));
  for (let run = 1; run <= settings.runs; run++) {
    // Rotate who goes first, so a slow spell of the host does not always hit the same tool.
    for (let i = 0; i < tools.length; i++) {
      const tool = tools[(i + run - 1) % tools.length] as Tool;
      const seconds = timed(tool);
      times.get(tool.name)?.push(seconds);
      log(`run ${run}: ${tool.name} ${seconds.toFixed(3)} s`);
    }
  }
  const sums = new Map(tools.map((tool) => [tool.name, sha256(tool.output)]));
  const same = new Set(sums.values()).size === 1;
  if (!same) log('error: the outputs differ');
  if (sha256(base) !== baseSum) die('the base image changed', 2);
  const medians = Object.fromEntries(tools.map((tool) => [tool.name, median(times.get(tool.name) ?? [])]));
  const ours = medians['nbd-cow overlay commit'] as number;
  // Each guarantee's qemu-img median ÷ nbd-cow's: above 1, nbd-cow is faster.
  const pairs = (['not verified, not flushed', 'flushed', 'flushed, verified'] as const).map((note) => {
    const [cow, qemu] = [
      tools.find((t) => t.note === note && t.name.startsWith('nbd-cow')),
      tools.find((t) => t.note === note && !t.name.startsWith('nbd-cow')),
    ] as [Tool, Tool];
    return {
      guarantee: note,
      nbd_cow: cow.name,
      qemu_img: qemu.name,
      ratio: (medians[qemu.name] as number) / (medians[cow.name] as number),
    };
  });
  const result = {
    date: new Date().toISOString(),
    settings: { ...settings, results: undefined },
    host: { cpus: os.cpus().length, node: process.version, qemu: must('qemu-img', ['--version']).split('\n')[0] },
    writes: commands.length / 2,
    seconds: Object.fromEntries(times),
    median: medians,
    /** Each tool's median ÷ nbd-cow's: above 1, nbd-cow is faster. */
    ratio: Object.fromEntries(tools.map((tool) => [tool.name, (medians[tool.name] as number) / ours])),
    pairs,
    outputs_equal: same,
    disk_bytes: Object.fromEntries(tools.map((tool) => [tool.name, diskBytes(tool.output)])),
  };
  mkdirSync(dirname(settings.results), { recursive: true });
  writeFileSync(settings.results, `${JSON.stringify(result, null, 2)}\n`);
  const rows = tools.map((tool) => {
    const runs = (times.get(tool.name) ?? []).map((s) => s.toFixed(3)).join(' / ');
    const mib = ((result.disk_bytes[tool.name] as number) / MiB).toFixed(1);
    const ratio = (result.ratio[tool.name] as number).toFixed(2);
    return `| ${tool.name} (${tool.note}) | ${runs} | ${(medians[tool.name] as number).toFixed(3)} | ${ratio}× | ${mib} |`;
  });
  process.stdout.write(
    [
      `Commit of a ${settings.base_mb} MiB image, ${result.writes} random 64 KiB writes (${settings.runs} runs each):`,
      '',
      '| tool | seconds per run | median | ÷ nbd-cow (above 1: nbd-cow faster) | output on disk, MiB |',
      '|---|---|---|---|---|',
      ...rows,
      '',
      'Same guarantees on both sides, qemu-img ÷ nbd-cow (above 1: nbd-cow faster):',
      '',
      '| output | nbd-cow | qemu-img | ratio |',
      '|---|---|---|---|',
      ...pairs.map((p) => `| ${p.guarantee} | ${p.nbd_cow} | ${p.qemu_img} | ${p.ratio.toFixed(2)}× |`),
      '',
      `outputs ${same ? 'identical' : 'DIFFER'}`,
      '',
    ].join('\n'),
  );
  cleanup();
  if (!same) process.exit(2);
}

main().catch((err: unknown) => {
  cleanup();
  die(err instanceof Error ? err.message : String(err), 3);
});
