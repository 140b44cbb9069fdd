// Backward rules of the recurrent ops (lib/ops/rnn.ts).
import { op } from '../../native';
import { Tensor } from '../../tensor';
import { cast, contiguous } from '../../ops/shape';
import { empty, viewOf } from '../../ops/util';
import { registerGradient } from '../registry';

// lstm: the gradient of the flat output buffer [B S H | B H | B H] holds dh (every step), dhN
// and dcN; one backward through time gives d(xw), dW_hh, dh0, dc0 (inputs xw, W_hh, h0, c0).
// saved: the buffer (its h part), the gates and c of every step, W_hh, h0, c0.
registerGradient<{ B: number; S: number; H: number }>('lstm', ({ grad, saved: [buf, saved, whh, h0, c0], attrs }) => {
  const { B, S, H } = attrs;
  const nh = B * S * H, ns = B * H;
  const cg = grad.dtype === buf.dtype ? grad : cast(grad, buf.dtype);
  const g = cg.isContiguous ? cg : contiguous(cg);
  const dxw = empty([B, S, 4 * H], buf.dtype, buf.device);
  const dwhh = empty([4 * H, H], buf.dtype, buf.device);
  const dh0 = empty([B, H], buf.dtype, buf.device);
  const dc0 = empty([B, H], buf.dtype, buf.device);
  const views: Tensor[] = [
    viewOf(g, [B, S, H], [S * H, H, 1], g.offset),
    viewOf(g, [B, H], [H, 1], g.offset + nh),
    viewOf(g, [B, H], [H, 1], g.offset + nh + ns),
    viewOf(buf, [B, S, H], [S * H, H, 1], buf.offset),
  ];
  try {
    op.lstmBackward({ dxw, dwhh, dh0, dc0, dh: views[0], dhN: views[1], dcN: views[2], h: views[3], saved, whh, h0, c0 });
  } catch (e) {
    for (const t of [dxw, dwhh, dh0, dc0]) t.dispose();
    throw e;
  } finally {
    for (const v of views) v.dispose();
    if (g !== cg) g.dispose();
    if (cg !== grad) cg.dispose();
  }
  return [dxw, dwhh, dh0, dc0];
});
