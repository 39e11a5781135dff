// y = x @ w.T + b for 1 to 8 rows of float32 x: every weight row is read from memory once for
// all the rows (lmforge/layers/cpu_kernels.py builds and loads this file; see its docstring).
// Plain C++ with GCC vector types: the build's -m flags pick AVX-512, AVX2 or SSE code. Each
// output is one dot product summed in the same order whatever the number of rows, so a row gets
// the same bits alone or beside others.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__AVX512F__)
constexpr int V = 16, R = 2;  // 16 accumulators of 16 floats for 8 rows x 2 weight rows
#elif defined(__AVX2__)
constexpr int V = 8, R = 1;  // 16 registers: 8 accumulators
#else
constexpr int V = 4, R = 1;
#endif
// How many blocks of R weight rows ahead to prefetch: with 8 rows to multiply, the hardware
// prefetcher alone falls behind and reading overlaps computing badly (14 GB/s against 25).
constexpr int PREFETCH_BLOCKS = 4;

typedef float vec __attribute__((vector_size(V * sizeof(float))));

static inline vec load(const float* p) {
  vec v;
  __builtin_memcpy(&v, p, sizeof(vec));
  return v;
}

// Rows n .. n+RR-1 of w against the M rows of x.
template <int M, int RR>
static void block(const float* x, const float* w, const float* b, float* y, int64_t K, int64_t N,
                  int64_t n) {
  const int64_t kv = K - K % V;
  const float* ahead = w + (n + RR * PREFETCH_BLOCKS) * K;
  const float* end = w + N * K;
  vec acc[RR][M];
  for (int r = 0; r < RR; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = vec{};
  for (int64_t k = 0; k < kv; k += V) {
    if (ahead + k * RR < end)
      for (int r = 0; r < RR; ++r) __builtin_prefetch(ahead + k * RR + r * V, 0, 1);
    vec wr[RR];
    for (int r = 0; r < RR; ++r) wr[r] = load(w + (n + r) * K + k);
    for (int m = 0; m < M; ++m) {
      const vec xm = load(x + m * K + k);
      for (int r = 0; r < RR; ++r) acc[r][m] += wr[r] * xm;
    }
  }
  for (int r = 0; r < RR; ++r)
    for (int m = 0; m < M; ++m) {
      float s = 0.f;
      for (int i = 0; i < V; ++i) s += acc[r][m][i];
      for (int64_t k = kv; k < K; ++k) s += w[(n + r) * K + k] * x[m * K + k];
      y[m * N + n + r] = b ? s + b[n + r] : s;
    }
}

template <int M>
static void rows(const float* x, const float* w, const float* b, float* y, int64_t K, int64_t N) {
  at::parallel_for(0, (N + R - 1) / R, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i * R;
      if (n + R <= N)
        block<M, R>(x, w, b, y, K, N, n);
      else
        for (int64_t j = n; j < N; ++j) block<M, 1>(x, w, b, y, K, N, j);
    }
  });
}

static at::Tensor small_linear(const at::Tensor& x, const at::Tensor& w,
                               const c10::optional<at::Tensor>& b) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "small_linear: x (M, K) and w (N, K)");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat,
              "small_linear: float32 only");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= 8, "small_linear: 1 to 8 rows");
  TORCH_CHECK(w.is_contiguous() && x.device().is_cpu() && w.device().is_cpu(),
              "small_linear: a contiguous weight on the CPU");
  const at::Tensor xc = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  at::Tensor bc;
  const float* bp = nullptr;
  if (b.has_value() && b->defined()) {
    bc = b->contiguous();
    TORCH_CHECK(bc.scalar_type() == at::kFloat && bc.numel() == N, "small_linear: bias (N,)");
    bp = bc.data_ptr<float>();
  }
  const float* xp = xc.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  switch (M) {
    case 1: rows<1>(xp, wp, bp, yp, K, N); break;
    case 2: rows<2>(xp, wp, bp, yp, K, N); break;
    case 3: rows<3>(xp, wp, bp, yp, K, N); break;
    case 4: rows<4>(xp, wp, bp, yp, K, N); break;
    case 5: rows<5>(xp, wp, bp, yp, K, N); break;
    case 6: rows<6>(xp, wp, bp, yp, K, N); break;
    case 7: rows<7>(xp, wp, bp, yp, K, N); break;
    default: rows<8>(xp, wp, bp, yp, K, N); break;
  }
  return y;
}

// One namespace per build (LMFORGE_NS: the instruction set), so two builds load side by side.
#define LMFORGE_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define LMFORGE_LIBRARY_IMPL(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)
LMFORGE_LIBRARY(LMFORGE_NS, m) { m.def("small_linear(Tensor x, Tensor w, Tensor? b) -> Tensor"); }
LMFORGE_LIBRARY_IMPL(LMFORGE_NS, CPU, m) { m.impl("small_linear", &small_linear); }
