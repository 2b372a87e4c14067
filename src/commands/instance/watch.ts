import { Args, Flags } from '@oclif/core';
import { LoopfsCommand } from '../../cli/base-command.js';
import { LiveSync, SyncTarget, type SyncOutcome } from '../../instance/live-sync.js';
import { LocalInstance } from '../../instance/local-instance.js';

export default class InstanceWatch extends LoopfsCommand {
  static summary = 'Keep instances in line with the kernel as devices and partitions come and go.';
  static description =
    'What devtmpfs and udev do for /dev, for instance directories: on every kernel uevent about a device an ' +
    'instance holds, the instance is reconciled from sysfs exactly as `loopfs instance gc` does it. Partitions ' +
    'added later (`partx -a`, BLKPG, a partition scan) appear as DIR/loopNpM with the owner and mode of the ' +
    "instance's nodes and vanish with them; a device freed by autoclear (umount of a `mount -o loop`) goes back " +
    "to the instance's pool policy at once. Runs until SIGINT/SIGTERM and does not wake up without events. " +
    '`loopfs activate --watch`, `loopfs serve` and `loopfs oci-broker` do the same for the instances they own.';
  static examples = ['<%= config.bin %> instance watch /run/loopfs/job1 /run/loopfs/job2'];

  static args = {
    dirs: Args.string({ required: true, description: 'instance directories' }),
  };
  static strict = false;
  static flags = {
    quiet: Flags.boolean({ char: 'q', description: 'print only errors' }),
  };

  async run(): Promise<void> {
    const { argv, flags } = await this.parse(InstanceWatch);
    const dirs = argv as string[];
    for (const d of dirs) if (!LocalInstance.isInstance(d)) this.fail(`${d}: not a loop device instance`);
    const instances = dirs.map((d) => LocalInstance.open(d));
    const targets = instances.map((i) => new SyncTarget(i, [], { refill: false }));
    const report = (o: SyncOutcome) => {
      if (!flags.quiet) for (const f of o.fixes) this.log(`${o.dir}: ${f}`);
    };
    const live = LiveSync.start({
      targets: () => targets,
      onChange: report,
      onError: (dir, e) => process.stderr.write(`loopfs: ${dir}: ${this.describeError(e)}\n`),
      keepAlive: true,
    });
    try {
      await live.ready;
      if (!flags.quiet) this.log(`watching ${dirs.length} instance(s)`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
    } finally {
      live.close();
      for (const i of instances) i.close();
    }
  }
}
