// y = x W^T (+ b) for the few rows of a decode step, float32, x86-64 with AVX2 and FMA.
//
// Why not oneDNN or BLAS: on the CPUs we measured, their kernels are fast for one row (a GEMV that
// streams the weight once) but for 2-4 rows switch to GEMM paths that cost 1.2-3x the one-row time,
// although a decode step of a few rows is bound by reading the weight just the same. Here every output
// feature streams its weight row once and multiplies it with all rows of x, so 4 rows cost little
// more than 1.
//
// Batch invariance: every output element x[m] . W[n] is computed by the same instructions in the same
// order (8 lane-wise partial sums over k, then one fixed horizontal sum, then the bias), whatever the
// number of rows, the row's index, the thread that runs it or the neighbours it shares a tile with.
// So a request gets the same bits alone or beside others.
//
// Threads: ATen's parallel_for over output features, i.e. torch's own OpenMP pool and thread count.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kLanes = 8;          // floats per AVX2 register
constexpr int kRowsPerPass = 4;        // rows of x multiplied per pass over the weight
constexpr int64_t kPrefetchAhead = 256;  // floats ahead in a weight row (1 KB), one-stream tiles only
constexpr int64_t kL1Bytes = 16 * 1024;  // x rows up to this size are read from L1 for every feature
constexpr int64_t kMaxHeadDim = 256;     // rows_attention keeps one head's output in registers/stack

inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Output features n0..n0+C-1 for rows 0..R-1 of x (R x K, row-major); w is (N x K) row-major.
// R and C only choose which products share a pass; each (row, feature) sum is the same code.
template <int R, int C, bool Prefetch>
inline void tile(const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t N, int64_t n0) {
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += kLanes) {
    if (Prefetch && (k & 15) == 0)   // once per 64-byte line
      for (int c = 0; c < C; ++c) _mm_prefetch(reinterpret_cast<const char*>(w + (n0 + c) * K + k + kPrefetchAhead), _MM_HINT_T0);
    __m256 wv[C];
    for (int c = 0; c < C; ++c) wv[c] = _mm256_loadu_ps(w + (n0 + c) * K + k);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(x + r * K + k);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      float sum = horizontal_sum(acc[r][c]);
      if (bias != nullptr) sum += bias[n0 + c];
      y[r * N + n0 + c] = sum;
    }
}

template <int R, int C, bool Prefetch>
void features(const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t N,
              int64_t begin, int64_t end) {
  int64_t n = begin;
  for (; n + C <= end; n += C) tile<R, C, Prefetch>(x, K, w, bias, y, N, n);
  for (; n < end; ++n) tile<R, 1, Prefetch>(x, K, w, bias, y, N, n);
}

// Tiling per row count (measured on Zen 3, 2 cores): one row wants 4 weight streams in flight to
// keep the FMA latency hidden; 3-4 rows whose x sits in L1 do best on one stream (the prefetcher
// follows it) with a software prefetch; x too big for L1 (the MLP's down projection) is re-read
// least with 4 features per pass.
template <int R>
void rows_pass(const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t N,
               int64_t begin, int64_t end) {
  if (R == 1 || R * K * static_cast<int64_t>(sizeof(float)) > kL1Bytes) {
    features<R, 4, false>(x, K, w, bias, y, N, begin, end);
  } else {
    features<R, (R == 2 ? 2 : 1), true>(x, K, w, bias, y, N, begin, end);
  }
}

at::Tensor rows_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2, "rows_linear: x (M, K) and weight (N, K) expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, "rows_linear: float32 only");
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "rows_linear: CPU tensors only");
  TORCH_CHECK(x.size(1) == weight.size(1), "rows_linear: x has ", x.size(1), " features, weight ", weight.size(1));
  TORCH_CHECK(weight.size(1) % kLanes == 0, "rows_linear: in features must be a multiple of ", kLanes);
  TORCH_CHECK(weight.is_contiguous(), "rows_linear: weight must be contiguous");
  const at::Tensor xc = x.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1), N = weight.size(0);
  at::Tensor bc;
  const float* bias_ptr = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == N, "rows_linear: bias must be float32 (N,)");
    bc = bias->contiguous();
    bias_ptr = bc.data_ptr<float>();
  }
  at::Tensor y = at::empty({M, N}, xc.options());
  const float* xp = xc.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();

  // Threads split the output features in blocks of 4 (the widest tile), the remainder with the last.
  constexpr int64_t block = 4;
  const int64_t blocks = std::max<int64_t>(N / block, 1);
  at::parallel_for(0, blocks, 16, [&](int64_t first, int64_t last) {
    const int64_t begin = first * block;
    const int64_t end = last >= blocks ? N : last * block;
    for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
      const float* xr = xp + m0 * K;
      float* yr = yp + m0 * N;
      switch (std::min<int64_t>(kRowsPerPass, M - m0)) {
        case 4: rows_pass<4>(xr, K, wp, bias_ptr, yr, N, begin, end); break;
        case 3: rows_pass<3>(xr, K, wp, bias_ptr, yr, N, begin, end); break;
        case 2: rows_pass<2>(xr, K, wp, bias_ptr, yr, N, begin, end); break;
        default: rows_pass<1>(xr, K, wp, bias_ptr, yr, N, begin, end); break;
      }
    }
  });
  return y;
}

// One new query position per row against that row's own cached keys/values (decode attention).
// q (M, Hkv, G, D), already scaled by 1/sqrt(D); k/v (slots, Hkv, capacity, D); row m reads slot
// slots[m] at positions 0..ends[m]-1 only. Plain softmax in float32: scores, their max, exp, sum,
// then the weighted sum of values divided by the sum. Each (row, kv head) is one task computed the
// same way wherever it runs, so a row's result never depends on the other rows.
at::Tensor rows_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& slots,
                          const at::Tensor& ends) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes(), "rows_attention: q (M, Hkv, G, D), k/v (S, Hkv, C, D)");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "rows_attention: float32 only");
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous(), "rows_attention: k/v must be contiguous");
  const at::Tensor qc = q.contiguous();
  const int64_t M = qc.size(0), Hkv = qc.size(1), G = qc.size(2), D = qc.size(3);
  const int64_t capacity = k.size(2);
  TORCH_CHECK(k.size(1) == Hkv && k.size(3) == D && D % kLanes == 0 && D <= kMaxHeadDim, "rows_attention: shapes");
  TORCH_CHECK(slots.numel() == M && ends.numel() == M && slots.scalar_type() == at::kLong &&
              ends.scalar_type() == at::kLong, "rows_attention: slots/ends (M,) int64");
  const at::Tensor slots_c = slots.contiguous(), ends_c = ends.contiguous();
  const int64_t* slot_of = slots_c.data_ptr<int64_t>();
  const int64_t* end_of = ends_c.data_ptr<int64_t>();
  for (int64_t m = 0; m < M; ++m)
    TORCH_CHECK(slot_of[m] >= 0 && slot_of[m] < k.size(0) && end_of[m] >= 1 && end_of[m] <= capacity,
                "rows_attention: row ", m, " reads outside the cache");
  at::Tensor out = at::empty(qc.sizes(), qc.options());
  const float* qp = qc.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t chunks = D / kLanes;

  at::parallel_for(0, M * Hkv, 4, [&](int64_t first, int64_t last) {
    std::vector<float> scores;
    __m256 acc[kMaxHeadDim / kLanes];   // on the stack: registers' alignment kept
    for (int64_t task = first; task < last; ++task) {
      const int64_t m = task / Hkv, h = task % Hkv, length = end_of[m];
      const float* keys = kp + ((slot_of[m] * Hkv + h) * capacity) * D;
      const float* values = vp + ((slot_of[m] * Hkv + h) * capacity) * D;
      scores.resize(length);
      for (int64_t g = 0; g < G; ++g) {
        const float* query = qp + ((m * Hkv + h) * G + g) * D;
        float top = -INFINITY;
        for (int64_t t = 0; t < length; ++t) {
          __m256 dot = _mm256_setzero_ps();
          for (int64_t c = 0; c < chunks; ++c)
            dot = _mm256_fmadd_ps(_mm256_loadu_ps(query + c * kLanes), _mm256_loadu_ps(keys + t * D + c * kLanes), dot);
          scores[t] = horizontal_sum(dot);
          top = std::max(top, scores[t]);
        }
        float total = 0.0f;
        for (int64_t t = 0; t < length; ++t) {
          scores[t] = std::exp(scores[t] - top);
          total += scores[t];
        }
        for (int64_t c = 0; c < chunks; ++c) acc[c] = _mm256_setzero_ps();
        for (int64_t t = 0; t < length; ++t) {
          const __m256 weight = _mm256_set1_ps(scores[t]);
          for (int64_t c = 0; c < chunks; ++c)
            acc[c] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(values + t * D + c * kLanes), acc[c]);
        }
        const __m256 scale = _mm256_set1_ps(1.0f / total);
        float* row_out = op + ((m * Hkv + h) * G + g) * D;
        for (int64_t c = 0; c < chunks; ++c) _mm256_storeu_ps(row_out + c * kLanes, _mm256_mul_ps(acc[c], scale));
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(cosyvoice_rows, m) {
  m.def("rows_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("rows_attention(Tensor q, Tensor k, Tensor v, Tensor slots, Tensor ends) -> Tensor");
}

TORCH_LIBRARY_IMPL(cosyvoice_rows, CPU, m) {
  m.impl("rows_linear", rows_linear);
  m.impl("rows_attention", rows_attention);
}
