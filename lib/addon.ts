// Loads the native addon. lib/native.ts describes its runtime entries; lib/generated/native_ops.ts
// (from the op table) wraps its op entries.
import bindings from 'bindings';

// DUALROUTE_ADDON_DIR points at another build folder (a second build tree, a packed copy).
export const addon: unknown = process.env.DUALROUTE_ADDON_DIR
  ? require(require('path').resolve(process.env.DUALROUTE_ADDON_DIR, 'dualroute.node'))
  : bindings('dualroute');
