// SAM's pairwise attention for training on the CPU: forward and a fused, hand-written backward,
// for float32 and float64, registered as torch.ops.jdnet_train.*. Built at first use by
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
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
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

// logit[t * w + x] for the 49 taps of row y of image n.
template <typename T>
void row_logits(const Planes<T>& p, int64_t n, int64_t y, T* __restrict logit) {
  const int64_t w = p.w;
  for (int64_t t = 0; t < TAPS; ++t) {
    const int64_t dy = t / KERNEL, dx = t % KERNEL;
    T* __restrict l = logit + t * w;
    for (int64_t c = 0; c < RELATIONS; ++c) {
      const T* __restrict a = p.centre_row(n, c, y);
      const T* __restrict b = p.neighbours + p.neighbour_offset(n, c, y + dy) + dx;
      const T vc = p.v[c], slope = p.slope;
      if (c == 0) {
        for (int64_t x = 0; x < w; ++x) {
          const T r = a[x] - b[x];
          l[x] = vc * (r > T(0) ? r : r * slope);
        }
      } else {
        for (int64_t x = 0; x < w; ++x) {
          const T r = a[x] - b[x];
          l[x] += vc * (r > T(0) ? r : r * slope);
        }
      }
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
    std::vector<T> logit(TAPS * w), peak(w), total(w), acc(w);
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
      for (int64_t k = 0; k < ch; ++k) {
        T* __restrict a = acc.data();
        for (int64_t x = 0; x < w; ++x) a[x] = T(0);
        for (int64_t t = 0; t < TAPS; ++t) {
          const T* __restrict e = logit.data() + t * w;
          const T* __restrict val = p.values + p.value_offset(n, k, y + t / KERNEL) + t % KERNEL;
          for (int64_t x = 0; x < w; ++x) a[x] += e[x] * val[x];
        }
        T* __restrict o = out + p.plane_offset(n, k, y, ch);
        for (int64_t x = 0; x < w; ++x) o[x] = a[x] / s[x];
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

// The relation's share of the backward for one tap over n pixels: with r = a - b,
// gv += dz LReLU(r); d r = dz v LReLU'(r) goes to the centre (ga) and, negated, to the neighbour (gb).
template <typename T>
inline void relation_backward(const T* __restrict a, const T* __restrict b, const T* __restrict dz, T v, T slope,
                              T* __restrict gv, T* __restrict ga, T* __restrict gb, int64_t n) {
  for (int64_t x = 0; x < n; ++x) {
    const T r = a[x] - b[x];
    const T f = r > T(0) ? T(1) : slope;  // LReLU(r) = f r and LReLU'(r) = f
    gv[x] += dz[x] * (f * r);
    const T dr = dz[x] * (v * f);
    ga[x] += dr;
    gb[x] -= dr;
  }
}

template <typename T>
void backward_image(const Planes<T>& p, const Gradients<T>& g, int64_t n, std::vector<T>& buf) {
  const int64_t h = p.h, w = p.w, ch = p.ch;
  T* wts = buf.data();                 // 49 x w softmax weights
  T* go = wts + TAPS * w;              // sum_k g_k out_k
  T* dz = go + w;
  T* acc = dz + w;
  T* gv = acc + w;                     // 4 x w partial d v_c
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
      const T* __restrict wt = wts + t * w;
      T* __restrict a = acc;
      for (int64_t x = 0; x < w; ++x) a[x] = T(0);
      for (int64_t k = 0; k < ch; ++k) {
        const T* __restrict gk = g.grad + p.plane_offset(n, k, y, ch);
        const int64_t off = p.value_offset(n, k, y + dy) + dx;
        const T* __restrict val = p.values + off;
        T* __restrict gval = g.values + off;
        for (int64_t x = 0; x < w; ++x) {
          a[x] += gk[x] * val[x];
          gval[x] += gk[x] * wt[x];
        }
      }
      T* __restrict d = dz;
      for (int64_t x = 0; x < w; ++x) d[x] = wt[x] * (a[x] - go[x]);
      for (int64_t c = 0; c < RELATIONS; ++c) {
        const int64_t off = p.neighbour_offset(n, c, y + dy) + dx;
        relation_backward(p.centre_row(n, c, y), p.neighbours + off, dz, p.v[c], slope, gv + c * w, gcen + c * w,
                          g.neighbours + off, w);
      }
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
      std::vector<scalar_t> buf((TAPS + 3 + 2 * RELATIONS) * w);
      for (int64_t i = begin; i < end; ++i) backward_image(p, g, i, buf);
    });
  });
  // Per-image partial sums, added in image order: the result does not depend on the thread count.
  return {g_centre, g_neighbours, g_values, g_v_parts.sum(0)};
}

}  // namespace

TORCH_LIBRARY(jdnet_train, m) {
  m.def("attention_forward(Tensor centre, Tensor neighbours, Tensor values, float[] v, float slope) -> Tensor[]");
  m.def("attention_backward(Tensor grad, Tensor centre, Tensor neighbours, Tensor values, float[] v, float slope, Tensor out, Tensor smax, Tensor ssum) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(jdnet_train, CPU, m) {
  m.impl("attention_forward", &attention_forward);
  m.impl("attention_backward", &attention_backward);
}
