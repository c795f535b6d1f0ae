// Skinny fp32 matrix products for decode-shaped work on the CPU, as XLA FFI custom calls.
//
//   spectax_skinny_nn: y[T, N] = x[T, K] @ w[K, N]      (a Dense kernel as stored, [in, out])
//   spectax_skinny_nt: y[T, N] = x[T, K] @ w[N, K]^T    (a tied LM head: the embedding table [V, E] as stored)
//
// Both read every weight once and apply it to all T rows (T <= 16 per pass; more rows run in passes of 16), so a
// product over a few rows costs what its weight bytes cost, as a GEMV does. The column range is split over threads
// (OpenMP). Vector code comes from GCC's vector extensions at the width of the machine the library is compiled on
// (-march=native: AVX-512 where present, AVX2 or SSE otherwise); edges that are not a whole vector run scalar.
// The pure-jnp reference of the same signature is cpu_kernels/matmul.py:reference.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;                       // floats per vector (64 bytes)
typedef float vec __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));
constexpr int kMaxRows = 16;
constexpr int64_t kPrefetch = 512;             // floats ahead in the weight stream

inline vec load(const float* p) { vec v; std::memcpy(&v, p, sizeof(vec)); return v; }
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof(vec)); }
inline vec splat(float a) { return vec{} + a; }
inline float hsum(vec v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// y[t, n0 : n0 + C * kLanes] for t < T: C vectors of columns, every weight row read once.
template <int T, int C>
inline void nn_block(const float* x, const float* w, float* y, int64_t K, int64_t N, int64_t n0) {
  vec acc[T][C];
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < C; ++c) acc[t][c] = vec{};
  const float* wk = w + n0;
  for (int64_t k = 0; k < K; ++k, wk += N) {
    vec wv[C];
    for (int c = 0; c < C; ++c) wv[c] = load(wk + c * kLanes);
    for (int t = 0; t < T; ++t) {
      const vec xv = splat(x[t * K + k]);
      for (int c = 0; c < C; ++c) acc[t][c] += xv * wv[c];
    }
  }
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < C; ++c) store(y + t * N + n0 + c * kLanes, acc[t][c]);
}

template <int T>
void nn_rows(const float* x, const float* w, float* y, int64_t K, int64_t N) {
  constexpr int C = T <= 2 ? 8 : T <= 4 ? 4 : T <= 8 ? 2 : 1;    // T * C accumulators fit the vector registers
  constexpr int64_t width = C * kLanes;
  const int64_t blocks = N / width;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) nn_block<T, C>(x, w, y, K, N, b * width);
  for (int64_t n = blocks * width; n < N; ++n) {                   // the columns past the last whole block
    for (int t = 0; t < T; ++t) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += x[t * K + k] * w[k * N + n];
      y[t * N + n] = s;
    }
  }
}

// y[t, n0 .. n0 + R) for t < T: R consecutive weight rows (a contiguous stretch of memory, prefetched ahead),
// each a dot product with every x row; U partial sums per (row, t) hide the add latency.
template <int T, int R>
inline void nt_block(const float* x, const float* w, float* y, int64_t K, int64_t N, int64_t n0) {
  constexpr int U = T * R >= 8 ? 1 : 8 / (T * R);
  vec acc[T][R][U];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < U; ++u) acc[t][r][u] = vec{};
  const float* wr = w + n0 * K;
  const int64_t step = U * kLanes;
  const int64_t Kv = K / step * step;
  for (int64_t k = 0; k < Kv; k += step) {
    for (int r = 0; r < R; ++r) __builtin_prefetch(wr + r * K + k + kPrefetch, 0, 0);
    for (int u = 0; u < U; ++u) {
      vec wv[R];
      for (int r = 0; r < R; ++r) wv[r] = load(wr + r * K + k + u * kLanes);
      for (int t = 0; t < T; ++t) {
        const vec xv = load(x + t * K + k + u * kLanes);
        for (int r = 0; r < R; ++r) acc[t][r][u] += xv * wv[r];
      }
    }
  }
  for (int t = 0; t < T; ++t) {
    for (int r = 0; r < R; ++r) {
      vec a = acc[t][r][0];
      for (int u = 1; u < U; ++u) a += acc[t][r][u];
      float s = hsum(a);
      for (int64_t k = Kv; k < K; ++k) s += x[t * K + k] * wr[r * K + k];
      y[t * N + n0 + r] = s;
    }
  }
}

template <int T>
void nt_rows(const float* x, const float* w, float* y, int64_t K, int64_t N) {
  constexpr int R = 1;   // one weight row at a time: a single sequential stream (measured best on EPYC)
  const int64_t blocks = N / R;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) nt_block<T, R>(x, w, y, K, N, b * R);
  for (int64_t n = blocks * R; n < N; ++n) nt_block<T, 1>(x, w, y, K, N, n);
}

using RowsFn = void (*)(const float*, const float*, float*, int64_t, int64_t);

#define SPECTAX_ROWS_TABLE(NAME)                                                                                  \
  const RowsFn NAME##_table[kMaxRows] = {NAME##_rows<1>,  NAME##_rows<2>,  NAME##_rows<3>,  NAME##_rows<4>,       \
                                         NAME##_rows<5>,  NAME##_rows<6>,  NAME##_rows<7>,  NAME##_rows<8>,       \
                                         NAME##_rows<9>,  NAME##_rows<10>, NAME##_rows<11>, NAME##_rows<12>,      \
                                         NAME##_rows<13>, NAME##_rows<14>, NAME##_rows<15>, NAME##_rows<16>};

SPECTAX_ROWS_TABLE(nn)
SPECTAX_ROWS_TABLE(nt)

// x: [..., K] (all leading dims are rows); w: [K, N] (nn) or [N, K] (nt), after size-1 dims; y: [..., N].
ffi::Error skinny(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y, bool nt) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  // w may carry leading dims of size 1 (vmap over x with vmap_method="expand_dims"); batched weights are refused
  const size_t wr = wd.size();
  if (xd.size() < 1 || wr < 2 || w.element_count() != wd[wr - 2] * wd[wr - 1])
    return ffi::Error::InvalidArgument("skinny matmul: x [..., K] and one 2-D weight (no batch of weights)");
  const int64_t K = xd.back();
  const int64_t N = nt ? wd[wr - 2] : wd[wr - 1];
  if ((nt ? wd[wr - 1] : wd[wr - 2]) != K) return ffi::Error::InvalidArgument("skinny matmul: contraction sizes differ");
  const int64_t rows = K == 0 ? 0 : x.element_count() / K;
  if (K == 0) {
    std::fill(y->typed_data(), y->typed_data() + y->element_count(), 0.f);
    return ffi::Error::Success();
  }
  const RowsFn* table = nt ? nt_table : nn_table;
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxRows) {
    const int64_t T = std::min<int64_t>(kMaxRows, rows - r0);
    table[T - 1](x.typed_data() + r0 * K, w.typed_data(), y->typed_data() + r0 * N, K, N);
  }
  return ffi::Error::Success();
}

ffi::Error skinny_nn(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y) {
  return skinny(x, w, y, false);
}

ffi::Error skinny_nt(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y) {
  return skinny(x, w, y, true);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(spectax_skinny_nn, skinny_nn,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<
                                  ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(spectax_skinny_nt, skinny_nt,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<
                                  ffi::Buffer<ffi::F32>>());
