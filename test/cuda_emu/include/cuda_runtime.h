// Stand-in for the CUDA runtime header (native/cuda/attention.cuh includes it): the emulator.
#pragma once
#include "emu.h"
