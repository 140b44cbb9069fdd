// The fused LSTM layer on CUDA (the rnn family; equations and saved layout as native/cpu/rnn.cpp).
//
// A simple, correct scan: one block per batch row loops over the steps (the rows are
// independent; the steps are not). Per step, warps take gate rows j of W_hh and their lanes
// stride over its H columns (coalesced), reducing a_j = xw_j + W_hh[j] . h_{t-1} into shared
// memory; after a barrier each thread updates the cells k it owns. h_{t-1} and the gates stay
// in shared memory (5H floats; above 48 KiB the block opts in to more), c_{t-1} is read back
// from the saved buffer the same thread wrote. The backward mirrors it (dh, dc and the gate
// gradients da in shared memory, dh_{t-1} = da W_hh one column per thread), writing da in float
// to scratch memory, from which a grid-stride kernel forms dW_hh = sum_(b, t) da^T h_{t-1}.
// float32 and bfloat16 storage, float compute; float64 is CPU-only.
#include <climits>
#include <string>

#include "device.cuh"

namespace dualroute {
namespace cuda {

int scratch_alloc(void** ptr, size_t bytes);
int scratch_release(void* ptr);

namespace {

// emu:begin rnn (test/cuda_emu runs the code up to emu:end in a warp emulator)
constexpr int kLstmThreads = 256;

// Forward over all L steps of batch row blockIdx.x; shared memory: h [H], a [4H].
template <typename T>
__global__ void __launch_bounds__(kLstmThreads)
    lstm_fwd(T* __restrict__ hout, T* __restrict__ hn, T* __restrict__ cn, float* __restrict__ saved,
             const T* __restrict__ xw, const T* __restrict__ whh, const T* __restrict__ h0, const T* __restrict__ c0,
             int L, int H) {
  extern __shared__ float lstm_smem[];
  float* hs = lstm_smem;
  float* a = lstm_smem + H;
  const long long b = blockIdx.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5, G = 4 * H;
  for (int k = tid; k < H; k += blockDim.x) hs[k] = ld(h0[b * H + k]);
  __syncthreads();
  for (int t = 0; t < L; ++t) {
    const long long bt = b * L + t;
    const T* x = xw + bt * G;
    for (int j = warp; j < G; j += warps) {
      const T* w = whh + static_cast<long long>(j) * H;
      float s = 0.f;
      for (int p = lane; p < H; p += 32) s += ld(w[p]) * hs[p];
      s = warp_sum(s);
      if (lane == 0) a[j] = s + ld(x[j]);
    }
    __syncthreads();
    float* sv = saved + bt * 5 * H;
    for (int k = tid; k < H; k += blockDim.x) {
      const float i = act_sigmoid(a[k]), f = act_sigmoid(a[H + k]), g = act_tanh(a[2 * H + k]),
                  o = act_sigmoid(a[3 * H + k]);
      const float cp = t > 0 ? sv[4 * H + k - 5 * H] : ld(c0[b * H + k]);
      const float c = f * cp + i * g, h = o * act_tanh(c);
      sv[k] = i;
      sv[H + k] = f;
      sv[2 * H + k] = g;
      sv[3 * H + k] = o;
      sv[4 * H + k] = c;
      hs[k] = h;
      hout[bt * H + k] = st<T>(h);
    }
    __syncthreads();
  }
  for (int k = tid; k < H; k += blockDim.x) {
    hn[b * H + k] = st<T>(hs[k]);
    cn[b * H + k] = L > 0 ? st<T>(saved[(b * L + L - 1) * 5 * H + 4 * H + k]) : c0[b * H + k];
  }
}

// Backward through time of batch row blockIdx.x; shared memory: dh [H], dc [H], da [4H]. Writes
// da to dxw (storage type) and to da_f (float, for dW_hh).
template <typename T>
__global__ void __launch_bounds__(kLstmThreads)
    lstm_bwd(T* __restrict__ dxw, float* __restrict__ da_f, T* __restrict__ dh0, T* __restrict__ dc0,
             const T* __restrict__ dh, const T* __restrict__ dhn, const T* __restrict__ dcn,
             const float* __restrict__ saved, const T* __restrict__ whh, const T* __restrict__ c0, int L, int H) {
  extern __shared__ float lstm_smem[];
  float* dhs = lstm_smem;
  float* dcs = lstm_smem + H;
  float* da = lstm_smem + 2 * H;
  const long long b = blockIdx.x;
  const int tid = threadIdx.x, G = 4 * H;
  for (int k = tid; k < H; k += blockDim.x) {
    dhs[k] = dhn ? ld(dhn[b * H + k]) : 0.f;
    dcs[k] = dcn ? ld(dcn[b * H + k]) : 0.f;
  }
  __syncthreads();
  for (int t = L - 1; t >= 0; --t) {
    const long long bt = b * L + t;
    const float* sv = saved + bt * 5 * H;
    for (int k = tid; k < H; k += blockDim.x) {
      const float i = sv[k], f = sv[H + k], g = sv[2 * H + k], o = sv[3 * H + k], tc = act_tanh(sv[4 * H + k]);
      const float cp = t > 0 ? sv[4 * H + k - 5 * H] : ld(c0[b * H + k]);
      const float dht = dhs[k] + (dh ? ld(dh[bt * H + k]) : 0.f);
      // through the gates' outputs: sigmoid' = s (1 - s), tanh' = 1 - t^2
      const float dcv = dcs[k] + act_tanh_grad_y(tc, dht * o);
      const float d0 = act_sigmoid_grad_y(i, dcv * g), d1 = act_sigmoid_grad_y(f, dcv * cp),
                  d2 = act_tanh_grad_y(g, dcv * i), d3 = act_sigmoid_grad_y(o, dht * tc);
      da[k] = d0;
      da[H + k] = d1;
      da[2 * H + k] = d2;
      da[3 * H + k] = d3;
      dcs[k] = dcv * f;
    }
    __syncthreads();
    // dxw and the float copy, coalesced over the 4H gate gradients
    for (int j = tid; j < G; j += blockDim.x) {
      dxw[bt * G + j] = st<T>(da[j]);
      da_f[bt * G + j] = da[j];
    }
    // dh_{t-1}[p] = sum_j da[j] W_hh[j, p]: threads over p read rows of W_hh coalesced
    for (int p = tid; p < H; p += blockDim.x) {
      float s = 0.f;
      for (int j = 0; j < G; ++j) s += da[j] * ld(whh[static_cast<long long>(j) * H + p]);
      dhs[p] = s;
    }
    __syncthreads();
  }
  for (int k = tid; k < H; k += blockDim.x) {
    dh0[b * H + k] = st<T>(dhs[k]);
    dc0[b * H + k] = st<T>(dcs[k]);
  }
}

// dW_hh[j, p] = sum over rows r = (b, t) of da_f[r, j] h_prev[r, p], h_prev = h0[b] at t = 0, else
// h[b, t - 1]; one output element per thread (grid-stride), the rows summed in order.
template <typename T>
__global__ void lstm_bwd_w(T* __restrict__ dw, const float* __restrict__ da_f, const T* __restrict__ h,
                           const T* __restrict__ h0, long long B, int L, int H) {
  const long long G = 4LL * H, total = G * H;
  for (long long e = gtid(); e < total; e += gstride()) {
    const long long j = e / H;
    const int p = static_cast<int>(e % H);
    float s = 0.f;
    for (long long b = 0; b < B; ++b)
      for (int t = 0; t < L; ++t) {
        const float hp = t > 0 ? ld(h[(b * L + t - 1) * H + p]) : ld(h0[b * H + p]);
        s += da_f[(b * L + t) * G + j] * hp;
      }
    dw[e] = st<T>(s);
  }
}
// emu:end rnn

// Dynamic shared memory of `floats` floats for kernel k: above the default 48 KiB the kernel
// opts in, up to what the device allows.
template <typename K>
int lstm_smem(K k, int64_t floats, size_t& bytes, const char* name) {
  bytes = static_cast<size_t>(floats) * sizeof(float);
  if (bytes <= 48 * 1024) return 0;
  int dev = 0, optin = 0;
  DR_CUDA_TRY(check(cudaGetDevice(&dev), name));
  DR_CUDA_TRY(check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), name));
  if (bytes > static_cast<size_t>(optin))
    return set_error(std::string(name) + ": hidden size " + std::to_string(floats) +
                     " floats of state exceed the block's shared memory on this device");
  return check(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), name);
}

template <typename T>
int lstm_forward_t(const View* h, const View* h_n, const View* c_n, const View* saved, const View* xw,
                   const View* whh, const View* h0, const View* c0, const char* name) {
  const int64_t B = xw->shape[0], L = xw->shape[1], H = whh->shape[1];
  if (B == 0) return 0;
  if (B > INT_MAX || L > INT_MAX || 4 * H > INT_MAX) return set_error(std::string(name) + ": too large");
  size_t smem = 0;
  DR_CUDA_TRY(lstm_smem(lstm_fwd<T>, 5 * H, smem, name));
  lstm_fwd<T><<<static_cast<unsigned>(B), kLstmThreads, smem, stream()>>>(
      static_cast<T*>(h->data), static_cast<T*>(h_n->data), static_cast<T*>(c_n->data),
      static_cast<float*>(saved->data), static_cast<const T*>(xw->data), static_cast<const T*>(whh->data),
      static_cast<const T*>(h0->data), static_cast<const T*>(c0->data), static_cast<int>(L), static_cast<int>(H));
  return check_launch(name);
}

template <typename T>
int lstm_backward_t(const View* dxw, const View* dwhh, const View* dh0, const View* dc0, const View* dh,
                    const View* dh_n, const View* dc_n, const View* h, const View* saved, const View* whh,
                    const View* h0, const View* c0, const char* name) {
  const int64_t B = h->shape[0], L = h->shape[1], H = whh->shape[1];
  if (B > INT_MAX || L > INT_MAX || 4 * H > INT_MAX) return set_error(std::string(name) + ": too large");
  auto opt = [](const View* v) { return v && v->data ? static_cast<const T*>(v->data) : nullptr; };
  void* scratch = nullptr;
  const size_t da_bytes = static_cast<size_t>(B) * L * 4 * H * sizeof(float);
  if (da_bytes) DR_CUDA_TRY(scratch_alloc(&scratch, da_bytes));
  float* da = static_cast<float*>(scratch);
  int status = 0;
  if (B > 0) {
    size_t smem = 0;
    status = lstm_smem(lstm_bwd<T>, 6 * H, smem, name);
    if (status == 0) {
      lstm_bwd<T><<<static_cast<unsigned>(B), kLstmThreads, smem, stream()>>>(
          static_cast<T*>(dxw->data), da, static_cast<T*>(dh0->data), static_cast<T*>(dc0->data), opt(dh),
          opt(dh_n), opt(dc_n), static_cast<const float*>(saved->data), static_cast<const T*>(whh->data),
          static_cast<const T*>(c0->data), static_cast<int>(L), static_cast<int>(H));
      status = check_launch(name);
    }
  }
  if (status == 0) {
    lstm_bwd_w<T><<<grid_for(4 * H * H), kThreads, 0, stream()>>>(static_cast<T*>(dwhh->data), da,
                                                                   static_cast<const T*>(h->data),
                                                                   static_cast<const T*>(h0->data), B,
                                                                   static_cast<int>(L), static_cast<int>(H));
    status = check_launch(name);
  }
  // Stream order: the next user of the scratch block runs after these kernels.
  const int rel = scratch ? scratch_release(scratch) : 0;
  return status ? status : rel;
}

}  // namespace

int lstm_forward(const View* h, const View* h_n, const View* c_n, const View* saved, const View* xw, const View* whh,
                 const View* h0, const View* c0) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "lstmForward";
  switch (dt(*xw)) {
    case DType::F32: return lstm_forward_t<float>(h, h_n, c_n, saved, xw, whh, h0, c0, name);
    case DType::BF16: return lstm_forward_t<bf16_t>(h, h_n, c_n, saved, xw, whh, h0, c0, name);
    default: return dtype_error(name, *xw);
  }
  DR_CUDA_ENTRY_END("lstmForward")
}

int lstm_backward(const View* dxw, const View* dwhh, const View* dh0, const View* dc0, const View* dh,
                  const View* dh_n, const View* dc_n, const View* h, const View* saved, const View* whh,
                  const View* h0, const View* c0) {
  DR_CUDA_ENTRY_BEGIN
  const char* name = "lstmBackward";
  switch (dt(*h)) {
    case DType::F32:
      return lstm_backward_t<float>(dxw, dwhh, dh0, dc0, dh, dh_n, dc_n, h, saved, whh, h0, c0, name);
    case DType::BF16:
      return lstm_backward_t<bf16_t>(dxw, dwhh, dh0, dc0, dh, dh_n, dc_n, h, saved, whh, h0, c0, name);
    default: return dtype_error(name, *h);
  }
  DR_CUDA_ENTRY_END("lstmBackward")
}

}  // namespace cuda
}  // namespace dualroute
