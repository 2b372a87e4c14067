import { Args, Flags } from '@oclif/core';
import { LoopfsCommand } from '../cli/base-command.js';
import { BrokerServer, registeredInstanceDirs, ServeError, type ServedInstance } from '../broker/server.js';
import { DEFAULT_ALLOWED_FS } from '../broker/ops.js';

export default class Serve extends LoopfsCommand {
  static summary = 'Serve instances to unprivileged clients (the loopfs broker).';
  static description =
    'Runs as root until SIGTERM or SIGINT. For every instance DIR it listens on DIR/loop-control, a SOCK_SEQPACKET ' +
    'socket owned by the instance owner (mode 0600), through which losetup and mount.loop of that user (also as ' +
    'root of a user namespace) get devices of the instance, attach them to files they opened themselves, and receive ' +
    'nosuid,nodev mounts of allowed filesystems, ID-mapped to their user namespace. Devices a client marks ' +
    'session-scoped are detached and released when its connection ends. With --fuse every mount is served by a ' +
    'userspace FUSE driver (fuse2fs for ext2/3/4, squashfuse for squashfs) running as the instance owner, so the ' +
    'kernel never parses a client\'s filesystem; without it clients may ask for that per mount (mount.loop -o fuse), ' +
    'and --no-fuse refuses it. Like `loopfs instance watch`, it keeps every served instance in line with the kernel\'s ' +
    'uevents: partitions (`partx -a`, BLKPG, a partition scan) appear as DIR/loopNpM with the owner and mode of the ' +
    "instance's nodes and vanish with them, and a device freed by autoclear (umount of a brokered mount) goes back to " +
    'the pool policy at once. Prints "ready" once every socket listens and the first sync has run.';
  static examples = [
    '<%= config.bin %> serve /run/loopfs/ct1 /run/loopfs/ct2',
    '<%= config.bin %> serve --all --allow-fs ext4,erofs',
    '<%= config.bin %> serve --fuse /run/loopfs/ct1',
  ];
  static strict = false;
  static enableJsonFlag = false;
  static args = { dir: Args.string({ required: false, description: 'instance directories to serve' }) };
  static flags = {
    all: Flags.boolean({ description: 'serve every registered instance (loopfs instance ls)' }),
    'allow-fs': Flags.string({
      description: `comma-separated filesystem types the broker mounts (default: ${DEFAULT_ALLOWED_FS.join(',')}; "" for none)`,
    }),
    fuse: Flags.boolean({
      allowNo: true,
      description: 'mount every filesystem through a FUSE driver (--no-fuse: never; default: when the client asks)',
    }),
    'max-connections': Flags.integer({ min: 1, default: 256, description: 'connections per instance' }),
    verbose: Flags.boolean({ char: 'v', description: 'log every request' }),
  };

  async run(): Promise<ServedInstance[]> {
    const { argv, flags } = await this.parse(Serve);
    const dirs = (argv as string[]).slice();
    if (dirs.length === 0 && !flags.all) this.fail('serve: no instance given (name instance directories, or --all)');
    if (process.geteuid?.() !== 0) this.fail('serve: must run as root');
    const allowFs = flags['allow-fs'] === undefined ? DEFAULT_ALLOWED_FS : parseFsList(flags['allow-fs']);
    if (allowFs === null) this.fail(`serve: invalid --allow-fs '${flags['allow-fs']}': expected filesystem type names separated by commas`);

    let server: BrokerServer;
    try {
      const fuseMode = flags.fuse === undefined ? 'allow' : flags.fuse ? 'always' : 'never';
      server = BrokerServer.start({ dirs, allowFs, fuseMode, maxConnections: flags['max-connections'], verbose: flags.verbose, live: true });
    } catch (e) {
      if (e instanceof ServeError) this.fail(e.message);
      throw e;
    }
    if (flags.all) {
      // registered instances that cannot be served (gone, unsafe) are reported, not fatal
      const r = await server.sync([...dirs, ...registeredInstanceDirs()]);
      for (const f of r.failed) process.stderr.write(`loopfs serve: cannot serve ${f}\n`);
    }
    await server.recovered();
    await server.liveReady();
    if (server.fuseMode === 'always' && server.fuseDrivers.length === 0) {
      process.stderr.write('loopfs serve: --fuse: no FUSE driver (fuse2fs, squashfuse) is installed: every mount will fail\n');
    }
    for (const i of server.instances) this.log(`serving ${i.dir} (instance ${i.id}, owner ${i.owner.uid}:${i.owner.gid}) on ${i.socket}`);
    this.log('ready');

    // SIGHUP (systemctl reload): with --all, serve the instances registered now
    let syncing: Promise<void> = Promise.resolve();
    const onHup = () => {
      if (!flags.all) {
        process.stderr.write('loopfs serve: SIGHUP: nothing to reload without --all\n');
        return;
      }
      syncing = syncing.then(async () => {
        const r = await server.sync([...(argv as string[]), ...registeredInstanceDirs()]);
        for (const d of r.added) process.stderr.write(`loopfs serve: now serving ${d}\n`);
        for (const d of r.removed) process.stderr.write(`loopfs serve: no longer serving ${d}\n`);
        for (const f of r.failed) process.stderr.write(`loopfs serve: cannot serve ${f}\n`);
      });
    };
    process.on('SIGHUP', onHup);
    await new Promise<void>((resolve) => {
      const stop = (sig: string) => {
        process.stderr.write(`loopfs serve: ${sig}: stopping\n`);
        process.off('SIGINT', onInt);
        process.off('SIGTERM', onTerm);
        resolve();
      };
      const onInt = () => stop('SIGINT');
      const onTerm = () => stop('SIGTERM');
      process.on('SIGINT', onInt);
      process.on('SIGTERM', onTerm);
    });
    process.off('SIGHUP', onHup);
    await syncing;
    await server.stop();
    return server.instances;
  }
}

export function parseFsList(v: string): string[] | null {
  if (v.trim() === '') return [];
  const list = v.split(',').map((s) => s.trim());
  return list.every((s) => /^[a-z0-9][a-z0-9_.-]{0,31}$/.test(s)) ? [...new Set(list)] : null;
}
