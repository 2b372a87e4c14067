// The layers of the README's "Layers" picture, checked by ESLint (eslint.config.mjs): a module
// under src/ may import only from its own layer and from the layers listed for it. A relative
// import is resolved against the importing file, so `../broker/protocol.js` from
// src/instance/ is seen as what it is: the instance layer reaching into the broker.
//
// Node built-ins and npm packages are not layers; native/ is reached only through
// src/kernel/native.ts (the rule below says so for every other layer).
import path from 'node:path';

/** Layer -> the layers it may import (its own is always allowed). */
export const LAYERS = {
  // files directly in src/ (package-root.ts): leaves every layer may use
  '.': [],
  kernel: ['.'],
  protocol: ['.', 'kernel'],
  instance: ['.', 'kernel', 'protocol'],
  compat: ['.', 'kernel', 'instance'],
  mount: ['.', 'kernel', 'protocol', 'instance', 'compat', 'mounting'],
  mounting: ['.', 'kernel', 'protocol', 'instance'],
  broker: ['.', 'kernel', 'protocol', 'instance', 'mounting'],
  intercept: ['.', 'kernel', 'protocol', 'instance', 'mounting'],
  // the OCI broker serves each container's instance with the broker's server
  oci: ['.', 'kernel', 'protocol', 'instance', 'mounting', 'intercept', 'broker'],
  install: ['.', 'kernel', 'instance', 'oci'],
  completion: ['.', 'compat'],
  cli: ['.', 'kernel', 'instance', 'compat'],
  doctor: ['.', 'kernel', 'protocol', 'instance', 'broker', 'oci', 'install', 'cli'],
  commands: ['.', 'kernel', 'protocol', 'instance', 'compat', 'mount', 'mounting', 'broker', 'intercept', 'oci', 'install', 'completion', 'cli', 'doctor'],
};

/** The layer of a path relative to src/: its first directory, '.' for a file in src/ itself. */
export function layerOf(relToSrc) {
  const parts = relToSrc.split('/');
  return parts.length === 1 ? '.' : parts[0];
}

/**
 * The complaint about `specifier` imported by `file` (absolute), or null when allowed.
 * `srcDir`: the absolute src/ directory.
 */
export function checkImport(file, specifier, srcDir) {
  const from = path.relative(srcDir, file);
  if (from.startsWith('..') || path.isAbsolute(from)) return null; // not a module under src/
  const fromLayer = layerOf(from);
  if (!specifier.startsWith('.')) return null; // a built-in or a package
  const target = path.relative(srcDir, path.resolve(path.dirname(file), specifier));
  if (target.startsWith('..')) {
    // outside src/: only the kernel layer reaches native/ (through native.ts)
    const top = path.relative(path.dirname(srcDir), path.resolve(path.dirname(file), specifier)).split('/')[0];
    if (top === 'native' && fromLayer !== 'kernel') return `only src/kernel/ reaches native/ (through src/kernel/native.ts), not ${fromLayer}`;
    return null;
  }
  const toLayer = layerOf(target);
  if (toLayer === fromLayer) return null;
  const allowed = LAYERS[fromLayer];
  if (allowed === undefined) return `src/${from} is in a layer that lint/layers.mjs does not know (${fromLayer}): add it to LAYERS`;
  if (LAYERS[toLayer] === undefined) return `src/${target} is in a layer that lint/layers.mjs does not know (${toLayer}): add it to LAYERS`;
  if (allowed.includes(toLayer)) return null;
  const may = allowed.filter((l) => l !== '.');
  return `the ${fromLayer} layer may not import the ${toLayer} layer (src/${target}); ${fromLayer} may import ${may.length ? may.join(', ') : 'no other layer'}`;
}

/** The ESLint rule: every static import, re-export and dynamic import() with a literal specifier. */
const rule = {
  meta: {
    type: 'problem',
    docs: { description: "imports follow the README's layers (lint/layers.mjs)" },
    schema: [],
  },
  create(context) {
    const srcDir = path.resolve(context.cwd, 'src');
    const file = context.filename;
    const check = (node, source) => {
      if (!source || typeof source.value !== 'string') return;
      const problem = checkImport(file, source.value, srcDir);
      if (problem) context.report({ node: source, message: problem });
    };
    return {
      ImportDeclaration: (node) => check(node, node.source),
      ExportNamedDeclaration: (node) => check(node, node.source),
      ExportAllDeclaration: (node) => check(node, node.source),
      ImportExpression: (node) => check(node, node.source.type === 'Literal' ? node.source : null),
    };
  },
};

export default { meta: { name: 'loopfs-layers' }, rules: { imports: rule } };
