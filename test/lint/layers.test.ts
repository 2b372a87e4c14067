// The layer rule (lint/layers.mjs) run by the real ESLint with the project's own config, on
// code placed at real paths under src/: an import across a layer boundary fails the lint with
// the reason, an allowed one passes. `npm run lint` checks the tree itself.
import path from 'node:path';
import { ESLint } from 'eslint';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/env.js';

const eslint = new ESLint({ cwd: REPO_ROOT });

/** The layer rule's messages for `code` as if it were the file at `rel` (relative to the repo). */
async function layerErrors(rel: string, code: string): Promise<string[]> {
  const [r] = await eslint.lintText(code, { filePath: path.join(REPO_ROOT, rel) });
  return r.messages.filter((m) => m.ruleId === 'layers/imports').map((m) => m.message);
}

describe('lint: the layers of the README', () => {
  it('the kernel layer importing the instance layer fails, with the reason', async () => {
    expect(await layerErrors('src/kernel/probe.ts', "import { LocalInstance } from '../instance/local-instance.js';\nexport const x = LocalInstance;\n")).toEqual([
      'the kernel layer may not import the instance layer (src/instance/local-instance.js); kernel may import no other layer',
    ]);
  });

  it('the instance layer importing the broker fails; the protocol below both is allowed', async () => {
    expect(await layerErrors('src/instance/probe.ts', "export { BrokerServer } from '../broker/server.js';\n")).toEqual([
      'the instance layer may not import the broker layer (src/broker/server.js); instance may import kernel, protocol',
    ]);
    expect(await layerErrors('src/instance/probe.ts', "export { BROKER_SOCKET } from '../protocol/broker.js';\n")).toEqual([]);
  });

  it('a dynamic import() across a boundary fails as a static one does', async () => {
    expect(await layerErrors('src/compat/losetup/probe.ts', "export const m = () => import('../../broker/ops.js');\n")).toEqual([
      'the compat layer may not import the broker layer (src/broker/ops.js); compat may import kernel, instance',
    ]);
  });

  it('only the kernel layer reaches native/ directly', async () => {
    expect(await layerErrors('src/instance/probe.ts', "import addon from '../../native/build/Release/loopfs.node';\nexport default addon;\n")).toEqual([
      'only src/kernel/ reaches native/ (through src/kernel/native.ts), not instance',
    ]);
    expect(await layerErrors('src/kernel/probe.ts', "import addon from '../../native/build/Release/loopfs.node';\nexport default addon;\n")).toEqual([]);
  });

  it('a directory that is no known layer is named', async () => {
    expect(await layerErrors('src/newthing/probe.ts', "export { LoopDevice } from '../kernel/loop-device.js';\n")).toEqual([
      'src/newthing/probe.ts is in a layer that lint/layers.mjs does not know (newthing): add it to LAYERS',
    ]);
  });

  it('execa stays off the hot paths: refused in the compat layer, allowed in install', async () => {
    const code = "import { execaSync } from 'execa';\nexport const run = execaSync;\n";
    const [hot] = await eslint.lintText(code, { filePath: path.join(REPO_ROOT, 'src/compat/losetup/probe.ts') });
    expect(hot.messages.map((m) => `${m.ruleId}: ${m.message}`)).toEqual([
      "no-restricted-imports: 'execa' import is restricted from being used. execa is kept off the hot paths (its start-up cost): use it in src/doctor, src/install or src/commands",
    ]);
    const [cold] = await eslint.lintText(code, { filePath: path.join(REPO_ROOT, 'src/install/probe.ts') });
    expect(cold.messages).toEqual([]);
  });

  it('a catch that swallows every error must say why: flagged bare, accepted with a comment or a throw of its own', async () => {
    const messages = async (body: string) => {
      const [r] = await eslint.lintText(`export function f(): number {\n  try {\n    return 1;\n  } catch {\n${body}\n  }\n}\n`, {
        filePath: path.join(REPO_ROOT, 'src/kernel/probe.ts'),
      });
      return r.messages.map((m) => `${m.ruleId} ${m.severity}`);
    };
    expect(await messages('    return 0;')).toEqual(['catches/says-why 2']);
    expect(await messages('    // ENOENT: no such node, nothing to count\n    return 0;')).toEqual([]);
    expect(await messages("    throw new Error('not a number');")).toEqual([]);
  });

  it('commands may import every layer, packages and built-ins are not layers', async () => {
    expect(
      await layerErrors('src/commands/probe.ts', "import fs from 'node:fs';\nimport { Command } from '@oclif/core';\nimport { BrokerServer } from '../broker/server.js';\nexport default [fs, Command, BrokerServer];\n"),
    ).toEqual([]);
  });
});
