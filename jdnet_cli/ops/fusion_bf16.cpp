// The dense fusions' training products in bfloat16 with float32 sums (AVX512-BF16), registered as
// torch.ops.jdnet_bf16.*. Built at first use by jdnet_cli/ops/native_build.py;
// jdnet_cli/ops/fusion_bf16.py wraps them and says when training uses them.
//
// A dense fusion multiplies a tall P x k prefix of the feature buffer by a 32-wide weight, three
// times per training step (forward, the slot gradients, the weight gradient). In float32 the C++
// kernels of cpu_kernels.cpp run these near this CPU's FMA peak, and they are a quarter of a step.
// VDPBF16PS does two multiply-adds per float32 lane where an FMA does one, and bfloat16 rows halve
// what the forward and the weight gradient read from the buffer.
//
// fusion_forward: out = [LReLU](bias + [segments] @ W^T), segments bfloat16 rows (P x w, w even),
// the weight packed as (k / 2) x 32 x 2 (W's two input channels of a pair side by side, the pair
// the instruction multiplies), out float32.
//
// fusion_weight_grad: dW = g^T [segments] (32 x k float32) from g (P x 32 float32, rounded to
// bfloat16 here) and the bfloat16 segments. The instruction pairs along the summed axis, here the
// pixels, so two rows of a segment are interleaved in registers. Summed per fixed chunk of rows
// and the chunks added in order: the result does not depend on the thread count.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

constexpr int64_t OUT = 32;        // output channels: two 16-lane vectors
constexpr int64_t ROWS = 8;        // pixels per forward register block: 16 accumulators
constexpr int64_t PANEL = 192;     // pixels per forward task, a multiple of ROWS
constexpr int64_t PREFETCH = 2 * ROWS;
constexpr int64_t GRAD_PANEL = 64;  // pixels per weight-gradient panel (even)
constexpr int64_t GRAD_CHUNKS = 8;  // fixed row chunks for the dW partial sums

bool cpu_supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512bf16");
}

// Round to nearest even, as torch's float -> bfloat16 conversion (finite values).
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// acc[r] (+)= sum over pairs q in [q0, q1) of a_r[2q..2q+1] . w[q] for R pixels.
template <int R>
BF16_TARGET inline void forward_block(const uint16_t* const* a, const uint16_t* w, const float* init, int64_t init_ld,
                                      float* const* out, int64_t q0, int64_t q1, bool activate, float slope) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) {
    const float* src = init_ld ? init + r * init_ld : init;
    acc[r][0] = _mm512_loadu_ps(src);
    acc[r][1] = _mm512_loadu_ps(src + 16);
  }
  for (int64_t q = q0; q < q1; ++q) {
    const __m512i w0 = _mm512_loadu_si512(w + q * 2 * OUT), w1 = _mm512_loadu_si512(w + q * 2 * OUT + OUT);
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, a[r] + 2 * q, sizeof pair);
      const __m512i x = _mm512_set1_epi32(pair);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)x, (__m512bh)w0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)x, (__m512bh)w1);
    }
  }
  const __m512 sl = _mm512_set1_ps(slope), zero = _mm512_setzero_ps();
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 2; ++j) {
      __m512 v = acc[r][j];
      if (activate) v = _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, sl);
      _mm512_storeu_ps(out[r] + 16 * j, v);
    }
}

struct Segments {
  std::vector<const uint16_t*> data;
  std::vector<int64_t> stride, width;
  int64_t rows = 0, k = 0;
};

Segments check_segments(const char* op, at::TensorList segments, int64_t multiple) {
  TORCH_CHECK(!segments.empty() && segments.size() <= 64, op, ": 1 to 64 segments");
  Segments s;
  s.rows = segments[0].size(0);
  for (const at::Tensor& t : segments) {
    TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.dim() == 2 && t.size(0) == s.rows && t.stride(1) == 1 &&
                    t.size(1) >= 1 && t.size(1) % multiple == 0,
                op, ": segments must be P x w bfloat16 rows with unit column stride, w a multiple of ", multiple);
    s.data.push_back(reinterpret_cast<const uint16_t*>(t.const_data_ptr()));
    s.stride.push_back(t.stride(0));
    s.width.push_back(t.size(1));
    s.k += t.size(1);
  }
  return s;
}

BF16_TARGET void forward_panel(const Segments& s, const uint16_t* w, const float* bias, float* dst, int64_t p0,
                               int64_t p1, bool activate, float slope) {
  int64_t qoff = 0;  // pairs of weight rows before this segment
  const int64_t n_seg = int64_t(s.data.size());
  for (int64_t g = 0; g < n_seg; ++g) {
    const uint16_t* a = s.data[g];
    const int64_t lda = s.stride[g], pairs = s.width[g] / 2;
    const bool first = g == 0, last = g == n_seg - 1;
    const uint16_t* wg = w + qoff * 2 * OUT;
    for (int64_t r0 = p0; r0 < p1; r0 += ROWS) {
      const int64_t count = std::min(ROWS, p1 - r0);
      const uint16_t* src[ROWS];
      float* o[ROWS];
      for (int64_t r = 0; r < count; ++r) {
        src[r] = a + (r0 + r) * lda;
        o[r] = dst + (r0 + r) * OUT;
      }
      if (r0 + PREFETCH + ROWS <= p1)
        for (int64_t r = 0; r < ROWS; ++r)
          for (int64_t c = 0; c < s.width[g]; c += 32) __builtin_prefetch(a + (r0 + PREFETCH + r) * lda + c);
      const float* init = first ? bias : o[0];
      const int64_t init_ld = first ? 0 : OUT;
      const bool act = last && activate;
      if (count == ROWS)
        forward_block<ROWS>(src, wg, init, init_ld, o, 0, pairs, act, slope);
      else
        for (int64_t r = 0; r < count; ++r)
          forward_block<1>(src + r, wg, first ? bias : o[r], 0, o + r, 0, pairs, act, slope);
    }
    qoff += pairs;
  }
}

at::Tensor fusion_forward(at::TensorList segments, const at::Tensor& weight, const at::Tensor& bias, double slope,
                          bool activate) {
  TORCH_CHECK(cpu_supported(), "fusion_forward: this CPU lacks AVX512-BF16");
  const Segments s = check_segments("fusion_forward", segments, 2);
  TORCH_CHECK(weight.scalar_type() == at::kBFloat16 && weight.is_contiguous() && weight.dim() == 3 &&
                  weight.size(0) * 2 == s.k && weight.size(1) == OUT && weight.size(2) == 2,
              "fusion_forward: weight must be packed as (sum of widths / 2) x 32 x 2 bfloat16");
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == OUT,
              "fusion_forward: bias must be 32 float32");
  TORCH_CHECK(slope >= 0.0 && slope <= 1.0, "fusion_forward: slope must lie in [0, 1]");
  at::Tensor out = at::empty({s.rows, OUT}, segments[0].options().dtype(at::kFloat));
  const uint16_t* w = reinterpret_cast<const uint16_t*>(weight.const_data_ptr());
  const float* b = bias.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  const int64_t panels = (s.rows + PANEL - 1) / PANEL;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t panel = begin; panel < end; ++panel)
      forward_panel(s, w, b, dst, panel * PANEL, std::min(s.rows, (panel + 1) * PANEL), activate, float(slope));
  });
  return out;
}

// Two rows' 16 channels interleaved: lane i holds (a[i], b[i]).
BF16_TARGET inline __m512i interleave_rows(const uint16_t* a, const uint16_t* b) {
  const __m512i idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37,
                                       5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i va = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a)));
  const __m512i vb = b ? _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)))
                       : _mm512_setzero_si512();
  return _mm512_permutex2var_epi16(va, idx, vb);
}

// dw[o, c] += sum over the panel's pixels of g[p, o] a[p, c], for one segment. `gp` holds the
// panel's g as bfloat16 pixel pairs, (pairs x 32) 32-bit words; an odd last pixel pairs with zero.
BF16_TARGET void weight_grad_panel(const uint16_t* a, int64_t lda, int64_t rows, const int32_t* gp, float* dw,
                                   int64_t ldw, int64_t width) {
  const int64_t pairs = (rows + 1) / 2;
  for (int64_t j = 0; j < width; j += 16) {
    for (int64_t half = 0; half < 2; ++half) {
      __m512 acc[16];
      for (int o = 0; o < 16; ++o) acc[o] = _mm512_loadu_ps(dw + (half * 16 + o) * ldw + j);
      for (int64_t q = 0; q < pairs; ++q) {
        const uint16_t* r0 = a + 2 * q * lda + j;
        const __m512i x = interleave_rows(r0, 2 * q + 1 < rows ? r0 + lda : nullptr);
        const int32_t* gq = gp + q * OUT + half * 16;
        for (int o = 0; o < 16; ++o)
          acc[o] = _mm512_dpbf16_ps(acc[o], (__m512bh)x, (__m512bh)_mm512_set1_epi32(gq[o]));
      }
      for (int o = 0; o < 16; ++o) _mm512_storeu_ps(dw + (half * 16 + o) * ldw + j, acc[o]);
    }
  }
}

at::Tensor fusion_weight_grad(const at::Tensor& grad, at::TensorList segments) {
  TORCH_CHECK(cpu_supported(), "fusion_weight_grad: this CPU lacks AVX512-BF16");
  const Segments s = check_segments("fusion_weight_grad", segments, 16);
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.dim() == 2 && grad.size(0) == s.rows && grad.size(1) == OUT &&
                  grad.is_contiguous(),
              "fusion_weight_grad: grad must be a contiguous P x 32 float32 tensor");
  at::Tensor partials = at::zeros({GRAD_CHUNKS, OUT, s.k}, grad.options());
  const float* g = grad.const_data_ptr<float>();
  float* part = partials.mutable_data_ptr<float>();
  // Even chunk starts, so that pixel pairs never straddle two chunks.
  const int64_t chunk_rows = ((s.rows + GRAD_CHUNKS - 1) / GRAD_CHUNKS + 1) / 2 * 2;
  at::parallel_for(0, GRAD_CHUNKS, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> gp(GRAD_PANEL / 2 * OUT);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      float* dw = part + chunk * OUT * s.k;
      const int64_t c0 = chunk * chunk_rows, c1 = std::min(s.rows, c0 + chunk_rows);
      for (int64_t p0 = c0; p0 < c1; p0 += GRAD_PANEL) {
        const int64_t rows = std::min(GRAD_PANEL, c1 - p0);
        for (int64_t q = 0; q < (rows + 1) / 2; ++q)
          for (int64_t o = 0; o < OUT; ++o) {
            const uint32_t lo = to_bf16(g[(p0 + 2 * q) * OUT + o]);
            const uint32_t hi = 2 * q + 1 < rows ? to_bf16(g[(p0 + 2 * q + 1) * OUT + o]) : 0u;
            gp[q * OUT + o] = int32_t(lo | (hi << 16));
          }
        int64_t koff = 0;
        for (size_t seg = 0; seg < s.data.size(); ++seg) {
          weight_grad_panel(s.data[seg] + p0 * s.stride[seg], s.stride[seg], rows, gp.data(), dw + koff, s.k,
                            s.width[seg]);
          koff += s.width[seg];
        }
      }
    }
  });
  return partials.sum(0);
}

}  // namespace

TORCH_LIBRARY(jdnet_bf16, m) {
  m.def("cpu_supported() -> bool", &cpu_supported);
  m.def("fusion_forward(Tensor[] segments, Tensor weight_pairs, Tensor bias, float slope, bool activate) -> Tensor");
  m.def("fusion_weight_grad(Tensor grad, Tensor[] segments) -> Tensor");
}

TORCH_LIBRARY_IMPL(jdnet_bf16, CPU, m) {
  m.impl("fusion_forward", &fusion_forward);
  m.impl("fusion_weight_grad", &fusion_weight_grad);
}
