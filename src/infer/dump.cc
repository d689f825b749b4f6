#include "infer/dump.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"

namespace amalgam::infer {

const std::vector<std::string_view>& Dumper::known_tensors() {
  static const std::vector<std::string_view> names = {
      "embd",   "attn_norm",   "q",       "k",        "v",           "q_rope", "k_rope",
      "attn",   "attn_out",    "ffn_inp", "ffn_norm", "gate",        "up",     "ffn_act",
      "router", "shared_gate", "ffn_out", "l_out",    "result_norm", "logits"};
  return names;
}

Dumper::Dumper(std::vector<std::string> selectors) {
  const auto& known = known_tensors();
  for (auto& s : selectors) {
    if (s == "all") {
      all_ = true;
      continue;
    }
    std::string base = s;
    auto dot = s.rfind('.');
    if (dot != std::string::npos) {
      const std::string layer = s.substr(dot + 1);
      bool numeric = !layer.empty() && std::all_of(layer.begin(), layer.end(), ::isdigit);
      if (numeric) base = s.substr(0, dot);
    }
    if (std::find(known.begin(), known.end(), base) == known.end()) {
      fail("--dump {}: unknown tensor '{}'; known: {}", s, base, fmt::join(known, ", "));
    }
    selectors_.insert(std::move(s));
  }
}

std::string Dumper::name(std::string_view tensor, int64_t layer) {
  return layer < 0 ? std::string(tensor) : fmt::format("{}.{}", tensor, layer);
}

bool Dumper::wants(std::string_view tensor, int64_t layer) const {
  if (all_) return true;
  if (selectors_.count(tensor)) return true;
  return layer >= 0 && selectors_.count(name(tensor, layer));
}

void Dumper::record(std::string_view tensor, int64_t layer, const float* data, int64_t rows,
                    int64_t cols) {
  if (!wants(tensor, layer)) return;
  DumpTensor& t = tensors_[name(tensor, layer)];
  AMALGAM_CHECK(t.rows == 0 || t.cols == cols, "dump {}: width changed from {} to {}",
                name(tensor, layer), t.cols, cols);
  t.cols = cols;
  t.rows += rows;
  t.data.insert(t.data.end(), data, data + rows * cols);
}

}  // namespace amalgam::infer
