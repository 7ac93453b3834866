// oneDNN 2-D convolution for XLA:CPU through the XLA FFI (used by kdjax/ops/_conv2d.py).
//
// Three handlers, float32, groups 1, dilation 1:
//   KdjaxConv2dFwd          y  = conv(x, w)                    x [N,H,W,C], w [KH,KW,C,O] -> y [N,OH,OW,O]
//   KdjaxConv2dBwdData      dx = conv_transpose(dy, w)         dy [N,OH,OW,O], w -> dx [N,H,W,C]
//   KdjaxConv2dBwdWeights   dw = sum_n x (*) dy                x, dy -> dw [KH,KW,C,O]
// Attributes: stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right (int64).
// Activations stay NHWC (oneDNN "nhwc"); the weights are HWIO (Flax) in memory and are
// reordered to the layout oneDNN picks ("any") when it picks another one. Primitives are built
// once per (kind, shapes, strides, padding) and cached; every call gets its own scratchpad, so
// concurrent calls from XLA's threads are safe.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum Kind : int { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };

// N, H, W, C, KH, KW, O, OH, OW, stride_h, stride_w, pad t/b/l/r, kind
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int>;

struct Entry {
  dnnl::primitive conv;
  memory::desc weights_plain;   // HWIO as Flax stores it
  memory::desc weights_conv;    // what the primitive wants
  bool reorder_weights = false;
  dnnl::reorder weights_reorder;  // plain -> conv (fwd, bwd data) or conv -> plain (bwd weights)
  memory::desc scratchpad;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A per-thread, grow-only, 64-byte aligned buffer; slot 0 scratchpad, slot 1 weights.
void* ThreadBuffer(int slot, size_t bytes) {
  struct Buf {
    void* ptr = nullptr;
    size_t size = 0;
    ~Buf() { std::free(ptr); }
  };
  thread_local Buf bufs[2];
  Buf& b = bufs[slot];
  if (bytes > b.size) {
    std::free(b.ptr);
    size_t rounded = (bytes + 63) / 64 * 64;
    b.ptr = std::aligned_alloc(64, rounded);
    b.size = b.ptr ? rounded : 0;
  }
  return b.ptr;
}

const Entry& GetEntry(const Key& key) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Entry>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;

  auto [n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, kind] = key;
  auto& eng = Engine();
  memory::desc src_md({n, c, h, w}, dt::f32, tag::nhwc);
  memory::desc dst_md({n, o, oh, ow}, dt::f32, tag::nhwc);
  memory::desc wei_plain({o, c, kh, kw}, dt::f32, tag::hwio);
  memory::desc wei_any({o, c, kh, kw}, dt::f32, tag::any);
  memory::dims strides{sh, sw}, pad_l{pt, pl}, pad_r{pb, pr};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);

  auto entry = std::make_unique<Entry>();
  entry->weights_plain = wei_plain;
  dnnl::convolution_forward::primitive_desc fwd_pd(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src_md,
      wei_any, dst_md, strides, pad_l, pad_r, attr);
  if (kind == kFwd) {
    entry->conv = dnnl::convolution_forward(fwd_pd);
    entry->weights_conv = fwd_pd.weights_desc();
    entry->scratchpad = fwd_pd.scratchpad_desc();
  } else if (kind == kBwdData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        eng, dnnl::algorithm::convolution_direct, src_md, wei_any, dst_md, strides, pad_l,
        pad_r, fwd_pd, attr);
    entry->conv = dnnl::convolution_backward_data(pd);
    entry->weights_conv = pd.weights_desc();
    entry->scratchpad = pd.scratchpad_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        eng, dnnl::algorithm::convolution_direct, src_md, wei_any, dst_md, strides, pad_l,
        pad_r, fwd_pd, attr);
    entry->conv = dnnl::convolution_backward_weights(pd);
    entry->weights_conv = pd.diff_weights_desc();
    entry->scratchpad = pd.scratchpad_desc();
  }
  entry->reorder_weights = entry->weights_conv != wei_plain;
  if (entry->reorder_weights) {
    if (kind == kBwdWeights) {
      entry->weights_reorder = dnnl::reorder(
          dnnl::reorder::primitive_desc(eng, entry->weights_conv, eng, wei_plain));
    } else {
      entry->weights_reorder = dnnl::reorder(
          dnnl::reorder::primitive_desc(eng, wei_plain, eng, entry->weights_conv));
    }
  }
  const Entry& ref = *entry;
  cache.emplace(key, std::move(entry));
  return ref;
}

ffi::Error Run(Kind kind, ffi::AnyBuffer::Dimensions x_dims, ffi::AnyBuffer::Dimensions w_dims,
               ffi::AnyBuffer::Dimensions y_dims, float* x, float* w, float* y, int64_t sh,
               int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  if (x_dims.size() != 4 || w_dims.size() != 4 || y_dims.size() != 4) {
    return ffi::Error::InvalidArgument("kdjax conv2d: x, w and y must all have rank 4");
  }
  int64_t n = x_dims[0], h = x_dims[1], wd = x_dims[2], c = x_dims[3];
  int64_t kh = w_dims[0], kw = w_dims[1], o = w_dims[3];
  int64_t oh = y_dims[1], ow = y_dims[2];
  if (w_dims[2] != c || y_dims[0] != n || y_dims[3] != o) {
    return ffi::Error::InvalidArgument("kdjax conv2d: x [N,H,W,C], w [KH,KW,C,O], y [N,OH,OW,O] "
                                       "do not match");
  }
  if (n == 0 || h == 0 || wd == 0 || oh == 0 || ow == 0 || c == 0 || o == 0 || kh == 0 ||
      kw == 0) {  // an empty sum: the result (whichever buffer it is) is all zeros
    if (kind == kFwd) std::memset(y, 0, sizeof(float) * n * oh * ow * o);
    if (kind == kBwdData) std::memset(x, 0, sizeof(float) * n * h * wd * c);
    if (kind == kBwdWeights) std::memset(w, 0, sizeof(float) * kh * kw * c * o);
    return ffi::Error::Success();
  }
  try {
    const Entry& e = GetEntry(Key{n, h, wd, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, kind});
    auto& eng = Engine();
    thread_local dnnl::stream stream(Engine());
    memory src(memory::desc({n, c, h, wd}, dt::f32, tag::nhwc), eng, x);
    memory dst(memory::desc({n, o, oh, ow}, dt::f32, tag::nhwc), eng, y);
    memory wei_plain(e.weights_plain, eng, w);
    memory wei = wei_plain;
    if (e.reorder_weights) {
      wei = memory(e.weights_conv, eng, ThreadBuffer(1, e.weights_conv.get_size()));
    }
    memory scratch(e.scratchpad, eng, ThreadBuffer(0, e.scratchpad.get_size() + 64));
    if (kind == kFwd) {
      if (e.reorder_weights) e.weights_reorder.execute(stream, wei_plain, wei);
      e.conv.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei},
                              {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (kind == kBwdData) {
      // here x is dx (the result) and y is dy (the input)
      if (e.reorder_weights) e.weights_reorder.execute(stream, wei_plain, wei);
      e.conv.execute(stream, {{DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_WEIGHTS, wei},
                              {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      // here w is dw (the result)
      e.conv.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_WEIGHTS, wei},
                              {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
      if (e.reorder_weights) e.weights_reorder.execute(stream, wei, wei_plain);
    }
    stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("kdjax conv2d (oneDNN): ") + err.what());
  } catch (const std::exception& err) {
    return ffi::Error::Internal(std::string("kdjax conv2d: ") + err.what());
  }
  return ffi::Error::Success();
}

ffi::Error Fwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
               int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Run(kFwd, x.dimensions(), w.dimensions(), y->dimensions(), x.typed_data(),
             w.typed_data(), y->typed_data(), sh, sw, pt, pb, pl, pr);
}

ffi::Error BwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                   int64_t pb, int64_t pl, int64_t pr) {
  return Run(kBwdData, dx->dimensions(), w.dimensions(), dy.dimensions(), dx->typed_data(),
             w.typed_data(), dy.typed_data(), sh, sw, pt, pb, pl, pr);
}

ffi::Error BwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t pt,
                      int64_t pb, int64_t pl, int64_t pr) {
  return Run(kBwdWeights, x.dimensions(), dw->dimensions(), dy.dimensions(), x.typed_data(),
             dw->typed_data(), dy.typed_data(), sh, sw, pt, pb, pl, pr);
}

}  // namespace

#define KDJAX_CONV_ATTRS                                                              \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")       \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(KdjaxConv2dFwd, Fwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() KDJAX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(KdjaxConv2dBwdData, BwdData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() KDJAX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(KdjaxConv2dBwdWeights, BwdWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() KDJAX_CONV_ATTRS);

extern "C" int KdjaxOnednnVersionMajor() { return dnnl_version()->major; }
