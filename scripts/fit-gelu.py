#!/usr/bin/env python3
# The coefficients of GELU's fast form (native/cpu/activations.h, act::Gelu::kE): on |x| <= 5,
# Phi(-u) = 2^E(u) with u = |x| and E a degree-11 polynomial fitted to log2 Phi(-u) on [0, 5]
# (Phi the standard normal CDF; Phi(-u) = erfc(u / sqrt 2) / 2, which double precision's erfc
# gives to full relative accuracy there). A Chebyshev least-squares fit (near the minimax for a
# function this smooth), converted to monomials in u for Horner's rule. Prints the largest
# absolute error of the fit in E (2.7e-8 before rounding to float32) and then the float32
# coefficients, highest degree first. Then it checks the form as the kernel evaluates it (float32
# Horner with fused multiply-add, one exp2) against double precision on a grid: the largest
# relative error of Phi(-u), and its ratio to the tolerance test/ops/elementwise.test.ts allows
# GELU (4e-7 + 1.5e-7 x^2). Needs numpy.
import math

import numpy as np
from numpy.polynomial import chebyshev as C
from numpy.polynomial import polynomial as P

U, DEG = 5.0, 11
u = np.linspace(0.0, U, 8001)
E = np.log2(np.array([0.5 * math.erfc(x / math.sqrt(2.0)) for x in u]))
c = C.chebfit(2.0 * u / U - 1.0, E, DEG)
print(f"fit: largest error in log2 Phi(-u) on [0, {U}] {np.max(np.abs(C.chebval(2.0 * u / U - 1.0, c) - E)):.2e}")
w = C.cheb2poly(c)  # monomials in w = 2u/U - 1
mono = np.zeros(DEG + 1)
power = np.array([1.0])
for k in range(DEG + 1):
    mono[: len(power)] += w[k] * power
    power = P.polymul(power, [-1.0, 2.0 / U])
coef = [np.float32(v) for v in mono[::-1]]
print(", ".join(f"{float(v):.9e}f" for v in coef))


def fma32(a, b, c):
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


worst, worst_tol = 0.0, 0.0
for x in np.linspace(0.0, U, 20001).astype(np.float32):
    p = coef[0]
    for k in coef[1:]:
        p = fma32(p, x, k)
    got = np.float32(2.0 ** float(p))
    want = 0.5 * math.erfc(float(x) / math.sqrt(2.0))
    rel = abs(float(got) / want - 1.0)
    worst = max(worst, rel)
    worst_tol = max(worst_tol, rel / (4e-7 + 1.5e-7 * float(x) ** 2))
print(f"float32 evaluation: largest relative error of Phi(-u) {worst:.2e}, {worst_tol:.2f} of the test's tolerance")
