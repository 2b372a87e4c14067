import { Args, Flags } from '@oclif/core';
import { LoopfsCommand } from '../../cli/base-command.js';
import { LocalInstance } from '../../instance/local-instance.js';
import { describeInstance, type InstanceInfo } from '../../instance/describe.js';

export default class InstanceCreate extends LoopfsCommand {
  static summary = 'Make a directory a private loop-device instance.';
  static description =
    'Creates DIR if needed and records a new instance in it: a random id, the owner of its device nodes, limits. ' +
    'Devices allocated with `losetup --instance DIR -f` then appear as DIR/loopN.';
  static examples = [
    '<%= config.bin %> instance create /run/ci/job42 --max 8',
    '<%= config.bin %> instance create /srv/ct1/loopfs --owner 100000:100000 --pool 2',
  ];
  static args = { dir: Args.string({ required: true, description: 'directory to turn into an instance' }) };
  static flags = {
    max: Flags.integer({ min: 0, description: 'maximum number of loop devices in this instance' }),
    owner: Flags.string({ description: 'UID:GID owning the device nodes (default: the caller)' }),
    mode: Flags.string({ default: '0660', description: 'octal mode of the device nodes' }),
    pool: Flags.integer({ min: 0, default: 0, description: 'idle devices kept after a detach' }),
  };

  async run(): Promise<InstanceInfo> {
    const { args, flags } = await this.parse(InstanceCreate);
    const owner = parseOwner(flags.owner) ?? this.fail(`invalid --owner '${flags.owner}': expected UID:GID`);
    if (!/^0?[0-7]{3,4}$/.test(flags.mode)) this.fail(`invalid --mode '${flags.mode}': expected an octal mode`);
    if (LocalInstance.isInstance(args.dir)) this.fail(`${args.dir}: already an instance`);
    const inst = LocalInstance.create(args.dir, {
      owner,
      mode: parseInt(flags.mode, 8),
      max: flags.max ?? null,
      pool: flags.pool,
    });
    try {
      const info = describeInstance(inst);
      this.log(`created instance ${info.id} in ${info.dir} (owner ${owner.uid}:${owner.gid}, max ${info.max ?? 'unlimited'})`);
      return info;
    } finally {
      inst.close();
    }
  }
}

function parseOwner(v: string | undefined): { uid: number; gid: number } | null {
  if (v === undefined) return { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  const m = /^(\d+):(\d+)$/.exec(v);
  return m ? { uid: Number(m[1]), gid: Number(m[2]) } : null;
}
