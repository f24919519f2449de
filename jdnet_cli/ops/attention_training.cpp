// SAM's pairwise attention for training on the CPU: forward and a fused, hand-written backward,
// for float32 and float64, registered as torch.ops.jdnet_train.*; with the block's input stage
// (channel_mean_var: BatchNorm's batch statistics; projection_backward: the backward of
// BatchNorm, LReLU and the three projections) for ops/sam_training.py. Built at first use by
// jdnet_cli/ops/native_build.py; jdnet_cli/ops/attention_cpu_training.py wraps them and
// jdnet_cli/ops/attention_banded.py's autograd Function calls them.
//
// Inputs are what attention_banded.padded_planes makes: the centre planes (N x 4 x H x W: two
// feature relations, two position relations), the neighbour planes (N x 4 x (H+6) x (W+6)) and the
// value planes (N x C x (H+6) x (W+6)), both reflect-padded by 3. For pixel q and tap t (offset
// dy, dx in the 7x7 window):
//   logit[t] = sum_c v_c LReLU(centre_c(q) - neighbour_c(q + t))     (the bias cancels in softmax)
//   w[t] = softmax_t(logit);  out_k(q) = sum_t w[t] value_k(q + t)
// Forward keeps the softmax max and sum per pixel; backward recomputes the 49 logits of a row from
// them instead of storing 49 x N x H x W weights (what autograd would save for the unfold op):
//   dz[t] = w[t] (sum_k g_k value_k(q + t) - sum_k g_k out_k(q))      (softmax backward)
//   d value_k(q + t) += g_k w[t];  d v_c += dz[t] LReLU(r_c);  d r_c = dz[t] v_c LReLU'(r_c)
//   d centre_c(q) += d r_c;  d neighbour_c(q + t) -= d r_c
// Work is one image row per step, taps outer and pixels inner, so every inner loop runs over
// consecutive pixels of a row (vectorised) and a row's 49 logits stay in L1. The backward scatters
// into rows y..y+6 of the padded gradients, so its tasks are whole images: two tasks never write
// the same memory and no atomics are needed (training batches have several images).
// Floating point stays IEEE here (no flush-to-zero): gradients are checked against the reference
// op in float64.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t KERNEL = 7;
constexpr int64_t PAD = KERNEL / 2;
constexpr int64_t TAPS = KERNEL * KERNEL;
constexpr int64_t RELATIONS = 4;

template <typename T>
struct Planes {
  const T* centre;      // N x 4 x H x W
  const T* neighbours;  // N x 4 x (H+6) x (W+6)
  const T* values;      // N x C x (H+6) x (W+6)
  int64_t h, w, ch;
  T v[RELATIONS];
  T slope;
  int64_t hp() const { return h + KERNEL - 1; }
  int64_t wp() const { return w + KERNEL - 1; }
  const T* centre_row(int64_t n, int64_t c, int64_t y) const { return centre + ((n * RELATIONS + c) * h + y) * w; }
  int64_t neighbour_offset(int64_t n, int64_t c, int64_t y) const { return ((n * RELATIONS + c) * hp() + y) * wp(); }
  int64_t value_offset(int64_t n, int64_t k, int64_t y) const { return ((n * ch + k) * hp() + y) * wp(); }
  int64_t plane_offset(int64_t n, int64_t k, int64_t y, int64_t channels) const { return ((n * channels + k) * h + y) * w; }
};

// 32 bytes of T (8 floats or 4 doubles) through GCC's vector extension, for loops that the
// compiler would not vectorise across several rows.
template <typename T>
struct Lanes {
  typedef T V __attribute__((vector_size(32)));
  static constexpr int64_t L = 32 / sizeof(T);
  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(T* p, V v) { std::memcpy(p, &v, sizeof v); }
};

// logit[t * w + x] for the 49 taps of row y of image n: per tap one pass over the row with the
// four relations summed in registers (in the order c = 0..3), a vector of pixels at a time.
template <typename T>
void row_logits(const Planes<T>& p, int64_t n, int64_t y, T* __restrict logit) {
  using S = Lanes<T>;
  using V = typename S::V;
  const int64_t w = p.w;
  const T* cen[RELATIONS];
  for (int64_t c = 0; c < RELATIONS; ++c) cen[c] = p.centre_row(n, c, y);
  const V zero = V{}, sl = V{} + p.slope;
  for (int64_t t = 0; t < TAPS; ++t) {
    const int64_t dy = t / KERNEL, dx = t % KERNEL;
    T* __restrict l = logit + t * w;
    const T* nb[RELATIONS];
    for (int64_t c = 0; c < RELATIONS; ++c) nb[c] = p.neighbours + p.neighbour_offset(n, c, y + dy) + dx;
    int64_t x = 0;
    for (; x + S::L <= w; x += S::L) {
      V acc = zero;
      for (int64_t c = 0; c < RELATIONS; ++c) {
        const V r = S::load(cen[c] + x) - S::load(nb[c] + x);
        const V lr = r > zero ? r : r * sl;
        acc = c == 0 ? p.v[c] * lr : acc + p.v[c] * lr;
      }
      S::store(l + x, acc);
    }
    for (; x < w; ++x) {
      T acc = T(0);
      for (int64_t c = 0; c < RELATIONS; ++c) {
        const T r = cen[c][x] - nb[c][x];
        const T lr = r > T(0) ? r : r * p.slope;
        acc = c == 0 ? p.v[c] * lr : acc + p.v[c] * lr;
      }
      l[x] = acc;
    }
  }
}

template <typename T>
Planes<T> planes_of(const at::Tensor& centre, const at::Tensor& neighbours, const at::Tensor& values,
                    at::ArrayRef<double> v, double slope) {
  Planes<T> p{centre.const_data_ptr<T>(), neighbours.const_data_ptr<T>(), values.const_data_ptr<T>(),
              centre.size(2), centre.size(3), values.size(1), {}, T(slope)};
  for (int64_t c = 0; c < RELATIONS; ++c) p.v[c] = T(v[c]);
  return p;
}

void check_planes(const char* op, const at::Tensor& centre, const at::Tensor& neighbours, const at::Tensor& values,
                  at::ArrayRef<double> v, double slope) {
  const auto dtype = centre.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op, ": float32 or float64 only");
  TORCH_CHECK(neighbours.scalar_type() == dtype && values.scalar_type() == dtype, op, ": planes must share one dtype");
  TORCH_CHECK(centre.device().is_cpu() && neighbours.device().is_cpu() && values.device().is_cpu(), op, ": CPU tensors only");
  TORCH_CHECK(centre.is_contiguous() && neighbours.is_contiguous() && values.is_contiguous(),
              op, ": contiguous planar inputs only");
  TORCH_CHECK(centre.dim() == 4 && centre.size(1) == RELATIONS && v.size() == RELATIONS,
              op, ": centre must be N x 4 x H x W and v 4 values");
  TORCH_CHECK(slope >= 0.0 && slope <= 1.0, op, ": slope must lie in [0, 1]");
  const int64_t n = centre.size(0), h = centre.size(2), w = centre.size(3);
  TORCH_CHECK(neighbours.sizes() == at::IntArrayRef({n, RELATIONS, h + KERNEL - 1, w + KERNEL - 1}) &&
                  values.dim() == 4 && values.size(0) == n && values.size(2) == h + KERNEL - 1 &&
                  values.size(3) == w + KERNEL - 1,
              op, ": padded planes must be 3 larger on every side");
}

template <typename T>
void forward_rows(const Planes<T>& p, int64_t n_img, T* out, T* smax, T* ssum) {
  const int64_t h = p.h, w = p.w, ch = p.ch;
  at::parallel_for(0, n_img * h, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> logit(TAPS * w), peak(w), total(w);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / h, y = row % h;
      row_logits(p, n, y, logit.data());
      T* __restrict m = peak.data();
      T* __restrict s = total.data();
      for (int64_t x = 0; x < w; ++x) m[x] = logit[x];
      for (int64_t t = 1; t < TAPS; ++t)
        for (int64_t x = 0; x < w; ++x) m[x] = std::max(m[x], logit[t * w + x]);
      for (int64_t x = 0; x < w; ++x) s[x] = T(0);
      for (int64_t t = 0; t < TAPS; ++t) {
        T* __restrict l = logit.data() + t * w;
        for (int64_t x = 0; x < w; ++x) {
          l[x] = std::exp(l[x] - m[x]);
          s[x] += l[x];
        }
      }
      // Per channel, the 49-tap sum of a vector of pixels stays in a register (taps in order).
      using S = Lanes<T>;
      using V = typename S::V;
      for (int64_t k = 0; k < ch; ++k) {
        const T* __restrict val = p.values + p.value_offset(n, k, y);
        const int64_t wp = p.wp();
        T* __restrict o = out + p.plane_offset(n, k, y, ch);
        int64_t x = 0;
        for (; x + S::L <= w; x += S::L) {
          V a = V{};
          const T* e = logit.data() + x;
          for (int64_t dy = 0; dy < KERNEL; ++dy)
            for (int64_t dx = 0; dx < KERNEL; ++dx, e += w) a += S::load(e) * S::load(val + dy * wp + dx + x);
          S::store(o + x, a / S::load(s + x));
        }
        for (; x < w; ++x) {
          T a = T(0);
          for (int64_t t = 0; t < TAPS; ++t) a += logit[t * w + x] * val[(t / KERNEL) * wp + t % KERNEL + x];
          o[x] = a / s[x];
        }
      }
      T* __restrict sm = smax + p.plane_offset(n, 0, y, 1);
      T* __restrict ss = ssum + p.plane_offset(n, 0, y, 1);
      for (int64_t x = 0; x < w; ++x) {
        sm[x] = m[x];
        ss[x] = s[x];
      }
    }
  });
}

std::vector<at::Tensor> attention_forward(const at::Tensor& centre, const at::Tensor& neighbours,
                                          const at::Tensor& values, at::ArrayRef<double> v, double slope) {
  check_planes("attention_forward", centre, neighbours, values, v, slope);
  const int64_t n = centre.size(0), h = centre.size(2), w = centre.size(3), ch = values.size(1);
  at::Tensor out = at::empty({n, ch, h, w}, values.options());
  at::Tensor smax = at::empty({n, 1, h, w}, values.options());
  at::Tensor ssum = at::empty({n, 1, h, w}, values.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "attention_forward", [&] {
    forward_rows(planes_of<scalar_t>(centre, neighbours, values, v, slope), n, out.mutable_data_ptr<scalar_t>(),
                 smax.mutable_data_ptr<scalar_t>(), ssum.mutable_data_ptr<scalar_t>());
  });
  return {out, smax, ssum};
}

template <typename T>
struct Gradients {
  const T* grad;  // N x C x H x W
  const T* out;   // N x C x H x W
  const T* smax;  // N x 1 x H x W
  const T* ssum;
  T* centre;      // N x 4 x H x W (written)
  T* neighbours;  // N x 4 x (H+6) x (W+6) (accumulated, zeroed by the caller)
  T* values;      // N x C x (H+6) x (W+6) (accumulated, zeroed by the caller)
  T* v;           // N x 4 partial sums, one row per image
};

constexpr int64_t MAX_VALUES = 16;

// One tap's rows for tap_backward: the tap's softmax weights, sum_k g_k out_k, and per value
// channel k the output gradient, the values and their gradient at the tap's offset; per relation
// c the centre, the neighbour at the offset, their gradients and the partial d v_c.
template <typename T>
struct TapRows {
  const T* wt;
  const T* go;
  const T* gk[MAX_VALUES];
  const T* val[MAX_VALUES];
  T* gval[MAX_VALUES];
  const T* cen[RELATIONS];
  const T* nb[RELATIONS];
  T* gnb[RELATIONS];
  T* gcen[RELATIONS];
  T* gv[RELATIONS];
  T v[RELATIONS];
};

// One tap's whole backward in one pass over the row, a vector of pixels at a time (it was 14
// passes, each reading and writing its partial sums through memory):
//   a = sum_k g_k value_k(q + t);  d value_k(q + t) += g_k w[t];  dz = w[t] (a - sum_k g_k out_k)
//   then per relation c: r = centre_c - neighbour_c(q + t); d v_c += dz LReLU(r);
//   d centre_c += dz v_c LReLU'(r); d neighbour_c(q + t) -= the same.
template <typename T>
void tap_backward(const TapRows<T>& r, int64_t ch, T slope, int64_t w) {
  using V = typename Lanes<T>::V;
  constexpr int64_t L = Lanes<T>::L;
  const auto load = Lanes<T>::load;
  const auto store = Lanes<T>::store;
  const V one = V{} + T(1), sl = V{} + slope, zero = V{};
  int64_t x = 0;
  for (; x + L <= w; x += L) {
    const V wt = load(r.wt + x);
    V a = zero;
    for (int64_t k = 0; k < ch; ++k) {
      const V gk = load(r.gk[k] + x);
      a += gk * load(r.val[k] + x);
      store(r.gval[k] + x, load(r.gval[k] + x) + gk * wt);
    }
    const V dz = wt * (a - load(r.go + x));
    for (int64_t c = 0; c < RELATIONS; ++c) {
      const V rel = load(r.cen[c] + x) - load(r.nb[c] + x);
      const V f = rel > zero ? one : sl;  // LReLU(r) = f r and LReLU'(r) = f
      store(r.gv[c] + x, load(r.gv[c] + x) + dz * (f * rel));
      const V dr = dz * (r.v[c] * f);
      store(r.gcen[c] + x, load(r.gcen[c] + x) + dr);
      store(r.gnb[c] + x, load(r.gnb[c] + x) - dr);
    }
  }
  for (; x < w; ++x) {
    const T wt = r.wt[x];
    T a = T(0);
    for (int64_t k = 0; k < ch; ++k) {
      a += r.gk[k][x] * r.val[k][x];
      r.gval[k][x] += r.gk[k][x] * wt;
    }
    const T dz = wt * (a - r.go[x]);
    for (int64_t c = 0; c < RELATIONS; ++c) {
      const T rel = r.cen[c][x] - r.nb[c][x];
      const T f = rel > T(0) ? T(1) : slope;
      r.gv[c][x] += dz * (f * rel);
      const T dr = dz * (r.v[c] * f);
      r.gcen[c][x] += dr;
      r.gnb[c][x] -= dr;
    }
  }
}

template <typename T>
void backward_image(const Planes<T>& p, const Gradients<T>& g, int64_t n, std::vector<T>& buf) {
  const int64_t h = p.h, w = p.w, ch = p.ch;
  T* wts = buf.data();                 // 49 x w softmax weights
  T* go = wts + TAPS * w;              // sum_k g_k out_k
  T* gv = go + w;                      // 4 x w partial d v_c
  T* gcen = gv + RELATIONS * w;        // 4 x w
  for (int64_t i = 0; i < RELATIONS * w; ++i) gv[i] = T(0);
  const T slope = p.slope;
  for (int64_t y = 0; y < h; ++y) {
    row_logits(p, n, y, wts);
    const T* __restrict m = g.smax + p.plane_offset(n, 0, y, 1);
    const T* __restrict s = g.ssum + p.plane_offset(n, 0, y, 1);
    for (int64_t t = 0; t < TAPS; ++t) {
      T* __restrict l = wts + t * w;
      for (int64_t x = 0; x < w; ++x) l[x] = std::exp(l[x] - m[x]) / s[x];
    }
    for (int64_t x = 0; x < w; ++x) go[x] = T(0);
    for (int64_t k = 0; k < ch; ++k) {
      const T* __restrict gk = g.grad + p.plane_offset(n, k, y, ch);
      const T* __restrict ok = g.out + p.plane_offset(n, k, y, ch);
      for (int64_t x = 0; x < w; ++x) go[x] += gk[x] * ok[x];
    }
    for (int64_t i = 0; i < RELATIONS * w; ++i) gcen[i] = T(0);
    for (int64_t t = 0; t < TAPS; ++t) {
      const int64_t dy = t / KERNEL, dx = t % KERNEL;
      TapRows<T> r;
      r.wt = wts + t * w;
      r.go = go;
      for (int64_t k = 0; k < ch; ++k) {
        const int64_t off = p.value_offset(n, k, y + dy) + dx;
        r.gk[k] = g.grad + p.plane_offset(n, k, y, ch);
        r.val[k] = p.values + off;
        r.gval[k] = g.values + off;
      }
      for (int64_t c = 0; c < RELATIONS; ++c) {
        const int64_t off = p.neighbour_offset(n, c, y + dy) + dx;
        r.cen[c] = p.centre_row(n, c, y);
        r.nb[c] = p.neighbours + off;
        r.gnb[c] = g.neighbours + off;
        r.gcen[c] = gcen + c * w;
        r.gv[c] = gv + c * w;
        r.v[c] = p.v[c];
      }
      tap_backward(r, ch, slope, w);
    }
    for (int64_t c = 0; c < RELATIONS; ++c) {
      T* __restrict dst = g.centre + p.plane_offset(n, c, y, RELATIONS);
      const T* __restrict src = gcen + c * w;
      for (int64_t x = 0; x < w; ++x) dst[x] = src[x];
    }
  }
  for (int64_t c = 0; c < RELATIONS; ++c) {
    T total = T(0);
    for (int64_t x = 0; x < w; ++x) total += gv[c * w + x];
    g.v[n * RELATIONS + c] = total;
  }
}

std::vector<at::Tensor> attention_backward(const at::Tensor& grad, const at::Tensor& centre,
                                           const at::Tensor& neighbours, const at::Tensor& values,
                                           at::ArrayRef<double> v, double slope, const at::Tensor& out,
                                           const at::Tensor& smax, const at::Tensor& ssum) {
  check_planes("attention_backward", centre, neighbours, values, v, slope);
  const int64_t n = centre.size(0), h = centre.size(2), w = centre.size(3), ch = values.size(1);
  for (const at::Tensor* t : {&grad, &out}) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef({n, ch, h, w}) && t->is_contiguous() &&
                    t->scalar_type() == values.scalar_type(),
                "attention_backward: grad and out must be contiguous N x C x H x W like the values");
  }
  for (const at::Tensor* t : {&smax, &ssum}) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef({n, 1, h, w}) && t->is_contiguous() &&
                    t->scalar_type() == values.scalar_type(),
                "attention_backward: smax and ssum must be contiguous N x 1 x H x W");
  }
  TORCH_CHECK(ch <= MAX_VALUES, "attention_backward: up to 16 value channels");
  at::Tensor g_centre = at::empty_like(centre);
  at::Tensor g_neighbours = at::zeros_like(neighbours);
  at::Tensor g_values = at::zeros_like(values);
  at::Tensor g_v_parts = at::empty({n, RELATIONS}, values.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "attention_backward", [&] {
    const Planes<scalar_t> p = planes_of<scalar_t>(centre, neighbours, values, v, slope);
    const Gradients<scalar_t> g{grad.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
                                smax.const_data_ptr<scalar_t>(), ssum.const_data_ptr<scalar_t>(),
                                g_centre.mutable_data_ptr<scalar_t>(), g_neighbours.mutable_data_ptr<scalar_t>(),
                                g_values.mutable_data_ptr<scalar_t>(), g_v_parts.mutable_data_ptr<scalar_t>()};
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> buf((TAPS + 1 + 2 * RELATIONS) * w);
      for (int64_t i = begin; i < end; ++i) backward_image(p, g, i, buf);
    });
  });
  // Per-image partial sums, added in image order: the result does not depend on the thread count.
  return {g_centre, g_neighbours, g_values, g_v_parts.sum(0)};
}

// ---- projection_backward ------------------------------------------------------------------------
//
// Backward of the SAM block's input stage in training: h = LReLU(gamma * xhat + beta) with
// xhat = (x - mean) * invstd the batch-normalised input (BatchNorm in training mode), then the
// attention's projections proj = W h + b (W: 12 x C here: conv1, conv2, conv3 stacked). Given
// d proj (the first two rows from the centre planes, the next two from the neighbour planes, the
// rest from the value planes, all planar and unpadded):
//   dW = sum_q d proj(q) h(q)^T;  db = sum_q d proj(q);  dpre = (W^T d proj) LReLU'(pre)
//   dgamma = sum_q dpre xhat;  dbeta = sum_q dpre
//   dx = gamma invstd (dpre - dbeta / M - xhat dgamma / M)      (M pixels in the batch)
// h is recomputed from x (12 + 1 multiply-adds per channel), never stored. Pass 1 writes dpre
// into dx and sums the rest per fixed chunk of pixels (not per thread, so the sums do not depend
// on the thread count); pass 2 turns dpre into dx in place.

constexpr int64_t PROJ_ROWS = 12;
constexpr int64_t SUM_CHUNKS = 16;  // fixed pixel chunks of the per-channel sums (not per thread)

template <typename T>
struct ProjectionGrad {
  const T *x, *mean, *invstd, *gamma, *beta, *weight;  // x: M x C rows (channels-last); weight: 12 x C
  const T *g_centre, *g_neigh, *g_values;               // N x 2, N x 2, N x values planar planes (H x W)
  int64_t c, h, w, values;
  T slope;
};

template <typename T>
void projection_backward_chunk(const ProjectionGrad<T>& a, int64_t q0, int64_t q1, T* __restrict dx,
                               T* __restrict dw, T* __restrict db, T* __restrict dgamma, T* __restrict dbeta) {
  const int64_t c = a.c, hw = a.h * a.w, rows = 4 + a.values;
  // Per-channel constants and per-pixel scratch on the stack (C <= 256), every inner loop over
  // channels with restrict pointers so that it vectorises.
  T scale[256], shift[256], xhat[256], h[256], slope_of[256];
  T* __restrict sc = scale;
  T* __restrict sh = shift;
  T* __restrict xh = xhat;
  T* __restrict hh = h;
  T* __restrict dl = slope_of;
  for (int64_t ci = 0; ci < c; ++ci) {
    sc[ci] = a.invstd[ci];
    sh[ci] = -a.mean[ci] * a.invstd[ci];
  }
  const T* __restrict gamma = a.gamma;
  const T* __restrict beta = a.beta;
  const T* __restrict weight = a.weight;
  const T slope = a.slope;
  T d[PROJ_ROWS];
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t n = q / hw, pix = q % hw;
    d[0] = a.g_centre[(n * 2 + 0) * hw + pix];
    d[1] = a.g_centre[(n * 2 + 1) * hw + pix];
    d[2] = a.g_neigh[(n * 2 + 0) * hw + pix];
    d[3] = a.g_neigh[(n * 2 + 1) * hw + pix];
    for (int64_t k = 0; k < a.values; ++k) d[4 + k] = a.g_values[(n * a.values + k) * hw + pix];
    const T* __restrict xr = a.x + q * c;
    for (int64_t ci = 0; ci < c; ++ci) {
      xh[ci] = xr[ci] * sc[ci] + sh[ci];
      const T pre = gamma[ci] * xh[ci] + beta[ci];
      hh[ci] = pre > T(0) ? pre : pre * slope;
      dl[ci] = pre > T(0) ? T(1) : slope;
    }
    T* __restrict out = dx + q * c;
    for (int64_t ci = 0; ci < c; ++ci) out[ci] = T(0);
    for (int64_t j = 0; j < rows; ++j) {
      const T dj = d[j];
      db[j] += dj;
      const T* __restrict wr = weight + j * c;
      T* __restrict dwr = dw + j * c;
      for (int64_t ci = 0; ci < c; ++ci) {
        dwr[ci] += dj * hh[ci];
        out[ci] += dj * wr[ci];
      }
    }
    for (int64_t ci = 0; ci < c; ++ci) {
      const T dp = out[ci] * dl[ci];
      out[ci] = dp;
      dgamma[ci] += dp * xh[ci];
      dbeta[ci] += dp;
    }
  }
}

// Batch mean and biased variance per channel of a channels-last map (BatchNorm's training
// statistics), in two passes (mean, then squared deviations: no cancellation), summed per fixed
// chunk of pixels in T's accumulator type and the chunks added in order. torch.var_mean over
// (0, 2, 3) of a channels-last map took ~1.5 ms at 4 x 32 x 64 x 64 on 2 threads.
std::vector<at::Tensor> channel_mean_var(const at::Tensor& x) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "channel_mean_var: float32 or float64 only");
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && x.device().is_cpu() &&
                  x.size(1) <= 256 && x.numel() > 0,
              "channel_mean_var: x must be a non-empty channels-last CPU map of up to 256 channels");
  const int64_t c = x.size(1), m = x.numel() / c;
  at::Tensor mean = at::empty({c}, x.options());
  at::Tensor var = at::empty({c}, x.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "channel_mean_var", [&] {
    using acc_t = double;
    const scalar_t* __restrict src = x.const_data_ptr<scalar_t>();
    const int64_t per = (m + SUM_CHUNKS - 1) / SUM_CHUNKS;
    std::vector<acc_t> parts(SUM_CHUNKS * c);
    std::vector<acc_t> mu(c);
    for (int pass = 0; pass < 2; ++pass) {
      std::fill(parts.begin(), parts.end(), acc_t(0));
      at::parallel_for(0, SUM_CHUNKS, 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          acc_t* __restrict acc = parts.data() + k * c;
          const acc_t* __restrict centre = mu.data();
          const int64_t q0 = std::min(m, k * per), q1 = std::min(m, q0 + per);
          for (int64_t q = q0; q < q1; ++q) {
            const scalar_t* __restrict r = src + q * c;
            if (pass == 0) {
              for (int64_t ci = 0; ci < c; ++ci) acc[ci] += acc_t(r[ci]);
            } else {
              for (int64_t ci = 0; ci < c; ++ci) {
                const acc_t dv = acc_t(r[ci]) - centre[ci];
                acc[ci] += dv * dv;
              }
            }
          }
        }
      });
      for (int64_t k = 1; k < SUM_CHUNKS; ++k)
        for (int64_t ci = 0; ci < c; ++ci) parts[ci] += parts[k * c + ci];
      if (pass == 0)
        for (int64_t ci = 0; ci < c; ++ci) mu[ci] = parts[ci] / acc_t(m);
    }
    scalar_t* mo = mean.mutable_data_ptr<scalar_t>();
    scalar_t* vo = var.mutable_data_ptr<scalar_t>();
    for (int64_t ci = 0; ci < c; ++ci) {
      mo[ci] = scalar_t(mu[ci]);
      vo[ci] = scalar_t(parts[ci] / acc_t(m));
    }
  });
  return {mean, var};
}

std::vector<at::Tensor> projection_backward(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                                            const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& weight,
                                            const at::Tensor& g_centre, const at::Tensor& g_neigh,
                                            const at::Tensor& g_values, double slope) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "projection_backward: float32 or float64 only");
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && x.device().is_cpu(),
              "projection_backward: x must be a channels-last CPU map");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  for (const at::Tensor* t : {&mean, &invstd, &gamma, &beta})
    TORCH_CHECK(t->scalar_type() == dtype && t->is_contiguous() && t->numel() == c,
                "projection_backward: mean, invstd, gamma and beta must be C values of x's dtype");
  TORCH_CHECK(c <= 256, "projection_backward: up to 256 channels");
  const int64_t values = g_values.dim() == 4 ? g_values.size(1) : 0;
  TORCH_CHECK(values >= 1 && 4 + values <= PROJ_ROWS, "projection_backward: 1 to 8 value planes");
  TORCH_CHECK(weight.scalar_type() == dtype && weight.is_contiguous() && weight.dim() == 2 &&
                  weight.size(0) == 4 + values && weight.size(1) == c,
              "projection_backward: weight must be (4 + value planes) x C");
  TORCH_CHECK(g_centre.scalar_type() == dtype && g_neigh.scalar_type() == dtype && g_values.scalar_type() == dtype &&
                  g_centre.is_contiguous() && g_neigh.is_contiguous() && g_values.is_contiguous() &&
                  g_centre.sizes() == at::IntArrayRef({n, 2, h, w}) &&
                  g_neigh.sizes() == at::IntArrayRef({n, 2, h, w}) &&
                  g_values.sizes() == at::IntArrayRef({n, values, h, w}),
              "projection_backward: plane gradients must be contiguous, unpadded N x (2, 2, values) x H x W");
  TORCH_CHECK(slope >= 0.0 && slope <= 1.0, "projection_backward: slope must lie in [0, 1]");
  at::Tensor dx = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t rows = 4 + values, m = n * h * w;
  // Per chunk: dW (rows x C), db (rows), dgamma (C), dbeta (C).
  const int64_t part = rows * c + rows + 2 * c;
  at::Tensor parts = at::zeros({SUM_CHUNKS, part}, x.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "projection_backward", [&] {
    const ProjectionGrad<scalar_t> a{x.const_data_ptr<scalar_t>(), mean.const_data_ptr<scalar_t>(),
                                     invstd.const_data_ptr<scalar_t>(), gamma.const_data_ptr<scalar_t>(),
                                     beta.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                     g_centre.const_data_ptr<scalar_t>(), g_neigh.const_data_ptr<scalar_t>(),
                                     g_values.const_data_ptr<scalar_t>(), c, h, w, values, scalar_t(slope)};
    scalar_t* out = dx.mutable_data_ptr<scalar_t>();
    scalar_t* ps = parts.mutable_data_ptr<scalar_t>();
    const int64_t per = (m + SUM_CHUNKS - 1) / SUM_CHUNKS;
    at::parallel_for(0, SUM_CHUNKS, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        scalar_t* pk = ps + k * part;
        const int64_t q0 = std::min(m, k * per), q1 = std::min(m, q0 + per);
        projection_backward_chunk(a, q0, q1, out, pk, pk + rows * c, pk + rows * c + rows, pk + rows * c + rows + c);
      }
    });
    // Chunk sums in chunk order.
    for (int64_t k = 1; k < SUM_CHUNKS; ++k)
      for (int64_t i = 0; i < part; ++i) ps[i] += ps[k * part + i];
    const scalar_t* dgamma = ps + rows * c + rows;
    const scalar_t* dbeta = dgamma + c;
    std::vector<scalar_t> k1(c), k2(c), k3(c);
    for (int64_t ci = 0; ci < c; ++ci) {
      k1[ci] = a.gamma[ci] * a.invstd[ci];
      k2[ci] = dbeta[ci] / scalar_t(m);
      k3[ci] = dgamma[ci] / scalar_t(m);
    }
    at::parallel_for(0, m, 256, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        const scalar_t* __restrict xr = a.x + q * c;
        scalar_t* __restrict o = out + q * c;
        for (int64_t ci = 0; ci < c; ++ci) {
          const scalar_t xhat = (xr[ci] - a.mean[ci]) * a.invstd[ci];
          o[ci] = k1[ci] * (o[ci] - k2[ci] - xhat * k3[ci]);
        }
      }
    });
  });
  at::Tensor sums = parts[0];
  return {dx, sums.narrow(0, 0, rows * c).view({rows, c}), sums.narrow(0, rows * c, rows),
          sums.narrow(0, rows * c + rows, c), sums.narrow(0, rows * c + rows + c, c)};
}

}  // namespace

TORCH_LIBRARY(jdnet_train, m) {
  m.def("attention_forward(Tensor centre, Tensor neighbours, Tensor values, float[] v, float slope) -> Tensor[]");
  m.def("attention_backward(Tensor grad, Tensor centre, Tensor neighbours, Tensor values, float[] v, float slope, Tensor out, Tensor smax, Tensor ssum) -> Tensor[]");
  m.def("channel_mean_var(Tensor x) -> Tensor[]");
  m.def("projection_backward(Tensor x, Tensor mean, Tensor invstd, Tensor gamma, Tensor beta, Tensor weight, Tensor g_centre, Tensor g_neigh, Tensor g_values, float slope) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(jdnet_train, CPU, m) {
  m.impl("attention_forward", &attention_forward);
  m.impl("attention_backward", &attention_backward);
  m.impl("channel_mean_var", &channel_mean_var);
  m.impl("projection_backward", &projection_backward);
}
