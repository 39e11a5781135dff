// y = x @ w.T + b for 1 to 8 rows of float32 x, w float32 or int8 with a float32 scale per row:
// every weight row is read from memory once for all the rows (lmforge/layers/cpu_kernels.py
// builds and loads this file; see its docstring).
// Plain C++ with GCC vector types: the build's -m flags pick AVX-512, AVX2 or SSE code. Each
// output is one dot product summed in the same order whatever the number of rows, so a row gets
// the same bits alone or beside others.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

// V floats a vector; each weight block of R rows meets the rows of x G at a time (G x R
// accumulators: 16 of the 32 AVX-512 registers, 8 of the 16 AVX2 or SSE ones); a block read for
// the first G rows is still in L1 for the next G.
constexpr int R = 2;
#if defined(__AVX512F__)
constexpr int V = 16, G = 8;
#elif defined(__AVX2__)
constexpr int V = 8, G = 4;
#else
constexpr int V = 4, G = 4;
#endif
// How many blocks of R weight rows ahead to prefetch: with 8 rows to multiply, the hardware
// prefetcher alone falls behind and reading overlaps computing badly (14 GB/s against 25).
constexpr int PREFETCH_BLOCKS = 4;

typedef float vec __attribute__((vector_size(V * sizeof(float))));
typedef int8_t bytes __attribute__((vector_size(V)));

// V weights as floats: float32 as they are, int8 widened (their row's scale comes at the end).
static inline vec load(const float* p) {
  vec v;
  __builtin_memcpy(&v, p, sizeof(vec));
  return v;
}
static inline vec load(const int8_t* p) {
#if defined(__AVX512F__)  // GCC 12 widens a vector of bytes one byte at a time: say how
  return (vec)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
#elif defined(__AVX2__)
  return (vec)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
#else
  bytes v;
  __builtin_memcpy(&v, p, sizeof(bytes));
  return __builtin_convertvector(v, vec);
#endif
}

// Rows n .. n+RR-1 of w against the M rows of x: y = (x . w) * scale + b.
template <int M, int RR, typename W>
static void block(const float* x, const W* w, const float* scale, const float* b, float* y,
                  int64_t K, int64_t N, int64_t n) {
  const int64_t kv = K - K % V;
  const W* ahead = w + (n + RR * PREFETCH_BLOCKS) * K;
  const W* end = w + N * K;
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
      for (int64_t k = kv; k < K; ++k) s += float(w[(n + r) * K + k]) * x[m * K + k];
      if (scale) s *= scale[n + r];
      y[m * N + n + r] = b ? s + b[n + r] : s;
    }
}

// Weight rows n .. n+RR-1 against all M rows of x, G rows at a time.
template <int M, int RR, typename W>
static void groups(const float* x, const W* w, const float* scale, const float* b, float* y,
                   int64_t K, int64_t N, int64_t n) {
  if constexpr (M <= G) {
    block<M, RR>(x, w, scale, b, y, K, N, n);
  } else {
    block<G, RR>(x, w, scale, b, y, K, N, n);
    groups<M - G, RR>(x + G * K, w, scale, b, y + G * N, K, N, n);
  }
}

template <int M, typename W>
static void rows(const float* x, const W* w, const float* scale, const float* b, float* y,
                 int64_t K, int64_t N) {
  at::parallel_for(0, (N + R - 1) / R, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i * R;
      if (n + R <= N)
        groups<M, R>(x, w, scale, b, y, K, N, n);
      else
        for (int64_t j = n; j < N; ++j) groups<M, 1>(x, w, scale, b, y, K, N, j);
    }
  });
}

template <typename W>
static void dispatch(int64_t M, const float* x, const W* w, const float* scale, const float* b,
                     float* y, int64_t K, int64_t N) {
  switch (M) {
    case 1: rows<1>(x, w, scale, b, y, K, N); break;
    case 2: rows<2>(x, w, scale, b, y, K, N); break;
    case 3: rows<3>(x, w, scale, b, y, K, N); break;
    case 4: rows<4>(x, w, scale, b, y, K, N); break;
    case 5: rows<5>(x, w, scale, b, y, K, N); break;
    case 6: rows<6>(x, w, scale, b, y, K, N); break;
    case 7: rows<7>(x, w, scale, b, y, K, N); break;
    default: rows<8>(x, w, scale, b, y, K, N); break;
  }
}

static const float* vector_of(const c10::optional<at::Tensor>& t, int64_t n, at::Tensor& keep,
                              const char* what) {
  if (!t.has_value() || !t->defined()) return nullptr;
  keep = t->contiguous();
  TORCH_CHECK(keep.scalar_type() == at::kFloat && keep.numel() == n, "small_linear: ", what,
              " must be float32 (N,)");
  return keep.data_ptr<float>();
}

// x (M, K) float32 with 1 <= M <= 8, w (N, K) float32 or int8 row-major, scale (N,) float32 for
// int8 weights, b (N,) or None -> (M, N) float32.
static at::Tensor small_linear(const at::Tensor& x, const at::Tensor& w,
                               const c10::optional<at::Tensor>& scale,
                               const c10::optional<at::Tensor>& b) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "small_linear: x (M, K) and w (N, K)");
  const bool int8 = w.scalar_type() == at::kChar;
  TORCH_CHECK(x.scalar_type() == at::kFloat && (int8 || w.scalar_type() == at::kFloat),
              "small_linear: float32 x, float32 or int8 w");
  TORCH_CHECK(int8 == (scale.has_value() && scale->defined()),
              "small_linear: a scale with int8 weights (only)");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= 8, "small_linear: 1 to 8 rows");
  TORCH_CHECK(w.is_contiguous() && x.device().is_cpu() && w.device().is_cpu(),
              "small_linear: a contiguous weight on the CPU");
  const at::Tensor xc = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  at::Tensor keep_scale, keep_bias;
  const float* sp = vector_of(scale, N, keep_scale, "scale");
  const float* bp = vector_of(b, N, keep_bias, "bias");
  if (int8)
    dispatch(M, xc.data_ptr<float>(), w.data_ptr<int8_t>(), sp, bp, y.data_ptr<float>(), K, N);
  else
    dispatch(M, xc.data_ptr<float>(), w.data_ptr<float>(), sp, bp, y.data_ptr<float>(), K, N);
  return y;
}

// One namespace per build (LMFORGE_NS: the instruction set), so two builds load side by side.
#define LMFORGE_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define LMFORGE_LIBRARY_IMPL(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)
LMFORGE_LIBRARY(LMFORGE_NS, m) {
  m.def("small_linear(Tensor x, Tensor w, Tensor? scale, Tensor? b) -> Tensor");
}
LMFORGE_LIBRARY_IMPL(LMFORGE_NS, CPU, m) { m.impl("small_linear", &small_linear); }
