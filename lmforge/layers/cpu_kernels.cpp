// lmforge's decode kernels for the CPU (lmforge/layers/cpu_kernels.py builds and loads this file;
// see its docstring):
// - small_linear: y = x @ w.T + b for 1 to 8 rows of float32 x, w float32 or int8 with a float32
//   scale per row: every weight row is read from memory once for all the rows. Each output is
//   one dot product summed in the same order whatever the number of rows, so a row gets the
//   same bits alone or beside others.
// - int8_linear: the same for int8 weights on a CPU with AVX-512 VNNI, the rows rounded to int8.
// - decode_stack: the pre-norm transformer blocks of a model (GPT: LayerNorm, attention, GELU or
//   ReLU MLP; Llama: RMSNorm, grouped-query attention with optional q/k norms and a sliding
//   window, SwiGLU) over slot KV caches, for rows that each read one new token, in one call: the
//   same products as the Python blocks, with the norms, the residual sums and the attention of one
//   query over its slot's keys written out here (SDPA and a dispatched op cost more in setting up
//   than in computing for a few rows).
// Plain C++ with GCC vector types: the build's -m flags pick AVX-512, AVX2 or SSE code.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>
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

// ------------------------------------------------------------------- int8_linear (VNNI)

// y = (x quantized per row) @ w.T, w int8 with a float32 scale per row: each row of x is rounded to
// int8 with its own scale (max |x| / 127, as layers/quant.py's quantize_rows) and the products
// summed in int32 by AVX-512 VNNI (vpdpbusd: 64 multiply-adds an instruction, against 16 in
// float32 for the widening path above, which keeps the float activations). vpdpbusd multiplies
// unsigned by signed bytes, so x goes in as x + 128 and 128 * sum(w row) comes off.
#if defined(__AVX512F__)
#define LMFORGE_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
constexpr int64_t Q8_AHEAD = 4;  // weight rows prefetched ahead

template <int M>
LMFORGE_VNNI_TARGET static void q8_range(const uint8_t* xq, int64_t Kp, const float* sx,
                                         const int8_t* w, const float* scale, const float* b,
                                         float* y, int64_t K, int64_t N, int64_t n0, int64_t n1) {
  const __m512i ones = _mm512_set1_epi8(1);
  const int64_t kv = K - K % 64;
  const __mmask64 tail = K % 64 ? (~0ULL >> (64 - K % 64)) : 0;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* row = w + n * K;
    const int8_t* ahead = n + Q8_AHEAD < N ? row + Q8_AHEAD * K : nullptr;
    __m512i acc[M], wsum = _mm512_setzero_si512();
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_si512();
    for (int64_t k = 0; k < kv; k += 64) {
      if (ahead) __builtin_prefetch(ahead + k, 0, 1);
      const __m512i wv = _mm512_loadu_si512(row + k);
      wsum = _mm512_dpbusd_epi32(wsum, ones, wv);
      for (int m = 0; m < M; ++m)
        acc[m] = _mm512_dpbusd_epi32(acc[m], _mm512_loadu_si512(xq + m * Kp + k), wv);
    }
    if (tail) {
      if (ahead) __builtin_prefetch(ahead + kv, 0, 1);
      const __m512i wv = _mm512_maskz_loadu_epi8(tail, row + kv);
      wsum = _mm512_dpbusd_epi32(wsum, ones, wv);
      for (int m = 0; m < M; ++m)
        acc[m] = _mm512_dpbusd_epi32(acc[m], _mm512_loadu_si512(xq + m * Kp + kv), wv);
    }
    const __m512i offset = _mm512_slli_epi32(wsum, 7);  // 128 * the row's sums, lane by lane
    for (int m = 0; m < M; ++m) {
      const int32_t sum = _mm512_reduce_add_epi32(_mm512_sub_epi32(acc[m], offset));
      const float v = float(sum) * sx[m] * scale[n];
      y[m * N + n] = b ? b[n] + v : v;
    }
  }
}

// Row x (K floats) rounded to int8 with its own scale, as layers/quant.py's quantize_rows (max |x|
// / 127; x / scale rounded half to even), stored + 128 as unsigned; returns the scale.
LMFORGE_VNNI_TARGET static float q8_row(const float* x, int64_t K, uint8_t* q) {
  const int64_t kv = K - K % 16;
  __m512 top16 = _mm512_setzero_ps();
  for (int64_t k = 0; k < kv; k += 16) top16 = _mm512_max_ps(top16, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
  float top = _mm512_reduce_max_ps(top16);
  for (int64_t k = kv; k < K; ++k) top = std::max(top, std::fabs(x[k]));
  const float sx = std::max(top, 1e-12f) / 127.f;
  const __m512 d = _mm512_set1_ps(sx);
  const __m512i half = _mm512_set1_epi32(128);
  for (int64_t k = 0; k < kv; k += 16) {  // cvtps rounds half to even (the default mode)
    const __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(x + k), d)), half);
    _mm_storeu_si128((__m128i*)(q + k), _mm512_cvtepi32_epi8(v));  // 1 .. 255: the low byte
  }
  for (int64_t k = kv; k < K; ++k) q[k] = uint8_t(int(std::nearbyint(x[k] / sx)) + 128);
  return sx;
}

template <int M>
static void q8_rows(const uint8_t* xq, int64_t Kp, const float* sx, const int8_t* w,
                    const float* scale, const float* b, float* y, int64_t K, int64_t N) {
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    q8_range<M>(xq, Kp, sx, w, scale, b, y, K, N, n0, n1);
  });
}

static bool cpu_has_vnni() { return __builtin_cpu_supports("avx512vnni"); }
#else
static bool cpu_has_vnni() { return false; }
#endif

static bool has_vnni() {
  static const bool yes = cpu_has_vnni();
  return yes;
}

// x (M, K) float32 with 1 <= M <= 8, w (N, K) int8, scale (N,) float32, b (N,) or None -> (M, N).
static at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                              const c10::optional<at::Tensor>& b) {
  TORCH_CHECK(has_vnni(), "int8_linear: this CPU has no AVX-512 VNNI");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1) &&
                  x.scalar_type() == at::kFloat && w.scalar_type() == at::kChar &&
                  w.is_contiguous() && x.size(0) >= 1 && x.size(0) <= 8,
              "int8_linear: x (1 to 8, K) float32, w (N, K) int8 contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), Kp = (K + 63) / 64 * 64;
  at::Tensor keep_scale, keep_bias;
  const float* sp = vector_of(scale, N, keep_scale, "scale");
  const float* bp = vector_of(b, N, keep_bias, "bias");
  const at::Tensor xc = x.contiguous();
  const float* xp = xc.data_ptr<float>();
  std::vector<uint8_t> xq(M * Kp, 128);
  float sx[8];
#if defined(__AVX512F__)
  for (int64_t m = 0; m < M; ++m) sx[m] = q8_row(xp + m * K, K, xq.data() + m * Kp);
#endif
  at::Tensor y = at::empty({M, N}, x.options());
#if defined(__AVX512F__)
  const int8_t* wp = w.data_ptr<int8_t>();
  float* yp = y.data_ptr<float>();
  switch (M) {
    case 1: q8_rows<1>(xq.data(), Kp, sx, wp, sp, bp, yp, K, N); break;
    case 2: q8_rows<2>(xq.data(), Kp, sx, wp, sp, bp, yp, K, N); break;
    case 3: q8_rows<3>(xq.data(), Kp, sx, wp, sp, bp, yp, K, N); break;
    case 4: q8_rows<4>(xq.data(), Kp, sx, wp, sp, bp, yp, K, N); break;
    case 5: q8_rows<5>(xq.data(), Kp, sx, wp, sp, bp, yp, K, N); break;
    case 6: q8_rows<6>(xq.data(), Kp, sx, wp, sp, bp, yp, K, N); break;
    case 7: q8_rows<7>(xq.data(), Kp, sx, wp, sp, bp, yp, K, N); break;
    default: q8_rows<8>(xq.data(), Kp, sx, wp, sp, bp, yp, K, N); break;
  }
#endif
  return y;
}

// The product decode_stack runs for one linear layer: int8 weights through VNNI where the CPU has
// it (as layers/quant.py's Int8Linear then does), else the small-rows kernel.
static at::Tensor product(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& s,
                          const c10::optional<at::Tensor>& b) {
  if (w.scalar_type() == at::kChar && s.has_value() && s->defined() && has_vnni())
    return int8_linear(x, w, *s, b);
  return small_linear(x, w, s, b);
}

// ------------------------------------------------------------------- decode_stack

// The sum of a vector's lanes (a shuffle tree where the instruction set has one).
static inline float hsum(vec v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps((__m512)v);
#elif defined(__AVX2__)
  __m128 s = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(_mm_hadd_ps(s, s));
#else
  float s = 0.f;
  for (int i = 0; i < V; ++i) s += v[i];
  return s;
#endif
}

static inline float dot(const float* a, const float* b, int64_t D) {
  const int64_t dv = D - D % V;
  vec acc = vec{};
  for (int64_t d = 0; d < dv; d += V) acc += load(a + d) * load(b + d);
  float s = hsum(acc);
  for (int64_t d = dv; d < D; ++d) s += a[d] * b[d];
  return s;
}

// o[0:D] = sum over j < len of p[j] * values[j][0:D] (values rows D apart).
static inline void weighted_sum(const float* p, const float* values, int64_t len, int64_t D,
                                float* o) {
  constexpr int64_t MAX_CHUNKS = 8;  // D up to 8 vectors (128 floats on AVX-512) in registers
  if (D % V == 0 && D / V <= MAX_CHUNKS) {
    const int64_t chunks = D / V;
    vec acc[MAX_CHUNKS] = {};
    for (int64_t j = 0; j < len; ++j) {
      const vec pj = vec{} + p[j];
      for (int64_t c = 0; c < chunks; ++c) acc[c] += pj * load(values + j * D + c * V);
    }
    for (int64_t c = 0; c < chunks; ++c) __builtin_memcpy(o + c * V, &acc[c], sizeof(vec));
    return;
  }
  std::fill(o, o + D, 0.f);
  for (int64_t j = 0; j < len; ++j)
    for (int64_t d = 0; d < D; ++d) o[d] += p[j] * values[j * D + d];
}

// y[0:D] = x rotated by the rotary tables' row (rotate-half layout: pairs d, d + D/2), or copied.
static inline void rotate(const float* x, const float* cos, const float* sin, float* y, int64_t D) {
  if (!cos) {
    std::copy(x, x + D, y);
    return;
  }
  const int64_t half = D / 2;
  for (int64_t d = 0; d < half; ++d) y[d] = x[d] * cos[d] - x[d + half] * sin[d];
  for (int64_t d = half; d < D; ++d) y[d] = x[d] * cos[d] + x[d - half] * sin[d];
}

// y[0:D] = x[0:D] RMS-normed with weight w (a Qwen3 head's q/k norm), as nn.RMSNorm computes it.
static inline void rms_head(const float* x, const float* w, float eps, float* y, int64_t D) {
  float ss = 0.f;
  for (int64_t d = 0; d < D; ++d) ss += x[d] * x[d];
  const float r = 1.f / std::sqrt(ss / D + eps);
  for (int64_t d = 0; d < D; ++d) y[d] = x[d] * r * w[d];
}

// What the attention of a block needs besides its rows: H query heads over KV key/value heads
// (H a multiple of KV: grouped-query attention), optional per-head q/k RMSNorm weights (D,), the
// rotary tables' rows (or none) and a sliding window (0: none; else a query sees itself and the
// window - 1 positions before it).
struct Heads {
  int64_t H, KV;
  const float *qn, *kn;
  float qk_eps;
  const float *cos, *sin;
  int64_t window;
};

// Causal attention of n rows, one new token each: row i is slot slots[i] at position pos[i]. Its
// key and value (normed and rotated key) go into the (slots, KV, L, D) caches at that position,
// then its query attends over the slot's keys up to pos[i]. qkv (n, (H + 2 KV) D) [q | k | v] ->
// (n, H D).
static at::Tensor attend(const at::Tensor& qkv, const at::Tensor& kc, const at::Tensor& vc,
                         const int64_t* slots, const int64_t* pos, const Heads& a) {
  const int64_t n = qkv.size(0), H = a.H, KV = a.KV, D = kc.size(3), L = kc.size(2);
  const int64_t inner = H * D, width_in = qkv.size(1), group = H / KV;
  TORCH_CHECK(width_in == (H + 2 * KV) * D, "decode_stack: qkv rows [q | k | v] of (H + 2 KV) x D");
  at::Tensor y = at::empty({n, inner}, qkv.options());
  at::Tensor q = at::empty({n, inner}, qkv.options());
  const float* in = qkv.data_ptr<float>();
  float *kp = kc.data_ptr<float>(), *vp = vc.data_ptr<float>(), *qp = q.data_ptr<float>();
  const float scale = 1.f / std::sqrt(float(D));
  std::vector<float> normed(D);
  for (int64_t i = 0; i < n; ++i) {
    const float* c = a.cos ? a.cos + pos[i] * D : nullptr;
    const float* s = a.sin ? a.sin + pos[i] * D : nullptr;
    const float* row = in + i * width_in;
    for (int64_t h = 0; h < H; ++h) {
      const float* src = row + h * D;
      if (a.qn) src = (rms_head(src, a.qn, a.qk_eps, normed.data(), D), normed.data());
      rotate(src, c, s, qp + i * inner + h * D, D);
    }
    for (int64_t g = 0; g < KV; ++g) {
      const int64_t at_ = ((slots[i] * KV + g) * L + pos[i]) * D;
      const float* src = row + inner + g * D;
      if (a.kn) src = (rms_head(src, a.kn, a.qk_eps, normed.data(), D), normed.data());
      rotate(src, c, s, kp + at_, D);
      const float* v = row + inner + KV * D + g * D;
      std::copy(v, v + D, vp + at_);
    }
  }
  // Scores of every (row, head) (a row's past its keys: -inf), softmax in one ATen call
  // (vectorized exp), then the weighted sums of the values.
  auto first = [&](int64_t i) { return a.window > 0 ? std::max<int64_t>(0, pos[i] - a.window + 1) : 0; };
  int64_t width = 0;
  for (int64_t i = 0; i < n; ++i) width = std::max(width, pos[i] + 1 - first(i));
  at::Tensor scores = at::empty({n * H, width}, qkv.options());
  float* sc = scores.data_ptr<float>();
  at::parallel_for(0, n * H, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / H, h = t % H, from = first(i), len = pos[i] + 1 - from;
      const float* keys = kp + ((slots[i] * KV + h / group) * L + from) * D;
      const float* qi = qp + i * inner + h * D;
      float* out = sc + t * width;
      for (int64_t j = 0; j < len; ++j) out[j] = dot(qi, keys + j * D, D) * scale;
      std::fill(out + len, out + width, -INFINITY);
    }
  });
  const at::Tensor probs = at::_softmax(scores, 1, false);
  const float* pr = probs.data_ptr<float>();
  float* out = y.data_ptr<float>();
  at::parallel_for(0, n * H, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / H, h = t % H, from = first(i);
      weighted_sum(pr + t * width, vp + ((slots[i] * KV + h / group) * L + from) * D,
                   pos[i] + 1 - from, D, out + i * inner + h * D);
    }
  });
  return y;
}

using opt = c10::optional<at::Tensor>;

static const float* table(const opt& t, int64_t last, int64_t D) {
  if (!t.has_value() || !t->defined()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 2 &&
                  t->size(1) == D && last < t->size(0),
              "decode_stack: rotary tables (positions, D) float32 covering every position");
  return t->data_ptr<float>();
}

// LayerNorm (or, rms, RMSNorm: no centering, no bias) of a few float32 rows (n, C) -> a new
// (n, C), and y += x in place: written out here, as a dispatched ATen call costs more than the few
// thousand values these rows hold.
static at::Tensor norm(const at::Tensor& x, const at::Tensor& w, const opt& b, double eps, bool rms) {
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  const at::Tensor bc = b.has_value() && b->defined() ? b->contiguous() : at::Tensor();
  const int64_t n = xc.size(0), C = xc.size(1);
  TORCH_CHECK(wc.scalar_type() == at::kFloat && wc.numel() == C &&
                  (!bc.defined() || (bc.scalar_type() == at::kFloat && bc.numel() == C)),
              "decode_stack: norm weight and bias float32 (C,)");
  at::Tensor y = at::empty_like(xc);
  const float *xp = xc.data_ptr<float>(), *wp = wc.data_ptr<float>();
  const float* bp = bc.defined() ? bc.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float* r = xp + i * C;
    float mean = 0.f, var = 0.f;
    if (!rms) {
      for (int64_t k = 0; k < C; ++k) mean += r[k];
      mean /= C;
    }
    for (int64_t k = 0; k < C; ++k) var += (r[k] - mean) * (r[k] - mean);
    const float rstd = 1.f / std::sqrt(var / C + float(eps));
    for (int64_t k = 0; k < C; ++k)
      yp[i * C + k] = (r[k] - mean) * rstd * wp[k] + (bp ? bp[k] : 0.f);
  }
  return y;
}

static at::Tensor add_(at::Tensor y, const at::Tensor& x) {
  const at::Tensor xc = x.contiguous();
  float* yp = y.data_ptr<float>();
  const float* xp = xc.data_ptr<float>();
  for (int64_t i = 0, e = y.numel(); i < e; ++i) yp[i] += xp[i];
  return y;
}

// A block's parameters, in the order decode_stack reads them from its list: norm 1 w, b; qkv w,
// scale, b; q norm w, k norm w (per head, or None); out w, scale, b; norm 2 w, b; up w, scale, b
// (SwiGLU: rows [gate | up]); down w, scale, b; the rotary tables cos, sin (or None).
constexpr int BLOCK_PARAMS = 20;

// A block's switches: its attention heads, norm eps (LayerNorm, or RMSNorm when rms), the
// activation (0 relu, 1 gelu, 2 gelu tanh, 3 SwiGLU), the sliding window (0: none), q/k norm eps.
struct Switches {
  int64_t heads, kv_heads;
  double eps;
  int64_t act;
  bool rms;
  int64_t window;
  double qk_eps;
};

static const at::Tensor& need(const opt& t, const char* what) {
  TORCH_CHECK(t.has_value() && t->defined(), "decode_stack: no ", what);
  return *t;
}

static const float* head_weight(const opt& t, int64_t D) {
  if (!t.has_value() || !t->defined()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == D,
              "decode_stack: q/k norm weights float32 (D,)");
  return t->data_ptr<float>();
}

// Slots and positions as int64 pointers (kept alive in sl, ps), checked against the caches; the
// highest position in `last`.
static void rows_of(const at::Tensor& slots, const at::Tensor& positions, const at::Tensor& cache,
                    int64_t n, at::Tensor& sl, at::Tensor& ps, int64_t& last) {
  sl = slots.to(at::kLong).contiguous();
  ps = positions.to(at::kLong).contiguous();
  TORCH_CHECK(sl.numel() == n && ps.numel() == n, "decode_stack: a slot and a position per row");
  const int64_t *slot = sl.data_ptr<int64_t>(), *pos = ps.data_ptr<int64_t>();
  last = 0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(slot[i] >= 0 && slot[i] < cache.size(0) && pos[i] >= 0 && pos[i] < cache.size(2),
                "decode_stack: slots and positions inside the caches");
    last = std::max(last, pos[i]);
  }
}

// One pre-norm block (parameters p[0 .. BLOCK_PARAMS)) for x (n, C): x + attn(norm1(x)), then
// that + mlp(norm2(that)), as TransformerBlock (norm_first) and LlamaBlock compute it, writing
// each row's key and value into the block's caches.
static at::Tensor block_forward(const at::Tensor& x, const opt* p, const at::Tensor& k_cache,
                                const at::Tensor& v_cache, const int64_t* slot, const int64_t* pos,
                                int64_t last, const Switches& w) {
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.size(1) == w.kv_heads && k_cache.is_contiguous() &&
                  v_cache.is_contiguous() && k_cache.sizes() == v_cache.sizes() &&
                  k_cache.scalar_type() == at::kFloat && v_cache.scalar_type() == at::kFloat &&
                  w.kv_heads >= 1 && w.heads % w.kv_heads == 0,
              "decode_stack: contiguous float32 caches (slots, kv_heads, L, D), kv_heads dividing heads");
  const int64_t D = k_cache.size(3);
  Heads a{w.heads, w.kv_heads, head_weight(p[5], D), head_weight(p[6], D), float(w.qk_eps),
          table(p[18], last, D), table(p[19], last, D), w.window};
  TORCH_CHECK((a.cos == nullptr) == (a.sin == nullptr), "decode_stack: both rotary tables or neither");
  TORCH_CHECK((a.qn == nullptr) == (a.kn == nullptr), "decode_stack: both q/k norms or neither");
  at::Tensor qkv = product(norm(x, need(p[0], "norm 1 weight"), p[1], w.eps, w.rms),
                           need(p[2], "qkv weight"), p[3], p[4]);
  at::Tensor att = attend(qkv, k_cache, v_cache, slot, pos, a);
  at::Tensor y = add_(product(att, need(p[7], "out weight"), p[8], p[9]), x);
  at::Tensor u = product(norm(y, need(p[10], "norm 2 weight"), p[11], w.eps, w.rms),
                         need(p[12], "up weight"), p[13], p[14]);
  if (w.act == 3) {  // SwiGLU: silu(gate) * up
    const int64_t F = u.size(1) / 2;
    u = at::silu(u.narrow(1, 0, F)).mul_(u.narrow(1, F, F)).contiguous();
  } else if (w.act == 0) {
    at::relu_(u);
  } else {
    at::gelu_(u, w.act == 2 ? "tanh" : "none");
  }
  return add_(product(u, need(p[15], "down weight"), p[16], p[17]), y);
}

// Every block of a stack in one call (a decode step of a whole model): x (n, C) float32, one new
// token per row; params holds BLOCK_PARAMS per block, in order; k_caches[i], v_caches[i] are block
// i's (slots, kv_heads, L, D) float32 caches; slots, positions (n,) -> the last block's output
// (n, C). Saves the Python between blocks (~40 us a block for GPT-2 small: a tenth of an int8
// step).
static at::Tensor decode_stack(const at::Tensor& x, const c10::List<opt>& params,
                               at::TensorList k_caches, at::TensorList v_caches,
                               const at::Tensor& slots, const at::Tensor& positions, int64_t heads,
                               int64_t kv_heads, double eps, int64_t act, bool rms, int64_t window,
                               double qk_eps) {
  const int64_t blocks = k_caches.size();
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "decode_stack: x (n, C) float32");
  TORCH_CHECK(blocks >= 1 && int64_t(v_caches.size()) == blocks &&
                  int64_t(params.size()) == blocks * BLOCK_PARAMS,
              "decode_stack: ", BLOCK_PARAMS, " parameters and two caches per block");
  TORCH_CHECK(k_caches[0].dim() == 4, "decode_stack: caches (slots, kv_heads, L, D)");
  TORCH_CHECK(act >= 0 && act <= 3 && window >= 0, "decode_stack: act 0-3, window >= 0");
  at::Tensor sl, ps;
  int64_t last;
  rows_of(slots, positions, k_caches[0], x.size(0), sl, ps, last);
  const Switches w{heads, kv_heads, eps, act, rms, window, qk_eps};
  std::vector<opt> p(params.begin(), params.end());
  at::Tensor y = x.contiguous();
  for (int64_t i = 0; i < blocks; ++i) {
    TORCH_CHECK(k_caches[i].sizes() == k_caches[0].sizes(), "decode_stack: caches of one size");
    y = block_forward(y, p.data() + i * BLOCK_PARAMS, k_caches[i], v_caches[i],
                      sl.data_ptr<int64_t>(), ps.data_ptr<int64_t>(), last, w);
  }
  return y;
}

// One namespace per build (LMFORGE_NS: the instruction set), so two builds load side by side.
#define LMFORGE_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define LMFORGE_LIBRARY_IMPL(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)
LMFORGE_LIBRARY(LMFORGE_NS, m) {
  m.def("small_linear(Tensor x, Tensor w, Tensor? scale, Tensor? b) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor w, Tensor scale, Tensor? b) -> Tensor");
  m.def("has_vnni() -> bool", &has_vnni);
  m.def(
      "decode_stack(Tensor x, Tensor?[] params, Tensor(a!)[] k_caches, Tensor(b!)[] v_caches, "
      "Tensor slots, Tensor positions, int heads, int kv_heads, float eps, int act, bool rms, "
      "int window, float qk_eps) -> Tensor");
}
LMFORGE_LIBRARY_IMPL(LMFORGE_NS, CPU, m) {
  m.impl("small_linear", &small_linear);
  m.impl("int8_linear", &int8_linear);
  m.impl("decode_stack", &decode_stack);
}
