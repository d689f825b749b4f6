#include "infer/finite.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
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

}  // namespace amalgam::infer
