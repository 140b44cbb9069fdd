#!/usr/bin/env python3
# The table of GELU's AVX-512 fast form (native/cpu/activations.h, act::Gelu::kPhi): on
# u = |x| <= 5, Phi(-u) in 32 pieces of width 5/32. With s = 6.4 u (6.4 rounded to float32),
# piece i = min(floor(s), 31) and f = s - i in [0, 1], each piece is a degree-5 polynomial in f
# fitted for relative error: least squares on Chebyshev nodes weighted by 1/Phi, then Lawson's
# reweighting towards the minimax. Prints the six coefficient rows (constant term first, 32
# pieces each) as C++ initialisers, then checks the form as the kernel evaluates it (f by a
# fused multiply-add, float32 Horner with fused multiply-adds, emulated in double and rounded
# to float32 at every step) on a grid of 2,000,001 points: the largest relative error of
# Phi(-u) (3.6e-7; fit-gelu.py's check of the exp2 form gives 1.95e-6). Needs numpy.
import math

import numpy as np

PIECES, DEG, SPAN = 32, 5, 5.0
SCALE = np.float32(PIECES / SPAN)
phi_lower = np.vectorize(lambda u: 0.5 * math.erfc(u / math.sqrt(2.0)))

coef = np.zeros((DEG + 1, PIECES))
nodes = 0.5 - 0.5 * np.cos(np.pi * (np.arange(400) + 0.5) / 400)  # Chebyshev nodes on [0, 1]
for i in range(PIECES):
    y = phi_lower((i + nodes) / float(SCALE))
    weight = np.full(len(y), 1.0 / len(y))
    for _ in range(30):  # Lawson: weight the nodes by their error, towards equal relative error
        c = np.polynomial.polynomial.polyfit(nodes, y, DEG, w=np.sqrt(weight) / y)
        err = np.abs(np.polynomial.polynomial.polyval(nodes, c) / y - 1.0)
        weight = weight * (err + 1e-30)
        weight /= weight.sum()
    coef[:, i] = c
c32 = coef.astype(np.float32)
for row in c32:
    print("{" + ", ".join(f"{float(v):.9e}f" for v in row) + "},")

u = np.linspace(0.0, SPAN, 2000001).astype(np.float32)
piece = np.minimum((u * SCALE).astype(np.float32).astype(np.int32), PIECES - 1)
f = (u.astype(np.float64) * np.float64(SCALE) - piece).astype(np.float32)
p = c32[DEG][piece]
for k in range(DEG - 1, -1, -1):
    p = (p.astype(np.float64) * f + c32[k][piece]).astype(np.float32)
rel = np.abs(p.astype(np.float64) / phi_lower(u.astype(np.float64)) - 1.0)
print(f"as evaluated in float32: largest relative error of Phi(-u) on [0, {SPAN}] {rel.max():.2e} (u = {u[rel.argmax()]:.5f})")
