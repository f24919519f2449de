// JDNet's CPU inference as eight fused float32 kernels (nine with training's fusion backward), registered as torch.ops.jdnet.*: the SAM
// attention (alone, or with its block's BatchNorms and projections), the 1x1 fusions, and the
// upsample-and-combine steps; and the dense fusions' backward for training. Built at first use by jdnet_cli/ops/native_build.py;
// jdnet_cli/ops/cpu_kernels.py wraps them.
//
// pairwise_attention: SAM's attention (kernel 7), one pass per strip of pixels. Inputs are what
// attention_banded.padded_planes makes: planar planes, the neighbour and value planes reflect-padded
// by 3. Each task takes one image row and walks it in strips of STRIP pixels; a strip's 49 logits
// live in a small stack array (12.5 KiB), so logits, softmax weights and neighbourhoods never
// reach memory. Inner loops run over consecutive pixels of a row and vectorise.
//
// pairwise_attention_bn_leaky: the same attention with the SAM block's second BatchNorm and
// LReLU applied as it writes, channels-last.
//
// attention_inputs: the attention's input planes straight from the SAM block's channels-last
// input (BatchNorm + LReLU, the three 1x1 projections, reflect padding) in one pass.
//
// dense_fusion: LReLU(bias + [segments] @ weight_t) for the dense connections' 1x1 fusions,
// reading the channel prefix of the feature buffer (given as row segments) in place. MKL's sgemm
// runs this tall, 32-wide product at about half the speed oneDNN reaches on a 3x3 conv here, and
// cannot take the activation; a register-blocked loop does both.
//
// dense_fusion_backward: training's backward of dense_fusion (input and weight gradients in one
// pass over each panel of pixels).
//
// fuse_segments: the same product over inputs split into channel segments (a concatenation
// that is never built), plus an optional residual, written into a given (strided) output or
// split over two 16-channel outputs.
//
// affine_leaky: an eval-mode BatchNorm and the LReLU after it in one pass.
//
// scale_aggregate, calibration_gate: the nearest-upsample-and-combine steps of the scale
// aggregation and of the SC-conv, one pass over the full-resolution map instead of one per
// upsample, add and activation. Channels-last maps; the row/column index tables come from
// F.interpolate itself, so the nearest rule is exactly PyTorch's.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace {

// Subnormal floats flushed to zero while a kernel's task runs, then the caller's mode restored:
// softmax weights near exp(-87) times small values make subnormal products, and those cost
// microcode assists on many x86 cores. torch's own ops keep IEEE behaviour.
struct FlushSubnormals {
#if defined(__SSE__)
  unsigned saved = _mm_getcsr();
  FlushSubnormals() { _mm_setcsr(saved | 0x8040); }  // FTZ | DAZ
  ~FlushSubnormals() { _mm_setcsr(saved); }
#endif
};

constexpr int64_t KERNEL = 7;
constexpr int64_t TAPS = KERNEL * KERNEL;
constexpr int64_t RELATIONS = 4;  // two feature relations, two position relations
constexpr int64_t STRIP = 64;

// l (+)= v * LReLU(a - b) over n consecutive pixels.
inline void relation_term(float* __restrict l, const float* __restrict a, const float* __restrict b,
                          float v, float slope, bool first, int64_t n) {
  if (first) {
    for (int64_t x = 0; x < n; ++x) {
      const float r = a[x] - b[x];
      l[x] = v * std::max(r, r * slope);
    }
  } else {
    for (int64_t x = 0; x < n; ++x) {
      const float r = a[x] - b[x];
      l[x] += v * std::max(r, r * slope);
    }
  }
}

// acc += a * b over n consecutive pixels.
inline void multiply_add(float* __restrict acc, const float* __restrict a, const float* __restrict b, int64_t n) {
  for (int64_t x = 0; x < n; ++x) acc[x] += a[x] * b[x];
}

struct Planes {
  const float* centre;      // N x 4 x H x W
  const float* neighbours;  // N x 4 x (H+6) x (W+6)
  const float* values;      // N x C x (H+6) x (W+6)
  float* out;               // N x C x H x W, planar or channels-last (see nhwc)
  int64_t h, w, ch;
  const float* v;           // the relation's 4 -> 1 projection
  float slope;
  // Optional epilogue LReLU(scale_k * out + shift_k) (the SAM's eval BatchNorm and activation),
  // and channels-last output so the 1x1 conv after it reads pixel rows without a transpose.
  const float* scale = nullptr;
  const float* shift = nullptr;
  bool nhwc = false;
  const float* centre_row(int64_t n, int64_t c, int64_t y) const { return centre + ((n * RELATIONS + c) * h + y) * w; }
  const float* neighbour_row(int64_t n, int64_t c, int64_t y) const { return neighbours + ((n * RELATIONS + c) * (h + KERNEL - 1) + y) * (w + KERNEL - 1); }
  const float* value_row(int64_t n, int64_t k, int64_t y) const { return values + ((n * ch + k) * (h + KERNEL - 1) + y) * (w + KERNEL - 1); }
  // Where output channel k of pixel (y, x0) goes, and the step from one pixel to the next.
  float* out_at(int64_t n, int64_t k, int64_t y, int64_t x0) const {
    return nhwc ? out + ((n * h + y) * w + x0) * ch + k : out + ((n * ch + k) * h + y) * w + x0;
  }
  int64_t out_step() const { return nhwc ? ch : 1; }
  float finish(float a, int64_t k) const {
    if (!scale) return a;
    const float r = a * scale[k] + shift[k];
    return std::max(r, r * slope);
  }
};

struct Scratch {
  alignas(64) float logit[TAPS * STRIP];
  alignas(64) float peak[STRIP];
  alignas(64) float total[STRIP];
  alignas(64) float acc[STRIP];
};

// Softmax over the 49 logits of each pixel, in place; leaves 1 / sum in s.total.
inline void softmax_taps(Scratch& s, int64_t tw) {
  for (int64_t x = 0; x < tw; ++x) s.peak[x] = s.logit[x];
  for (int64_t t = 1; t < TAPS; ++t)
    for (int64_t x = 0; x < tw; ++x) s.peak[x] = std::max(s.peak[x], s.logit[t * STRIP + x]);
  for (int64_t x = 0; x < tw; ++x) s.total[x] = 0.f;
  for (int64_t t = 0; t < TAPS; ++t) {
    float* __restrict l = s.logit + t * STRIP;
    for (int64_t x = 0; x < tw; ++x) {
      const float e = std::exp(l[x] - s.peak[x]);
      l[x] = e;
      s.total[x] += e;
    }
  }
  for (int64_t x = 0; x < tw; ++x) s.total[x] = 1.f / s.total[x];
}

// Any strip width up to STRIP, plain loops (images narrower than one strip).
void strip_any_width(const Planes& p, Scratch& s, int64_t n, int64_t y, int64_t x0, int64_t tw) {
  // logit[t] = sum_c v_c * LReLU(centre_c - neighbour_c at offset t); the logits' bias cancels in
  // the softmax, so it is left out.
  for (int64_t t = 0; t < TAPS; ++t) {
    const int64_t dy = t / KERNEL, dx = t % KERNEL;
    for (int64_t c = 0; c < RELATIONS; ++c)
      relation_term(s.logit + t * STRIP, p.centre_row(n, c, y) + x0, p.neighbour_row(n, c, y + dy) + x0 + dx,
                    p.v[c], p.slope, c == 0, tw);
  }
  softmax_taps(s, tw);
  // One weight map serves every value channel (share 8).
  for (int64_t k = 0; k < p.ch; ++k) {
    for (int64_t x = 0; x < tw; ++x) s.acc[x] = 0.f;
    for (int64_t t = 0; t < TAPS; ++t)
      multiply_add(s.acc, s.logit + t * STRIP, p.value_row(n, k, y + t / KERNEL) + x0 + t % KERNEL, tw);
    float* o = p.out_at(n, k, y, x0);
    const int64_t step = p.out_step();
    for (int64_t x = 0; x < tw; ++x) o[x * step] = p.finish(s.acc[x] * s.total[x], k);
  }
}

// Eight floats; GCC lowers it to AVX where built with it and to SSE pairs otherwise.
typedef float vec8 __attribute__((vector_size(32)));
constexpr int64_t LANES = 8;
constexpr int64_t VECS = STRIP / LANES;

inline vec8 load8(const float* p) {
  vec8 r;
  std::memcpy(&r, p, sizeof r);
  return r;
}

inline void store8(float* p, vec8 v) { std::memcpy(p, &v, sizeof v); }

inline vec8 leaky(vec8 r, vec8 slope) {
  const vec8 scaled = r * slope;
  return r > scaled ? r : scaled;
}

// Output channel k of 8 pixels from (y, x): the epilogue, then planar or channels-last.
inline void write_vector(const Planes& p, vec8 a, int64_t n, int64_t k, int64_t y, int64_t x) {
  if (p.scale) a = leaky(a * p.scale[k] + p.shift[k], vec8{} + p.slope);
  float* o = p.out_at(n, k, y, x);
  if (!p.nhwc) {
    store8(o, a);
  } else {
    // Channels-last: this channel's value lands every ch floats (8 scalar stores per vector,
    // against 49 multiply-adds per vector before it).
    for (int64_t i = 0; i < LANES; ++i) o[i * p.ch] = a[i];
  }
}

typedef int32_t ivec8 __attribute__((vector_size(32)));

// exp(x) for x <= 0 (logits minus their maximum), inline: glibc's vector expf is a call per
// vector with its own range checks, ~15% of the attention's time. Cody-Waite reduction and
// Cephes' degree-6 polynomial: within 4.5 ulp of exp on every float in [-87, 0] (checked
// exhaustively against double exp); below -87 (weights under 2^-125 next to the maximum's 1) it
// returns exp(-87).
inline vec8 exp_nonpositive(vec8 x) {
  const vec8 floor_x = vec8{} - 87.f;
  x = x > floor_x ? x : floor_x;
  // Truncation of a negative number rounds up: n = ceil(x / ln2 - 0.5), so |r| <= ln2 / 2.
  const ivec8 n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, ivec8);
  const vec8 nf = __builtin_convertvector(n, vec8);
  vec8 r = x - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  vec8 poly = vec8{} + 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.f;
  const ivec8 bits = (n + 127) << 23;  // 2^n; n >= -126 keeps it a normal number
  vec8 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return poly * scale;
}

// Exactly STRIP pixels with explicit vectors: logits with their running maximum, the softmax
// numerators and their sum per 8-pixel vector; then the weighted sums over 49 taps.
void strip_full(const Planes& p, Scratch& s, int64_t n, int64_t y, int64_t x0) {
  const vec8 slope = vec8{} + p.slope;
  const vec8 v0 = vec8{} + p.v[0], v1 = vec8{} + p.v[1], v2 = vec8{} + p.v[2], v3 = vec8{} + p.v[3];
  // Pixel vector outer, taps inner: the four centre vectors and the running maximum stay in
  // registers across the 49 taps.
  for (int64_t j = 0; j < STRIP; j += LANES) {
    const vec8 a0 = load8(p.centre_row(n, 0, y) + x0 + j), a1 = load8(p.centre_row(n, 1, y) + x0 + j);
    const vec8 a2 = load8(p.centre_row(n, 2, y) + x0 + j), a3 = load8(p.centre_row(n, 3, y) + x0 + j);
    vec8 peak = vec8{} - 3.0e38f;
    for (int64_t dy = 0; dy < KERNEL; ++dy) {
      const float* b0 = p.neighbour_row(n, 0, y + dy) + x0 + j;
      const float* b1 = p.neighbour_row(n, 1, y + dy) + x0 + j;
      const float* b2 = p.neighbour_row(n, 2, y + dy) + x0 + j;
      const float* b3 = p.neighbour_row(n, 3, y + dy) + x0 + j;
      float* lrow = s.logit + dy * KERNEL * STRIP + j;
      for (int64_t dx = 0; dx < KERNEL; ++dx) {
        const vec8 l = v0 * leaky(a0 - load8(b0 + dx), slope) + v1 * leaky(a1 - load8(b1 + dx), slope) +
                       v2 * leaky(a2 - load8(b2 + dx), slope) + v3 * leaky(a3 - load8(b3 + dx), slope);
        store8(lrow + dx * STRIP, l);
        peak = peak > l ? peak : l;
      }
    }
    // Softmax numerators in place; the sum stays in a register.
    vec8 total = vec8{};
    for (int64_t t = 0; t < TAPS; ++t) {
      const vec8 e = exp_nonpositive(load8(s.logit + t * STRIP + j) - peak);
      store8(s.logit + t * STRIP + j, e);
      total += e;
    }
    store8(s.total + j, 1.f / total);
  }
  // Two value channels over half a strip at a time: eight independent accumulators, and each
  // tap's weights loaded once for both channels. One accumulator chained through all 49
  // multiply-adds waited on the FMA latency: 4 cycles per tap, ~45% of this kernel's time.
  constexpr int64_t BLOCK = 4;  // vectors per accumulator row
  for (int64_t k = 0; k < p.ch; k += 2) {
    // An odd last channel is computed twice and stored once.
    const int64_t k1 = std::min(k + 1, p.ch - 1);
    const float* rows0[KERNEL];
    const float* rows1[KERNEL];
    for (int64_t dy = 0; dy < KERNEL; ++dy) {
      rows0[dy] = p.value_row(n, k, y + dy) + x0;
      rows1[dy] = p.value_row(n, k1, y + dy) + x0;
    }
    for (int64_t j0 = 0; j0 < STRIP; j0 += BLOCK * LANES) {
      vec8 acc0[BLOCK] = {}, acc1[BLOCK] = {};
      for (int64_t dy = 0; dy < KERNEL; ++dy) {
        const float* lw = s.logit + dy * KERNEL * STRIP + j0;
        const float* q0 = rows0[dy] + j0;
        const float* q1 = rows1[dy] + j0;
        for (int64_t dx = 0; dx < KERNEL; ++dx)
          for (int64_t i = 0; i < BLOCK; ++i) {
            const vec8 wgt = load8(lw + dx * STRIP + i * LANES);
            acc0[i] += wgt * load8(q0 + dx + i * LANES);
            acc1[i] += wgt * load8(q1 + dx + i * LANES);
          }
      }
      for (int64_t i = 0; i < BLOCK; ++i) {
        const int64_t j = j0 + i * LANES;
        write_vector(p, acc0[i] * load8(s.total + j), n, k, y, x0 + j);
        if (k1 != k) write_vector(p, acc1[i] * load8(s.total + j), n, k1, y, x0 + j);
      }
    }
  }
}

// A per-channel affine (an eval BatchNorm folded to scale and shift): one float32 each per channel.
void check_channel_affine(const char* op, const at::Tensor& scale, const at::Tensor& shift, int64_t channels) {
  TORCH_CHECK(scale.scalar_type() == at::kFloat && shift.scalar_type() == at::kFloat && scale.is_contiguous() &&
                  shift.is_contiguous() && scale.numel() == channels && shift.numel() == channels,
              op, ": scale and shift must be float32 with one value per channel");
}

at::Tensor attention_impl(
    const at::Tensor& centre, const at::Tensor& neighbours, const at::Tensor& values,
    at::ArrayRef<double> v, double slope, const at::Tensor* scale, const at::Tensor* shift) {
  TORCH_CHECK(centre.scalar_type() == at::kFloat && neighbours.scalar_type() == at::kFloat &&
                  values.scalar_type() == at::kFloat,
              "pairwise_attention: float32 only");
  TORCH_CHECK(centre.is_contiguous() && neighbours.is_contiguous() && values.is_contiguous(),
              "pairwise_attention: contiguous planar inputs only");
  TORCH_CHECK(centre.dim() == 4 && centre.size(1) == RELATIONS && v.size() == RELATIONS,
              "pairwise_attention: centre must be N x 4 x H x W and v 4 values");
  // LReLU(r) == max(r, slope * r) holds for slopes in [0, 1] only.
  TORCH_CHECK(slope >= 0.0 && slope <= 1.0, "pairwise_attention: slope must lie in [0, 1]");
  const int64_t n_img = centre.size(0), h = centre.size(2), w = centre.size(3);
  const int64_t hp = h + KERNEL - 1, wp = w + KERNEL - 1;
  const int64_t ch = values.size(1);
  TORCH_CHECK(neighbours.sizes() == at::IntArrayRef({n_img, RELATIONS, hp, wp}) &&
                  values.size(0) == n_img && values.size(2) == hp && values.size(3) == wp,
              "pairwise_attention: padded planes must be 3 larger on every side");

  const bool nhwc = scale != nullptr;
  if (nhwc)
    check_channel_affine("pairwise_attention", *scale, *shift, ch);
  at::Tensor out = nhwc ? at::empty({n_img, ch, h, w}, centre.options().memory_format(at::MemoryFormat::ChannelsLast))
                        : at::empty({n_img, ch, h, w}, centre.options());
  const float* cen = centre.const_data_ptr<float>();
  const float* nb = neighbours.const_data_ptr<float>();
  const float* val = values.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  const float vc[RELATIONS] = {float(v[0]), float(v[1]), float(v[2]), float(v[3])};
  const float s = float(slope);

  Planes planes{cen, nb, val, dst, h, w, ch, vc, s};
  if (nhwc) {
    planes.scale = scale->const_data_ptr<float>();
    planes.shift = shift->const_data_ptr<float>();
    planes.nhwc = true;
  }
  at::parallel_for(0, n_img * h, 1, [&](int64_t begin, int64_t end) {
    const FlushSubnormals flush;
    Scratch scratch;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / h, y = row % h;
      if (w < STRIP) {
        strip_any_width(planes, scratch, n, y, 0, w);
        continue;
      }
      // Whole strips only; a ragged end is covered by one more strip flush with the row's end,
      // which recomputes a few pixels with identical results instead of a slower tail loop.
      for (int64_t x0 = 0;; x0 += STRIP) {
        const int64_t start = std::min(x0, w - STRIP);
        strip_full(planes, scratch, n, y, start);
        if (start + STRIP >= w) break;
      }
    }
  });
  return out;
}

at::Tensor pairwise_attention(const at::Tensor& centre, const at::Tensor& neighbours, const at::Tensor& values,
                              at::ArrayRef<double> v, double slope) {
  return attention_impl(centre, neighbours, values, v, slope, nullptr, nullptr);
}

// LReLU(scale * attention + shift), channels-last: the SAM's attention, BatchNorm and activation.
at::Tensor pairwise_attention_bn_leaky(const at::Tensor& centre, const at::Tensor& neighbours, const at::Tensor& values,
                                       at::ArrayRef<double> v, double slope, const at::Tensor& scale,
                                       const at::Tensor& shift) {
  return attention_impl(centre, neighbours, values, v, slope, &scale, &shift);
}

// ---- attention_inputs -------------------------------------------------------------------------

// The attention's input planes straight from the SAM block's channels-last input x:
//   pre = LReLU(scale * x + shift)             (eval BatchNorm + activation)
//   [x1 | x2 | x3] = pre @ weight_t + bias     (conv1, conv2, conv3: 2 + 2 + ch outputs)
//   centre = [x1, p], neighbours = reflect_pad3([x2, p]), values = reflect_pad3(x3), all planar.
// One pass over x instead of BN, LReLU, three small convs, two concatenations, two reflect pads
// and the layout changes between them. weight_t and bias are zero-padded to 16 columns, so each
// pixel's outputs are two vectors.
constexpr int64_t PROJ = 2 * LANES;

std::vector<at::Tensor> attention_inputs(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                                         const at::Tensor& weight_t, const at::Tensor& bias, int64_t ch,
                                         const at::Tensor& p, double slope) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                  x.size(1) % LANES == 0 && x.size(1) <= 256,
              "attention_inputs: x must be a float32 channels-last map, channels a multiple of 8 up to 256");
  const int64_t n_img = x.size(0), c_in = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t pad = KERNEL / 2, hp = h + 2 * pad, wp = w + 2 * pad;
  // Same limit as F.pad's reflect mode: the pad must be smaller than the side.
  TORCH_CHECK(h > pad && w > pad, "attention_inputs: reflect padding needs at least 4 rows and columns");
  check_channel_affine("attention_inputs", scale, shift, c_in);
  TORCH_CHECK(ch >= 1 && RELATIONS + ch <= PROJ, "attention_inputs: 1 to 12 value channels");
  TORCH_CHECK(weight_t.scalar_type() == at::kFloat && weight_t.is_contiguous() && weight_t.dim() == 2 &&
                  weight_t.size(0) == c_in && weight_t.size(1) == PROJ && bias.scalar_type() == at::kFloat &&
                  bias.is_contiguous() && bias.numel() == PROJ,
              "attention_inputs: weight_t must be C_in x 16 and bias 16 (zero-padded)");
  TORCH_CHECK(p.scalar_type() == at::kFloat && p.is_contiguous() && p.dim() == 4 && p.size(1) == 2 &&
                  (p.size(0) == 1 || p.size(0) == n_img) && p.size(2) == h && p.size(3) == w,
              "attention_inputs: p must be 1 or N x 2 x H x W float32, planar");
  TORCH_CHECK(slope >= 0.0 && slope <= 1.0, "attention_inputs: slope must lie in [0, 1]");
  auto opts = x.options();
  at::Tensor centre = at::empty({n_img, RELATIONS, h, w}, opts);
  at::Tensor neighbours = at::empty({n_img, RELATIONS, hp, wp}, opts);
  at::Tensor values = at::empty({n_img, ch, hp, wp}, opts);
  const float* src = x.const_data_ptr<float>();
  const float* sc = scale.const_data_ptr<float>();
  const float* sh = shift.const_data_ptr<float>();
  const float* wt = weight_t.const_data_ptr<float>();
  const float* bs = bias.const_data_ptr<float>();
  const float* pp = p.const_data_ptr<float>();
  float* cen = centre.mutable_data_ptr<float>();
  float* nb = neighbours.mutable_data_ptr<float>();
  float* val = values.mutable_data_ptr<float>();
  const int64_t p_batch = p.size(0), planes = RELATIONS + ch;
  // Padded plane q of image n (q < 4: neighbours, else values), padded row yp.
  auto padded_row = [&](int64_t n, int64_t q, int64_t yp) -> float* {
    return q < RELATIONS ? nb + ((n * RELATIONS + q) * hp + yp) * wp : val + ((n * ch + q - RELATIONS) * hp + yp) * wp;
  };
  const vec8 sl = vec8{} + float(slope);
  at::parallel_for(0, n_img * h, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float pre[256];
    alignas(64) float res[PROJ];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / h, y = row % h;
      const float* xr = src + row * w * c_in;
      const float* pos0 = pp + ((n % p_batch) * 2 * h + y) * w;
      const float* pos1 = pos0 + h * w;
      float* c0 = cen + (n * RELATIONS * h + y) * w;
      float* dst[PROJ];
      for (int64_t q = 0; q < planes; ++q) dst[q] = padded_row(n, q, y + pad) + pad;
      for (int64_t xx = 0; xx < w; ++xx) {
        const float* px = xr + xx * c_in;
        vec8 a0 = load8(bs), a1 = load8(bs + LANES);
        for (int64_t c0i = 0; c0i < c_in; c0i += LANES)
          store8(pre + c0i, leaky(load8(px + c0i) * load8(sc + c0i) + load8(sh + c0i), sl));
        for (int64_t c = 0; c < c_in; ++c) {
          const vec8 b = vec8{} + pre[c];
          a0 += b * load8(wt + c * PROJ);
          a1 += b * load8(wt + c * PROJ + LANES);
        }
        store8(res, a0);
        store8(res + LANES, a1);
        c0[xx] = res[0];
        c0[h * w + xx] = res[1];
        c0[2 * h * w + xx] = pos0[xx];
        c0[3 * h * w + xx] = pos1[xx];
        dst[0][xx] = res[2];
        dst[1][xx] = res[3];
        dst[2][xx] = pos0[xx];
        dst[3][xx] = pos1[xx];
        for (int64_t q = RELATIONS; q < planes; ++q) dst[q][xx] = res[q];
      }
      // The row's left and right borders: column -j is column j.
      for (int64_t q = 0; q < planes; ++q)
        for (int64_t j = 1; j <= pad; ++j) {
          dst[q][-j] = dst[q][j];
          dst[q][w - 1 + j] = dst[q][w - 1 - j];
        }
    }
  });
  // Then the top and bottom rows (row -j is row j), whole padded rows so the corners follow.
  for (int64_t n = 0; n < n_img; ++n)
    for (int64_t q = 0; q < planes; ++q)
      for (int64_t j = 1; j <= pad; ++j) {
        std::memcpy(padded_row(n, q, pad - j), padded_row(n, q, pad + j), wp * sizeof(float));
        std::memcpy(padded_row(n, q, pad + h - 1 + j), padded_row(n, q, pad + h - 1 - j), wp * sizeof(float));
      }
  return {centre, neighbours, values};
}

// ---- dense_fusion ----------------------------------------------------------------------------

constexpr int64_t FUSION_OUT = 32;    // output channels the register block holds (4 vectors)
constexpr int64_t FUSION_ROWS = 3;    // pixels per register block: 12 accumulators + 4 weights
constexpr int64_t FUSION_PANEL = 192;  // pixels per task: a multiple of FUSION_ROWS
// Input channels per pass: 16 KiB of weights, half of L1. The model's slot pairs are 64 wide, so
// this splits only wider segments.
constexpr int64_t FUSION_DEPTH = 128;
// Each block prefetches the rows of the block two ahead. With one 1056-wide buffer (rows 4 KiB
// apart) this took k = 64 from 17.9 to 9.7 ms at 481x321; with the 256-byte rows of slot pairs
// it still helps at most prefix lengths (e.g. 5 slots: 141-158 vs 109-125 GFLOP/s without).
constexpr int64_t FUSION_PREFETCH = 2 * FUSION_ROWS;

// acc[r] += sum_{k0 <= kk < k1} a_r[kk] * wt[kk, :] for R pixels, all 32 outputs in registers.
template <int R>
inline void accumulate(vec8 (&acc)[R][4], const float* const* a, const float* wt, int64_t k0, int64_t k1) {
  for (int64_t kk = k0; kk < k1; ++kk) {
    const float* wrow = wt + kk * FUSION_OUT;
    const vec8 w0 = load8(wrow), w1 = load8(wrow + 8), w2 = load8(wrow + 16), w3 = load8(wrow + 24);
    for (int r = 0; r < R; ++r) {
      const vec8 x = vec8{} + a[r][kk];
      acc[r][0] += x * w0;
      acc[r][1] += x * w1;
      acc[r][2] += x * w2;
      acc[r][3] += x * w3;
    }
  }
}

// out[r, :] (+)= sum_k a_r[k] * wt[k, :] for R pixels over one depth chunk; the first chunk
// starts from the bias, the last applies the LReLU.
template <int R>
inline void fusion_block(const float* const* a, const float* wt, const float* bias, float* const* out, int64_t k0,
                         int64_t k1, bool first, bool last, float slope) {
  vec8 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = load8((first ? bias : out[r]) + j * LANES);
  accumulate<R>(acc, a, wt, k0, k1);
  const vec8 sl = vec8{} + slope;
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) store8(out[r] + j * LANES, last ? leaky(acc[r][j], sl) : acc[r][j]);
}

// The feature buffer's channel prefix as a list of row segments (P x width each, any row
// stride): the slot groups of the inference buffer, the last one possibly a column prefix.
at::Tensor dense_fusion(at::TensorList segments, const at::Tensor& weight_t, const at::Tensor& bias, double slope) {
  TORCH_CHECK(!segments.empty() && segments.size() <= 64, "dense_fusion: 1 to 64 segments");
  const int64_t n_rows = segments[0].size(0);
  std::vector<const float*> data;
  std::vector<int64_t> stride, width;
  int64_t k = 0;
  for (const at::Tensor& t : segments) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 2 && t.size(0) == n_rows && t.stride(1) == 1 && t.size(1) >= 1,
                "dense_fusion: segments must be P x k float32 rows with unit column stride");
    data.push_back(t.const_data_ptr<float>());
    stride.push_back(t.stride(0));
    width.push_back(t.size(1));
    k += t.size(1);
  }
  TORCH_CHECK(weight_t.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat && weight_t.is_contiguous() &&
                  weight_t.dim() == 2 && weight_t.size(0) == k && weight_t.size(1) == FUSION_OUT &&
                  bias.is_contiguous() && bias.numel() == FUSION_OUT,
              "dense_fusion: weight_t must be (sum of widths) x 32 and bias 32, float32");
  TORCH_CHECK(slope >= 0.0 && slope <= 1.0, "dense_fusion: slope must lie in [0, 1]");
  at::Tensor out = at::empty({n_rows, FUSION_OUT}, segments[0].options());
  const float* wt = weight_t.const_data_ptr<float>();
  const float* b = bias.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  const float sl = float(slope);
  const int64_t n_seg = int64_t(segments.size());
  const int64_t panels = (n_rows + FUSION_PANEL - 1) / FUSION_PANEL;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t p0 = panel * FUSION_PANEL, p1 = std::min(n_rows, p0 + FUSION_PANEL);
      int64_t koff = 0;
      for (int64_t s = 0; s < n_seg; ++s) {
        const float* a = data[s];
        const int64_t lda = stride[s];
        for (int64_t c0 = 0; c0 < width[s]; c0 += FUSION_DEPTH) {
          const int64_t c1 = std::min(width[s], c0 + FUSION_DEPTH);
          const bool first = s == 0 && c0 == 0, last = s == n_seg - 1 && c1 == width[s];
          const float* w_chunk = wt + koff * FUSION_OUT;  // rows of weight_t from this segment's column 0
          for (int64_t r0 = p0; r0 < p1; r0 += FUSION_ROWS) {
            const int64_t count = std::min(FUSION_ROWS, p1 - r0);
            const float* src[FUSION_ROWS];
            float* o[FUSION_ROWS];
            for (int64_t r = 0; r < count; ++r) {
              src[r] = a + (r0 + r) * lda;
              o[r] = dst + (r0 + r) * FUSION_OUT;
            }
            if (r0 + FUSION_PREFETCH + FUSION_ROWS <= p1)
              for (int64_t r = 0; r < FUSION_ROWS; ++r)
                for (int64_t kk = c0; kk < c1; kk += 64 / sizeof(float))
                  __builtin_prefetch(a + (r0 + FUSION_PREFETCH + r) * lda + kk);
            if (count == 3)
              fusion_block<3>(src, w_chunk, b, o, c0, c1, first, last, sl);
            else if (count == 2)
              fusion_block<2>(src, w_chunk, b, o, c0, c1, first, last, sl);
            else
              fusion_block<1>(src, w_chunk, b, o, c0, c1, first, last, sl);
          }
        }
        koff += width[s];
      }
    }
  });
  return out;
}

// ---- dense_fusion_backward --------------------------------------------------------------------
//
// Training's backward of one dense fusion: with g the gradient at the fusion's pre-activation
// (P x 32) and W its weight (32 x k), d segments += g W (or = where the segment is written the
// first time) and dW = g^T [segments]. Both products read g once per panel of pixels while it is
// in L1, and each segment's panel is read once for dW right after its dX rows are written. With no
// gradient segments given, only dW (training defers the input gradients, see dense_buffer.py). dW is
// summed per fixed chunk of rows (not per thread) and the chunks added in order, so the result
// does not depend on the thread count.

constexpr int64_t BACKWARD_PANEL = 64;  // pixels whose g rows (8 KiB) and segment rows stay in L1
constexpr int64_t BACKWARD_CHUNKS = 8;  // fixed row chunks for the dW partial sums
constexpr int64_t BACKWARD_ROWS = 4;    // pixels per dX register block (8 accumulators)

// dx[r, j..j+16) (+)= sum_o g[r, o] w[o, j..j+16) for R pixels. The weight comes packed as
// (k / 16) blocks of 32 x 16 (2 KiB each): W's own rows are k floats apart (4 KiB at k = 1056),
// so the 32 rows of one column group would all fall in one L1 set.
template <int R>
inline void input_grad_block(const float* g, const float* wp, float* const* dx, int64_t width, bool overwrite) {
  for (int64_t j = 0; j < width; j += 2 * LANES) {
    const float* wj = wp + j * FUSION_OUT;
    vec8 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = vec8{};
    for (int64_t o = 0; o < FUSION_OUT; ++o) {
      const vec8 w0 = load8(wj + o * 2 * LANES), w1 = load8(wj + o * 2 * LANES + LANES);
      for (int r = 0; r < R; ++r) {
        const vec8 x = vec8{} + g[r * FUSION_OUT + o];
        acc[r][0] += x * w0;
        acc[r][1] += x * w1;
      }
    }
    for (int r = 0; r < R; ++r) {
      float* d = dx[r] + j;
      if (overwrite) {
        store8(d, acc[r][0]);
        store8(d + LANES, acc[r][1]);
      } else {
        store8(d, load8(d) + acc[r][0]);
        store8(d + LANES, load8(d + LANES) + acc[r][1]);
      }
    }
  }
}

// dwt[j, :] += sum_r a[r, j] g[r, :] over `rows` pixels, two columns j at a time.
inline void weight_grad_panel(const float* a, int64_t lda, const float* g, int64_t rows, float* dwt, int64_t width) {
  for (int64_t j = 0; j < width; j += 2) {
    vec8 acc[2][4];
    for (int jj = 0; jj < 2; ++jj)
      for (int v = 0; v < 4; ++v) acc[jj][v] = load8(dwt + (j + jj) * FUSION_OUT + v * LANES);
    for (int64_t r = 0; r < rows; ++r) {
      const float* gr = g + r * FUSION_OUT;
      const vec8 g0 = load8(gr), g1 = load8(gr + 8), g2 = load8(gr + 16), g3 = load8(gr + 24);
      const vec8 x0 = vec8{} + a[r * lda + j], x1 = vec8{} + a[r * lda + j + 1];
      acc[0][0] += x0 * g0; acc[0][1] += x0 * g1; acc[0][2] += x0 * g2; acc[0][3] += x0 * g3;
      acc[1][0] += x1 * g0; acc[1][1] += x1 * g1; acc[1][2] += x1 * g2; acc[1][3] += x1 * g3;
    }
    for (int jj = 0; jj < 2; ++jj)
      for (int v = 0; v < 4; ++v) store8(dwt + (j + jj) * FUSION_OUT + v * LANES, acc[jj][v]);
  }
}

// The same panel with 16-float vectors, where the CPU has AVX-512 (chosen at run time; the rest
// of the library stays AVX2). With 16 registers the AVX2 block holds only 2 columns x 4 vectors,
// 8 accumulator chains, and ran at ~105 GFLOP/s against ~200 for the forward fusion on the
// 2-core VM; 32 registers hold 8 columns x 2 vectors. Every dW element still sums its rows in
// the same order with the same fused multiply-adds, so both paths give the same bits.
typedef float vec16 __attribute__((vector_size(64)));

__attribute__((target("avx512f"))) void weight_grad_panel_avx512(const float* a, int64_t lda, const float* g,
                                                                   int64_t rows, float* dwt, int64_t width,
                                                                   const float* next, int64_t next_lda,
                                                                   int64_t next_width) {
  constexpr int64_t COLS = 8;  // widths are multiples of 16
  for (int64_t j = 0; j < width; j += COLS) {
    vec16 acc[COLS][2];
    for (int64_t c = 0; c < COLS; ++c)
      for (int v = 0; v < 2; ++v) std::memcpy(&acc[c][v], dwt + (j + c) * FUSION_OUT + v * 16, sizeof(vec16));
    for (int64_t r = 0; r < rows; ++r) {
      vec16 g0, g1;
      std::memcpy(&g0, g + r * FUSION_OUT, sizeof g0);
      std::memcpy(&g1, g + r * FUSION_OUT + 16, sizeof g1);
      const float* ar = a + r * lda + j;
      if (j == 0 && next)  // the rows the next call reads, while this panel is in L1
        for (int64_t kk = 0; kk < next_width; kk += 64 / sizeof(float)) __builtin_prefetch(next + r * next_lda + kk);
      for (int64_t c = 0; c < COLS; ++c) {
        const vec16 x = vec16{} + ar[c];
        acc[c][0] += x * g0;
        acc[c][1] += x * g1;
      }
    }
    for (int64_t c = 0; c < COLS; ++c)
      for (int v = 0; v < 2; ++v) std::memcpy(dwt + (j + c) * FUSION_OUT + v * 16, &acc[c][v], sizeof(vec16));
  }
}

// JDNET_CPU_AVX2_ONLY (any value) keeps the AVX2 path, so tests can compare the two.
const bool HAVE_AVX512 = __builtin_cpu_supports("avx512f") && !std::getenv("JDNET_CPU_AVX2_ONLY");

// Returns dW transposed (k x 32); writes or accumulates the segments' gradients in place.
at::Tensor dense_fusion_backward(const at::Tensor& grad, const at::Tensor& weight, at::TensorList segments,
                                 at::TensorList grad_segments, at::IntArrayRef overwrite) {
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.dim() == 2 && grad.size(1) == FUSION_OUT && grad.is_contiguous(),
              "dense_fusion_backward: grad must be a contiguous P x 32 float32 tensor");
  const int64_t n_rows = grad.size(0);
  const int64_t n_seg = int64_t(segments.size());
  const bool input_grads = !grad_segments.empty();
  TORCH_CHECK(n_seg >= 1 && (!input_grads || int64_t(grad_segments.size()) == n_seg) &&
                  int64_t(overwrite.size()) == int64_t(grad_segments.size()),
              "dense_fusion_backward: one gradient segment and one overwrite flag per segment, or neither");
  int64_t k = 0;
  for (int64_t s = 0; s < n_seg; ++s) {
    const at::Tensor& a = segments[s];
    const at::Tensor& d = input_grads ? grad_segments[s] : a;
    TORCH_CHECK(a.scalar_type() == at::kFloat && d.scalar_type() == at::kFloat && a.dim() == 2 && d.dim() == 2 &&
                    a.size(0) == n_rows && d.size(0) == n_rows && a.size(1) == d.size(1) && a.stride(1) == 1 &&
                    d.stride(1) == 1 && a.size(1) % (2 * LANES) == 0,
                "dense_fusion_backward: segments and their gradients must be P x w float32 rows, w a multiple of 16");
    k += a.size(1);
  }
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.dim() == 3 &&
                  weight.size(0) * 2 * LANES == k && weight.size(1) == FUSION_OUT && weight.size(2) == 2 * LANES,
              "dense_fusion_backward: weight must be packed as (sum of widths / 16) x 32 x 16 float32");
  at::Tensor partials = at::zeros({BACKWARD_CHUNKS, k, FUSION_OUT}, grad.options());
  const float* g = grad.const_data_ptr<float>();
  const float* w = weight.const_data_ptr<float>();
  float* part = partials.mutable_data_ptr<float>();
  std::vector<const float*> a_ptr;
  std::vector<float*> d_ptr;
  std::vector<int64_t> lda, ldd, width;
  for (int64_t s = 0; s < n_seg; ++s) {
    a_ptr.push_back(segments[s].const_data_ptr<float>());
    d_ptr.push_back(input_grads ? grad_segments[s].mutable_data_ptr<float>() : nullptr);
    lda.push_back(segments[s].stride(0));
    ldd.push_back(input_grads ? grad_segments[s].stride(0) : 0);
    width.push_back(segments[s].size(1));
  }
  const int64_t chunk_rows = (n_rows + BACKWARD_CHUNKS - 1) / BACKWARD_CHUNKS;
  at::parallel_for(0, BACKWARD_CHUNKS, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      float* dwt = part + chunk * k * FUSION_OUT;
      const int64_t c0 = chunk * chunk_rows, c1 = std::min(n_rows, c0 + chunk_rows);
      for (int64_t p0 = c0; p0 < c1; p0 += BACKWARD_PANEL) {
        const int64_t rows = std::min(BACKWARD_PANEL, c1 - p0);
        int64_t koff = 0;
        for (int64_t s = 0; s < n_seg; ++s) {
          for (int64_t r0 = 0; input_grads && r0 < rows; r0 += BACKWARD_ROWS) {
            const int64_t count = std::min(BACKWARD_ROWS, rows - r0);
            float* dx[BACKWARD_ROWS];
            for (int64_t r = 0; r < count; ++r) dx[r] = d_ptr[s] + (p0 + r0 + r) * ldd[s];
            const float* gr = g + (p0 + r0) * FUSION_OUT;
            switch (count) {
              case 4: input_grad_block<4>(gr, w + koff * FUSION_OUT, dx, width[s], overwrite[s] != 0); break;
              case 3: input_grad_block<3>(gr, w + koff * FUSION_OUT, dx, width[s], overwrite[s] != 0); break;
              case 2: input_grad_block<2>(gr, w + koff * FUSION_OUT, dx, width[s], overwrite[s] != 0); break;
              default: input_grad_block<1>(gr, w + koff * FUSION_OUT, dx, width[s], overwrite[s] != 0); break;
            }
          }
          if (HAVE_AVX512) {
            // Next: this panel of the next segment, or the next panel of the first one.
            const bool last_seg = s + 1 == n_seg;
            const int64_t ns = last_seg ? 0 : s + 1, np0 = last_seg ? p0 + rows : p0;
            const bool full = np0 + rows <= c1;
            weight_grad_panel_avx512(a_ptr[s] + p0 * lda[s], lda[s], g + p0 * FUSION_OUT, rows, dwt + koff * FUSION_OUT,
                                     width[s], full ? a_ptr[ns] + np0 * lda[ns] : nullptr, lda[ns], width[ns]);
          } else
            weight_grad_panel(a_ptr[s] + p0 * lda[s], lda[s], g + p0 * FUSION_OUT, rows, dwt + koff * FUSION_OUT, width[s]);
          koff += width[s];
        }
      }
    }
  });
  return partials.sum(0);
}

// ---- fuse_segments ----------------------------------------------------------------------------

constexpr int MAX_SEGMENTS = 4;

struct SegmentRows {
  const float* data[MAX_SEGMENTS];
  int64_t stride[MAX_SEGMENTS], width[MAX_SEGMENTS];
  int64_t count;
};

// Where the 32 outputs go: all in `low`, or channels 0-15 in `low` and 16-31 in `high` (two
// maps produced by one pass, such as the two branch inputs of the SC bottleneck).
struct OutRows {
  float* low;
  int64_t ld_low;
  float* high;
  int64_t ld_high;
  float* at(int64_t r, int j) const {
    return high && j >= 2 ? high + r * ld_high + (j - 2) * LANES : low + r * ld_low + j * LANES;
  }
};

// out[r] = act(bias + skip[r] + sum_s W_s a_s[r]) for R pixels whose inputs are split over
// several channel segments (the concatenation is never built).
template <int R>
inline void segment_block(const SegmentRows& seg, int64_t r0, const float* wt, const float* bias, const float* skip,
                          int64_t ld_skip, const OutRows& out, bool activate, float slope) {
  vec8 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) {
      acc[r][j] = load8(bias + j * LANES);
      if (skip) acc[r][j] += load8(skip + (r0 + r) * ld_skip + j * LANES);
    }
  int64_t koff = 0;
  for (int64_t s = 0; s < seg.count; ++s) {
    const float* a[R];
    for (int r = 0; r < R; ++r) a[r] = seg.data[s] + (r0 + r) * seg.stride[s];
    accumulate<R>(acc, a, wt + koff * FUSION_OUT, 0, seg.width[s]);
    koff += seg.width[s];
  }
  const vec8 sl = vec8{} + slope;
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) store8(out.at(r0 + r, j), activate ? leaky(acc[r][j], sl) : acc[r][j]);
}

void fuse_segments(at::TensorList segments, const at::Tensor& weight_t, const at::Tensor& bias,
                   const std::optional<at::Tensor>& skip, const at::Tensor& out, bool activate, double slope,
                   const std::optional<at::Tensor>& out_high) {
  TORCH_CHECK(!segments.empty() && segments.size() <= MAX_SEGMENTS, "fuse_segments: 1 to 4 segments");
  const int64_t out_width = out_high.has_value() ? FUSION_OUT / 2 : FUSION_OUT;
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.dim() == 2 && out.size(1) == out_width && out.stride(1) == 1,
              "fuse_segments: out must be P x 32 float32 rows (P x 16 with out_high) with unit column stride");
  const int64_t n_rows = out.size(0);
  if (out_high.has_value())
    TORCH_CHECK(out_high->scalar_type() == at::kFloat && out_high->dim() == 2 && out_high->size(0) == n_rows &&
                    out_high->size(1) == out_width && out_high->stride(1) == 1,
                "fuse_segments: out_high must be P x 16 float32 rows with unit column stride");
  SegmentRows seg{};
  seg.count = int64_t(segments.size());
  int64_t k = 0;
  for (int64_t s = 0; s < seg.count; ++s) {
    const at::Tensor& t = segments[s];
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 2 && t.size(0) == n_rows && t.stride(1) == 1,
                "fuse_segments: segments must be P x k float32 rows with unit column stride");
    seg.data[s] = t.const_data_ptr<float>();
    seg.stride[s] = t.stride(0);
    seg.width[s] = t.size(1);
    k += t.size(1);
  }
  TORCH_CHECK(weight_t.scalar_type() == at::kFloat && weight_t.is_contiguous() && weight_t.dim() == 2 &&
                  weight_t.size(0) == k && weight_t.size(1) == FUSION_OUT && bias.scalar_type() == at::kFloat &&
                  bias.is_contiguous() && bias.numel() == FUSION_OUT,
              "fuse_segments: weight_t must be (sum of widths) x 32 and bias 32");
  const float* sk = nullptr;
  int64_t ld_skip = 0;
  if (skip.has_value()) {
    TORCH_CHECK(skip->scalar_type() == at::kFloat && skip->dim() == 2 && skip->size(0) == n_rows &&
                    skip->size(1) == FUSION_OUT && skip->stride(1) == 1,
                "fuse_segments: skip must be P x 32 float32 rows with unit column stride");
    sk = skip->const_data_ptr<float>();
    ld_skip = skip->stride(0);
  }
  TORCH_CHECK(slope >= 0.0 && slope <= 1.0, "fuse_segments: slope must lie in [0, 1]");
  const float* wt = weight_t.const_data_ptr<float>();
  const float* b = bias.const_data_ptr<float>();
  const OutRows dst{out.mutable_data_ptr<float>(), out.stride(0),
                    out_high.has_value() ? out_high->mutable_data_ptr<float>() : nullptr,
                    out_high.has_value() ? out_high->stride(0) : 0};
  const float sl = float(slope);
  at::parallel_for(0, (n_rows + FUSION_ROWS - 1) / FUSION_ROWS, 256, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t r0 = blk * FUSION_ROWS, count = std::min(FUSION_ROWS, n_rows - r0);
      if (count == 3)
        segment_block<3>(seg, r0, wt, b, sk, ld_skip, dst, activate, sl);
      else if (count == 2)
        segment_block<2>(seg, r0, wt, b, sk, ld_skip, dst, activate, sl);
      else
        segment_block<1>(seg, r0, wt, b, sk, ld_skip, dst, activate, sl);
    }
  });
}

// ---- upsample-and-combine ---------------------------------------------------------------------

bool nhwc_float(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

void check_upsample_inputs(const char* op, const at::Tensor& full, const at::TensorList smalls, const at::TensorList rows,
                           const at::TensorList cols) {
  TORCH_CHECK(nhwc_float(full) && full.size(1) % LANES == 0, op, ": float32 channels-last maps, channels a multiple of 8");
  TORCH_CHECK(smalls.size() == rows.size() && smalls.size() == cols.size(), op, ": one row and column table per map");
  for (size_t j = 0; j < smalls.size(); ++j) {
    TORCH_CHECK(nhwc_float(smalls[j]) && smalls[j].size(0) == full.size(0) && smalls[j].size(1) == full.size(1), op,
                ": small maps must be float32 channels-last with the same batch and channels");
    TORCH_CHECK(rows[j].scalar_type() == at::kLong && rows[j].is_contiguous() && rows[j].numel() == full.size(2) &&
                    cols[j].scalar_type() == at::kLong && cols[j].is_contiguous() && cols[j].numel() == full.size(3),
                op, ": index tables must be int64 of the full height and width");
    // Out-of-range indices would read outside the small map.
    TORCH_CHECK(rows[j].min().item<int64_t>() >= 0 && rows[j].max().item<int64_t>() < smalls[j].size(2) &&
                    cols[j].min().item<int64_t>() >= 0 && cols[j].max().item<int64_t>() < smalls[j].size(3),
                op, ": index table out of range");
  }
}

// LReLU(base + sum_j up(small_j)) + skip: the scale aggregation's fusion (its 1x1 conv already
// applied at each scale) plus the unit's residual.
// With weight_t, base is first projected (base @ weight_t + bias per pixel, 32 outputs): the
// full-resolution scale's 1x1 conv, computed row by row into a buffer that stays in cache.
at::Tensor scale_aggregate(const at::Tensor& base, const at::Tensor& skip, at::TensorList smalls, at::TensorList rows,
                           at::TensorList cols, double slope, const std::optional<at::Tensor>& weight_t,
                           const std::optional<at::Tensor>& bias) {
  check_upsample_inputs("scale_aggregate", base, smalls, rows, cols);
  TORCH_CHECK(weight_t.has_value() == bias.has_value(), "scale_aggregate: weight_t and bias go together");
  const bool project = weight_t.has_value();
  if (project)
    TORCH_CHECK(base.size(1) == FUSION_OUT && weight_t->scalar_type() == at::kFloat && weight_t->is_contiguous() &&
                    weight_t->dim() == 2 && weight_t->size(0) == FUSION_OUT && weight_t->size(1) == FUSION_OUT &&
                    bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == FUSION_OUT,
                "scale_aggregate: projection needs 32 channels, a 32 x 32 weight_t and 32 biases");
  TORCH_CHECK(nhwc_float(skip) && skip.sizes() == base.sizes(), "scale_aggregate: skip must match base");
  TORCH_CHECK(smalls.size() <= 8, "scale_aggregate: at most 8 scales");
  TORCH_CHECK(slope >= 0.0 && slope <= 1.0, "scale_aggregate: slope must lie in [0, 1]");
  const int64_t n_img = base.size(0), c = base.size(1), h = base.size(2), w = base.size(3);
  const int64_t scales = int64_t(smalls.size());
  at::Tensor out = at::empty_like(base, at::MemoryFormat::ChannelsLast);
  const float* b = base.const_data_ptr<float>();
  const float* sk = skip.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  const float* sp[8];
  const int64_t* ry[8];
  const int64_t* cx[8];
  int64_t sh[8], sw[8];
  for (int64_t j = 0; j < scales; ++j) {
    sp[j] = smalls[j].const_data_ptr<float>();
    ry[j] = rows[j].const_data_ptr<int64_t>();
    cx[j] = cols[j].const_data_ptr<int64_t>();
    sh[j] = smalls[j].size(2);
    sw[j] = smalls[j].size(3);
  }
  const vec8 sl = vec8{} + float(slope);
  const float* wt = project ? weight_t->const_data_ptr<float>() : nullptr;
  const float* pb = project ? bias->const_data_ptr<float>() : nullptr;
  at::parallel_for(0, n_img * h, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> projected(project ? w * c : 0);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / h, y = row % h;
      const float* src_row[8];
      for (int64_t j = 0; j < scales; ++j) src_row[j] = sp[j] + ((n * sh[j] + ry[j][y]) * sw[j]) * c;
      const int64_t off = row * w * c;
      const float* base_row = b + off;
      if (project) {
        float* pr = projected.data();
        for (int64_t x0 = 0; x0 < w; x0 += FUSION_ROWS) {
          const float* a[FUSION_ROWS];
          float* o[FUSION_ROWS];
          const int64_t count = std::min(FUSION_ROWS, w - x0);
          for (int64_t r = 0; r < count; ++r) {
            a[r] = base_row + (x0 + r) * c;
            o[r] = pr + (x0 + r) * c;
          }
          if (count == 3)
            fusion_block<3>(a, wt, pb, o, 0, c, true, false, 0.f);
          else if (count == 2)
            fusion_block<2>(a, wt, pb, o, 0, c, true, false, 0.f);
          else
            fusion_block<1>(a, wt, pb, o, 0, c, true, false, 0.f);
        }
        base_row = pr;
      }
      for (int64_t x = 0; x < w; ++x) {
        for (int64_t k = 0; k < c; k += LANES) {
          vec8 v = load8(base_row + x * c + k);
          for (int64_t j = 0; j < scales; ++j) v += load8(src_row[j] + cx[j][x] * c + k);
          store8(dst + off + x * c + k, leaky(v, sl) + load8(sk + off + x * c + k));
        }
      }
    }
  });
  return out;
}

// features * sigmoid(x + up(context)): the SC-conv's self-calibration gate applied to k3(x).
at::Tensor calibration_gate(const at::Tensor& x, const at::Tensor& context, const at::Tensor& row_index,
                            const at::Tensor& col_index, const at::Tensor& features) {
  check_upsample_inputs("calibration_gate", x, {context}, {row_index}, {col_index});
  TORCH_CHECK(nhwc_float(features) && features.sizes() == x.sizes(), "calibration_gate: features must match x");
  const int64_t n_img = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t ch = context.size(2), cw = context.size(3);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  const float* xp = x.const_data_ptr<float>();
  const float* cp = context.const_data_ptr<float>();
  const float* fp = features.const_data_ptr<float>();
  const int64_t* ry = row_index.const_data_ptr<int64_t>();
  const int64_t* cx = col_index.const_data_ptr<int64_t>();
  float* dst = out.mutable_data_ptr<float>();
  at::parallel_for(0, n_img * h, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> gate(w * c);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / h, y = row % h;
      const float* ctx_row = cp + ((n * ch + ry[y]) * cw) * c;
      const int64_t off = row * w * c;
      for (int64_t x0 = 0; x0 < w; ++x0)
        for (int64_t k = 0; k < c; k += LANES)
          store8(gate.data() + x0 * c + k, load8(xp + off + x0 * c + k) + load8(ctx_row + cx[x0] * c + k));
      // A plain loop over the row, so the compiler can use the vector exp.
      float* __restrict g = gate.data();
      const float* __restrict f = fp + off;
      float* __restrict o = dst + off;
      for (int64_t i = 0; i < w * c; ++i) o[i] = f[i] / (1.f + std::exp(-g[i]));
    }
  });
  return out;
}

// ---- affine_leaky -----------------------------------------------------------------------------

// LReLU(x * scale + shift) per channel: an eval-mode BatchNorm and its activation in one pass.
at::Tensor affine_leaky(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, double slope) {
  TORCH_CHECK(nhwc_float(x) && x.size(1) % LANES == 0, "affine_leaky: float32 channels-last map, channels a multiple of 8");
  check_channel_affine("affine_leaky", scale, shift, x.size(1));
  TORCH_CHECK(slope >= 0.0 && slope <= 1.0, "affine_leaky: slope must lie in [0, 1]");
  const int64_t c = x.size(1), pixels = x.numel() / c;
  at::Tensor out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  const float* src = x.const_data_ptr<float>();
  const float* sc = scale.const_data_ptr<float>();
  const float* sh = shift.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  const vec8 sl = vec8{} + float(slope);
  at::parallel_for(0, pixels, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t k = 0; k < c; k += LANES)
        store8(dst + p * c + k, leaky(load8(src + p * c + k) * load8(sc + k) + load8(sh + k), sl));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(jdnet, m) {
  m.def("pairwise_attention(Tensor centre, Tensor neighbours, Tensor values, float[] v, float slope) -> Tensor");
  m.def("pairwise_attention_bn_leaky(Tensor centre, Tensor neighbours, Tensor values, float[] v, float slope, Tensor scale, Tensor shift) -> Tensor");
  m.def("attention_inputs(Tensor x, Tensor scale, Tensor shift, Tensor weight_t, Tensor bias, int ch, Tensor p, float slope) -> Tensor[]");
  m.def("dense_fusion(Tensor[] segments, Tensor weight_t, Tensor bias, float slope) -> Tensor");
  m.def("dense_fusion_backward(Tensor grad, Tensor weight_packed, Tensor[] segments, Tensor(a!)[] grad_segments, int[] overwrite) -> Tensor");
  m.def("fuse_segments(Tensor[] segments, Tensor weight_t, Tensor bias, Tensor? skip, Tensor(a!) out, bool activate, float slope, Tensor(b!)? out_high=None) -> ()");
  m.def("affine_leaky(Tensor x, Tensor scale, Tensor shift, float slope) -> Tensor");
  m.def("scale_aggregate(Tensor base, Tensor skip, Tensor[] smalls, Tensor[] rows, Tensor[] cols, float slope, Tensor? weight_t=None, Tensor? bias=None) -> Tensor");
  m.def("calibration_gate(Tensor x, Tensor context, Tensor row_index, Tensor col_index, Tensor features) -> Tensor");
}

TORCH_LIBRARY_IMPL(jdnet, CPU, m) {
  m.impl("pairwise_attention", &pairwise_attention);
  m.impl("pairwise_attention_bn_leaky", &pairwise_attention_bn_leaky);
  m.impl("attention_inputs", &attention_inputs);
  m.impl("dense_fusion", &dense_fusion);
  m.impl("dense_fusion_backward", &dense_fusion_backward);
  m.impl("fuse_segments", &fuse_segments);
  m.impl("affine_leaky", &affine_leaky);
  m.impl("scale_aggregate", &scale_aggregate);
  m.impl("calibration_gate", &calibration_gate);
}
