// Typed errors. Native errors arrive as Error with a `code` naming the class (see
// native/core/error.h); toTypedError turns them into these, keeping the message and stack.

export class DualrouteError extends Error {
  constructor(message: string) {
    // a message that is not a string (or cannot be made one) is described, never a TypeError
    super(typeof message === 'string' ? message : describe(message));
    this.name = new.target.name;
  }
}
/** Shapes that do not fit together. */
export class ShapeError extends DualrouteError {}
/** An unsupported or mismatched dtype. */
export class DTypeError extends DualrouteError {}
/** A device that is missing, mismatched, or failed (CUDA errors name the kernel). */
export class DeviceError extends DualrouteError {}
/**
 * An index or value out of range (token ids, axes, indices, values an int32 cannot hold). Not
 * named RangeError, so that it does not shadow the built-in one: both can be caught apart.
 */
export class OutOfRangeError extends DualrouteError {}
/** A malformed file or buffer. */
export class FormatError extends DualrouteError {}
/** An invalid argument value. */
export class ValueError extends DualrouteError {}
/** A tensor used after dispose(). */
export class DisposedError extends DualrouteError {}
/** An allocation failed. */
export class MemoryError extends DualrouteError {}
/** A bug in dualroute: please report it. */
export class InternalError extends DualrouteError {}

const byCode: Record<string, new (m: string) => DualrouteError> = {
  ShapeError,
  DTypeError,
  DeviceError,
  OutOfRangeError,
  FormatError,
  ValueError,
  DisposedError,
  MemoryError,
  InternalError,
};

/** Maps an error thrown by the addon to its typed class; other errors pass through. */
export function toTypedError(e: unknown): unknown {
  // not `instanceof Error`: errors from the addon belong to the main realm, not a vm context's
  if (typeof e === "object" && e !== null && typeof (e as { code?: unknown }).code === "string" && "message" in e) {
    const cls = byCode[(e as unknown as { code: string }).code];
    if (cls && !(e instanceof DualrouteError)) {
      const t = new cls(String((e as { message: unknown }).message));
      return t;
    }
  }
  return e;
}

/** Describes a value for error messages: "a number (3)", "an array of length 2", ... */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (Array.isArray(v)) return `an array of length ${v.length}`;
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name} of length ${(v as unknown as { length: number }).length}`;
  if (typeof v === 'object') {
    const name = Object.getPrototypeOf(v) === null ? 'null prototype' : (v as object).constructor?.name;
    if (name === 'Tensor') {
      const t = v as { shape: number[]; dtype: string; device: string };
      return `a ${t.dtype} tensor of shape [${t.shape.join(', ')}] on ${t.device}`;
    }
    return `an object (${name ?? 'Object'})`;
  }
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 80 ? v.slice(0, 80) + '...' : v)}`;
  if (typeof v === 'symbol') return 'a symbol';
  if (typeof v === 'function') return 'a function';
  return `${typeof v} ${String(v)}`;
}
