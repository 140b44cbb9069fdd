#!/usr/bin/env python3
# The coefficients of vtanh (native/cpu/simd.h): tanh(x) ~ x P(x^2) / Q(x^2) on [0, 9], P of
# degree 6 and Q of degree 3 in s = x^2, Q(0) = 1, fitted for relative error by linearised
# least squares (P - f Q over f Q_prev) with Lawson's reweighting towards the minimax; the
# reference in 30-digit mpmath. Prints the largest relative error of the fit (about 6.6e-9
# before rounding the coefficients to float32) and the float32 coefficients, constant first.
# Needs numpy and mpmath. The float32 evaluation itself (Horner with FMA, one division) adds
# the rest of the error: below 3.1e-7 relative (5.2 ulp next to 1), checked against float64
# tanh on every third float from 1e-20 to 12 when the coefficients were chosen.
import mpmath as mp
import numpy as np

mp.mp.dps = 30
C, DEG_P, DEG_Q = 9.0, 6, 3
M = 3000
xs = np.unique(np.concatenate([np.linspace(0, C, M)[1:], C * (1 - np.cos(np.linspace(0, np.pi / 2, M)))[1:]]))
f = np.array([float(mp.tanh(mp.mpf(x)) / x) for x in xs])
u = xs * xs / (C * C)  # s scaled to [0, 1] for the solve
w = np.ones_like(u)
q_prev = np.ones_like(u)
for it in range(60):
    A = np.hstack([np.vstack([u**k for k in range(DEG_P + 1)]).T, -np.vstack([f * u**k for k in range(1, DEG_Q + 1)]).T])
    wt = np.sqrt(w) / (f * q_prev)
    sol, *_ = np.linalg.lstsq(A * wt[:, None], f * wt, rcond=None)
    p, q = sol[: DEG_P + 1], np.concatenate([[1.0], sol[DEG_P + 1 :]])
    P = sum(p[k] * u**k for k in range(DEG_P + 1))
    Q = sum(q[k] * u**k for k in range(DEG_Q + 1))
    err = (P / Q - f) / f
    q_prev = Q
    if it > 5:
        w = w * np.abs(err)
        w /= w.sum()
print('max relative error of the fit', np.abs(err).max())
print('P', ', '.join('%.9ef' % np.float32(p[k] / (C * C) ** k) for k in range(DEG_P + 1)))
print('Q', ', '.join('%.9ef' % np.float32(q[k] / (C * C) ** k) for k in range(DEG_Q + 1)))
