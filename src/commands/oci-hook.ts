import { Args } from '@oclif/core';
import { readFileSync } from 'node:fs';
import { LoopfsCommand } from '../cli/base-command.js';
import { runHook, STAGES, type HookOutcome, type Stage } from '../oci/hook.js';
import { hookErrorLine } from '../oci/hook-main.js';

export default class OciHook extends LoopfsCommand {
  static summary = 'OCI runtime hook: a private loop-device instance per container (installed with `loopfs install --oci-hooks DIR`).';
  static description =
    'Reads the OCI state on stdin. For containers annotated io.loopfs.instance=true, createRuntime makes a private ' +
    'instance (io.loopfs.pool devices, default 4, at most io.loopfs.max), binds it read-only at /dev/loopfs and links ' +
    'its devices to /dev/loopN; poststop detaches and removes them and the instance. Rootful: on cgroup v1 the hook ' +
    "grants exactly those devices; on cgroup v2 the container needs --device-cgroup-rule='b 7:* rw' and --cap-drop=MKNOD. " +
    'Rootless containers need `loopfs oci-broker` running as root.';
  static examples = ['<%= config.bin %> oci-hook createRuntime < state.json'];
  static args = {
    stage: Args.string({ required: true, options: [...STAGES], description: 'hook stage' }),
  };

  async run(): Promise<HookOutcome> {
    const { args } = await this.parse(OciHook);
    try {
      return runHook(args.stage as Stage, readFileSync(0, 'utf8'));
    } catch (e) {
      process.stderr.write(`${hookErrorLine(e)}\n`);
      this.exit(1);
    }
  }
}
