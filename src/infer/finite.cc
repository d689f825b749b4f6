#include "infer/finite.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "gguf/quant.h"
#include "infer/thread_pool.h"
#include "tensor/convert.h"
#include "tensor/dtype.h"
#include "tensor/tensor.h"

namespace amalgam::infer {

namespace {

std::atomic<bool> g_check_finite{true};

}  // namespace

void set_check_finite_on_load(bool check) { g_check_finite.store(check); }
bool check_finite_on_load() { return g_check_finite.load(); }

void check_finite_weights(const WeightMap& weights, const std::string& where) {
  std::vector<std::pair<const std::string*, const tensor::TensorView*>> items;
  for (const auto& [name, view] : weights) {
    if (tensor::is_float_dtype(view.dtype) && view.data != nullptr) items.emplace_back(&name, &view);
  }
  constexpr size_t kNone = std::numeric_limits<size_t>::max();
  std::vector<size_t> first_bad(items.size(), kNone);
  engine_pool().run(static_cast<int64_t>(items.size()), [&](int64_t i, int) {
    const tensor::TensorView& v = *items[i].second;
    const size_t n = static_cast<size_t>(v.numel());
    const size_t bad = tensor::find_nonfinite(v.dtype, v.data, n);
    if (bad < n) first_bad[i] = bad;
  });
  for (size_t i = 0; i < items.size(); ++i) {
    if (first_bad[i] == kNone) continue;
    const tensor::TensorView& v = *items[i].second;
    float value = 0;
    tensor::to_f32(v.dtype, v.data + first_bad[i] * tensor::dtype_size(v.dtype), &value, 1);
    fail("{}: tensor '{}' element {} is {}; the model's outputs would all be NaN (pass "
         "--no-check-finite to load it anyway)",
         where, *items[i].first, first_bad[i], std::isnan(value) ? "NaN" : "Inf");
  }
}

void check_finite_quantized(const QuantizedMap& quantized, const std::string& where) {
  std::vector<std::pair<const std::string*, const gguf::QuantizedMatrix*>> items;
  for (const auto& [name, q] : quantized) items.emplace_back(&name, &q);
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::vector<int64_t> first_bad(items.size(), kNone);
  std::vector<float> bad_value(items.size(), 0.0f);
  engine_pool().run(static_cast<int64_t>(items.size()), [&](int64_t i, int) {
    const gguf::QuantizedMatrix& q = *items[i].second;
    const uint64_t rb = gguf::row_bytes(q.type, q.cols);
    std::vector<float> row(static_cast<size_t>(q.cols));
    for (int64_t r = 0; r < q.rows; ++r) {
      gguf::dequantize_row(q.type, q.data + r * rb, q.cols, row.data());
      for (int64_t c = 0; c < q.cols; ++c) {
        if (!std::isfinite(row[c])) {
          first_bad[i] = r * q.cols + c;
          bad_value[i] = row[c];
          return;
        }
      }
    }
  });
  for (size_t i = 0; i < items.size(); ++i) {
    if (first_bad[i] == kNone) continue;
    fail("{}: tensor '{}' element {} is {}; the model's outputs would all be NaN (pass "
         "--no-check-finite to load it anyway)",
         where, *items[i].first, first_bad[i], std::isnan(bad_value[i]) ? "NaN" : "Inf");
  }
}

}  // namespace amalgam::infer
