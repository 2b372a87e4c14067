import { Args, Flags } from '@oclif/core';
import { LoopfsCommand } from '../cli/base-command.js';
import { syncDevDir, watchDevDir, type SyncResult } from '../instance/activate.js';
import { LocalInstance } from '../instance/local-instance.js';

export default class Activate extends LoopfsCommand {
  static summary = "Prepare a container's /dev so that unmodified tools use only the instance.";
  static description =
    'Creates PATH/loopN for every device of the instance plus a pool of idle devices (no loop-control, so ' +
    'util-linux and busybox fall back to scanning PATH), and PATH/loopNpM for the partitions the instance ' +
    'publishes; removes every other loopN and loopNpM node from PATH. With --watch it keeps PATH in sync until ' +
    'SIGINT/SIGTERM, driven by the kernel\'s uevents: partitions added with partx or a partition scan appear, ' +
    'the pool refills when a stock tool binds a pool device, a device freed by autoclear goes back to the pool ' +
    'policy. Each event makes it reconcile the instance from sysfs as `loopfs instance gc` does.';
  static examples = [
    '<%= config.bin %> activate /run/loopfs/ct1 --dev /var/lib/ct1/rootfs/dev --pool 4',
    '<%= config.bin %> activate /run/loopfs/ct1 --dev /dev --pool 2 --watch   # inside unshare -m, tmpfs on /dev',
  ];
  static args = { dir: Args.string({ required: true, description: 'instance directory' }) };
  static flags = {
    dev: Flags.string({ required: true, description: "the container's /dev directory" }),
    pool: Flags.integer({ min: 0, description: 'idle devices to keep ready (default: the instance pool setting)' }),
    watch: Flags.boolean({ description: 'keep PATH in sync until interrupted' }),
    interval: Flags.integer({
      min: 10,
      description: 'with --watch, also resync every MS milliseconds (default: only when the kernel announces a change)',
    }),
  };

  async run(): Promise<SyncResult> {
    const { args, flags } = await this.parse(Activate);
    if (!LocalInstance.isInstance(args.dir)) this.fail(`${args.dir}: not a loop device instance`);
    const inst = LocalInstance.open(args.dir);
    try {
      const pool = flags.pool ?? inst.header().pool;
      const first = syncDevDir(inst, flags.dev, pool);
      this.log(`${flags.dev}: ${first.nodes.length} node(s) (${first.nodes.join(' ') || 'none'}), pool ${pool}`);
      if (flags.watch) {
        const ac = new AbortController();
        const stop = () => ac.abort();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
        await watchDevDir(
          inst,
          flags.dev,
          pool,
          flags.interval ?? null,
          ac.signal,
          (r) => this.log(`${flags.dev}: +${r.created.join(',') || '-'} -${r.removed.join(',') || '-'} reserved ${r.reserved.join(',') || '-'}`),
          (e) => process.stderr.write(`loopfs activate: ${flags.dev}: ${(e as Error).message}\n`),
        );
      }
      return first;
    } finally {
      inst.close();
    }
  }
}
