import { Flags } from '@oclif/core';
import { LoopfsCommand } from '../cli/base-command.js';
import { OciError } from '../oci/bundle.js';
import { OciBroker } from '../oci/oci-broker.js';

export default class OciBrokerCommand extends LoopfsCommand {
  static summary = 'Give rootless containers private instances (the privileged half of `loopfs oci-hook`), and perform containers\' mount -o loop (the seccomp agent).';
  static description =
    'Runs as root until SIGTERM or SIGINT, listening on RUNTIME/oci.sock (/run/loopfs/oci.sock). A rootless runtime\'s ' +
    'createRuntime hook asks it for an instance for its container: the caller\'s uid (SO_PEERCRED) owns it, the ' +
    'container\'s init (a pidfd passed by the hook) must be that uid\'s, and the instance is served on ' +
    'DIR/loop-control by the broker in this process. It is destroyed at poststop or when the container\'s init exits. ' +
    'It is also the seccomp agent on RUNTIME/seccomp.sock (/run/loopfs/seccomp.sock): a runtime (runc, crun) whose ' +
    'container profile sends mount(2) there (loopfs-runtime, loopfs seccomp-profile) hands over the seccomp listener, ' +
    'and a `mount -o loop` of the container\'s instance devices is performed for it (nosuid,nodev, allowed ' +
    'filesystems only) while every other mount gets the engine\'s own verdict. Containers started before a restart of ' +
    'this daemon keep running, but their trapped mount(2) fails with ENOSYS from then on (their listener is gone); ' +
    'containers that opt in cannot start while it is not running. It also keeps every running container\'s /dev ' +
    'live (rootful ones whose instance the hook made, rootless ones it serves): on each kernel uevent about one of ' +
    'their devices the instance is reconciled as `loopfs instance gc` does it and its pool refilled, and devices ' +
    'and partitions the container gets later appear as /dev/loopK and /dev/loopKpM (and in /sys/block and, on ' +
    'cgroup v1, its device cgroup) and vanish when they leave; no timers, no work without events. ' +
    'Prints "ready" once listening.';
  static examples = ['<%= config.bin %> oci-broker', '<%= config.bin %> oci-broker --max-instances 4'];
  static enableJsonFlag = false;
  static flags = {
    'max-instances': Flags.integer({ min: 1, default: 16, description: 'container instances per uid' }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(OciBrokerCommand);
    if (process.geteuid?.() !== 0) this.fail('oci-broker: must run as root');
    let broker: OciBroker;
    try {
      broker = await OciBroker.start({ maxInstances: flags['max-instances'] });
    } catch (e) {
      if (e instanceof OciError) this.fail(`oci-broker: ${e.message}`);
      throw e;
    }
    this.log(`listening on ${broker.socketPath}`);
    this.log('ready');
    await new Promise<void>((resolve) => {
      const stop = (sig: string) => {
        process.stderr.write(`loopfs oci-broker: ${sig}: stopping\n`);
        resolve();
      };
      process.once('SIGINT', () => stop('SIGINT'));
      process.once('SIGTERM', () => stop('SIGTERM'));
    });
    await broker.stop();
  }
}
