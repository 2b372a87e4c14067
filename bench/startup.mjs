#!/usr/bin/env node
// Start-up cost of the commands scripts call in loops. Prints medians over N runs
// (interleaved, so machine noise hits every command alike) and each command's ratio
// to `node -e 0`, the floor for any node program. Not a test: nothing here asserts.
//
//   node bench/startup.mjs [runs]      (default 40)
//
// BENCH_BEFORE=DIR also runs the same entry points of another checkout (built), in the same
// interleaved loop: a before/after under the same machine load.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { readdirSync } from 'node:fs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const runs = Number(process.argv[2] ?? 40);

/** The hot entry points of the checkout at `dir`, names suffixed with `tag`. */
const entryPoints = (dir, tag) => [
  { name: `bin/losetup -V${tag}`, argv: [join(dir, 'bin/losetup'), '-V'] },
  { name: `bin/losetup -a${tag}`, argv: [join(dir, 'bin/losetup'), '-a'] },
  { name: `bin/losetup -l${tag}`, argv: [join(dir, 'bin/losetup'), '-l'] },
  { name: `bin/losetup -f${tag}`, argv: [join(dir, 'bin/losetup'), '-f'] },
  { name: `bin/mount.loop --version${tag}`, argv: [join(dir, 'bin/mount.loop'), '--version'] },
];
const before = process.env.BENCH_BEFORE;
const commands = [
  { name: 'node -e 0', argv: [process.execPath, '-e', '0'] },
  { name: 'util-linux losetup -a', argv: ['/usr/sbin/losetup', '-a'] },
  ...entryPoints(root, ''),
  ...(before ? entryPoints(before, ' (before)') : []),
  { name: 'bin/loopfs losetup -a', argv: [join(root, 'bin/loopfs'), 'losetup', '-a'] },
  { name: 'bin/loopfs --help (oclif)', argv: [join(root, 'bin/loopfs'), '--help'] },
];

const samples = new Map(commands.map((c) => [c.name, []]));
for (let i = 0; i < runs; i++) {
  for (const c of commands) {
    const t0 = process.hrtime.bigint();
    const r = spawnSync(c.argv[0], c.argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (r.status !== 0) {
      console.error(`${c.name}: exit ${r.status}: ${r.stderr}`);
      process.exit(1);
    }
    samples.get(c.name).push(ms);
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const base = median(samples.get('node -e 0'));
const rows = commands.map((c) => {
  const m = median(samples.get(c.name));
  return [c.name, m.toFixed(1), (m / base).toFixed(2)];
});
const header = ['command', 'median ms', 'x node -e 0'];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (r) => r.map((v, i) => (i === 0 ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join('  ');
const loops = readdirSync('/sys/block').filter((n) => n.startsWith('loop')).length;
console.log(`startup, ${runs} runs each, node ${process.version}, ${loops} loop devices on the host${before ? `, before: ${before}` : ''}`);
console.log(line(header));
for (const r of rows) console.log(line(r));
