#include "infer/kv_cache.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "core/error.h"
#include "core/half.h"

namespace amalgam::infer {

namespace {

std::atomic<KVType> g_default_type{KVType::kF32};

// Rounds n floats into the cache's storage type at dst.
void store(KVType type, const float* src, uint8_t* dst, int64_t n) {
  switch (type) {
    case KVType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case KVType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = core::f32_to_bf16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case KVType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = core::f32_to_f16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
  }
}

}  // namespace

KVType parse_kv_type(std::string_view name) {
  if (name == "f32" || name == "fp32") return KVType::kF32;
  if (name == "bf16") return KVType::kBF16;
  if (name == "f16" || name == "fp16") return KVType::kF16;
  fail("KV cache type '{}' is not one of f32, bf16, f16", name);
}

std::string_view kv_type_name(KVType type) {
  switch (type) {
    case KVType::kF32:
      return "f32";
    case KVType::kBF16:
      return "bf16";
    case KVType::kF16:
      return "f16";
  }
  return "?";
}

size_t kv_type_size(KVType type) { return type == KVType::kF32 ? 4 : 2; }

void set_default_kv_type(KVType type) { g_default_type = type; }
KVType default_kv_type() { return g_default_type; }

KVCache::KVCache(int64_t layers, int64_t kv_dim, KVType type, int64_t evict_window)
    : layers_(layers), kv_dim_(kv_dim), type_(type), evict_window_(evict_window) {
  AMALGAM_CHECK(layers > 0 && kv_dim > 0 && evict_window >= 0,
                "KV cache: bad shape ({} layers, kv_dim {}, window {})", layers, kv_dim,
                evict_window);
}

int64_t KVCache::size(int32_t seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 0 : static_cast<int64_t>(it->second.pos.size());
}

std::vector<int32_t> KVCache::sequences() const {
  std::vector<int32_t> out;
  for (const auto& [id, s] : seqs_) out.push_back(id);
  return out;
}

KVCache::Sequence& KVCache::sequence(int32_t seq) {
  auto it = seqs_.find(seq);
  if (it != seqs_.end()) return it->second;
  Sequence& s = seqs_[seq];
  s.k.resize(static_cast<size_t>(layers_));
  s.v.resize(static_cast<size_t>(layers_));
  return s;
}

const KVCache::Sequence* KVCache::find(int32_t seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? nullptr : &it->second;
}

int32_t KVCache::earliest_continuation(int32_t seq) const {
  const Sequence* s = find(seq);
  if (s == nullptr || s->evicted_below == 0) return 0;
  // A query at p sees positions > p - W; none of them may lie below evicted_below.
  return static_cast<int32_t>(s->evicted_below + evict_window_ - 1);
}

void KVCache::check_continuation(int32_t seq, const Sequence& s, int32_t pos,
                                 const char* what) const {
  if (s.evicted_below == 0 || pos >= s.evicted_below + evict_window_ - 1) return;
  fail(
      "KV cache: {} position {} of sequence {} would need entries that sliding-window eviction "
      "already dropped (positions below {}, window {}); the earliest position it can continue "
      "from is {} (clear the sequence, or use a cache without eviction)",
      what, pos, seq, s.evicted_below, evict_window_, s.evicted_below + evict_window_ - 1);
}

void KVCache::check_position(int32_t seq, int32_t pos) const {
  if (const Sequence* s = find(seq)) check_continuation(seq, *s, pos, "evaluating");
}

int64_t KVCache::append(int32_t seq, int32_t pos) {
  Sequence& s = sequence(seq);
  check_continuation(seq, s, pos, "evaluating");
  s.pos.push_back(pos);
  const size_t n = s.pos.size() * static_cast<size_t>(kv_dim_) * kv_type_size(type_);
  for (int64_t l = 0; l < layers_; ++l) {
    s.k[l].resize(n);
    s.v[l].resize(n);
  }
  return static_cast<int64_t>(s.pos.size()) - 1;
}

void KVCache::write(Sequence& s, int64_t layer, int64_t index, const float* k,
                    const float* v) const {
  const size_t row = static_cast<size_t>(kv_dim_) * kv_type_size(type_);
  store(type_, k, s.k[layer].data() + index * row, kv_dim_);
  store(type_, v, s.v[layer].data() + index * row, kv_dim_);
}

void KVCache::copy_prefix(int32_t src, int32_t dst, int32_t n_positions) {
  AMALGAM_CHECK(src != dst, "KV cache: copy_prefix needs two different sequences");
  const Sequence* from = find(src);
  if (from != nullptr && n_positions > 0) {
    check_continuation(src, *from, n_positions, "copying a prefix to continue at");
  }
  clear(dst);
  Sequence& to = sequence(dst);
  if (from == nullptr) return;  // (std::map insertion keeps `from` valid)
  to.evicted_below = n_positions > 0 ? from->evicted_below : 0;
  const size_t row = static_cast<size_t>(kv_dim_) * kv_type_size(type_);
  for (size_t j = 0; j < from->pos.size(); ++j) {
    if (from->pos[j] >= n_positions) continue;
    to.pos.push_back(from->pos[j]);
    for (int64_t l = 0; l < layers_; ++l) {
      to.k[l].insert(to.k[l].end(), from->k[l].begin() + j * row,
                     from->k[l].begin() + (j + 1) * row);
      to.v[l].insert(to.v[l].end(), from->v[l].begin() + j * row,
                     from->v[l].begin() + (j + 1) * row);
    }
  }
}

namespace {

// Keeps the entries j of s for which keep(pos[j]) holds, in order, compacting every layer.
template <typename Keep>
void compact(KVCache::Sequence& s, size_t row, int64_t layers, Keep keep) {
  size_t kept = 0;
  for (size_t j = 0; j < s.pos.size(); ++j) {
    if (!keep(s.pos[j])) continue;
    if (kept != j) {
      s.pos[kept] = s.pos[j];
      for (int64_t l = 0; l < layers; ++l) {
        std::memmove(s.k[l].data() + kept * row, s.k[l].data() + j * row, row);
        std::memmove(s.v[l].data() + kept * row, s.v[l].data() + j * row, row);
      }
    }
    ++kept;
  }
  s.pos.resize(kept);
  for (int64_t l = 0; l < layers; ++l) {
    s.k[l].resize(kept * row);
    s.v[l].resize(kept * row);
  }
}

}  // namespace

void KVCache::truncate(int32_t seq, int32_t from) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  Sequence& s = it->second;
  if (from > 0) check_continuation(seq, s, from, "rewinding to");
  compact(s, static_cast<size_t>(kv_dim_) * kv_type_size(type_), layers_,
          [from](int32_t p) { return p < from; });
  if (from <= 0) s.evicted_below = 0;
}

void KVCache::evict(int32_t seq) {
  if (evict_window_ <= 0) return;
  auto it = seqs_.find(seq);
  if (it == seqs_.end() || it->second.pos.empty()) return;
  Sequence& s = it->second;
  const int32_t newest = *std::max_element(s.pos.begin(), s.pos.end());
  const int64_t limit = static_cast<int64_t>(newest) - evict_window_;  // drop pos <= limit
  if (limit < 0) return;
  int64_t droppable = 0;
  for (int32_t p : s.pos) droppable += p <= limit;
  // Compaction moves every kept entry: only once an eighth of a window has piled up.
  if (droppable == 0 || droppable < std::max<int64_t>(1, evict_window_ / 8)) return;
  compact(s, static_cast<size_t>(kv_dim_) * kv_type_size(type_), layers_,
          [limit](int32_t p) { return p > limit; });
  s.evicted_below = std::max(s.evicted_below, static_cast<int32_t>(limit + 1));
}

size_t KVCache::bytes() const {
  size_t total = 0;
  for (const auto& [id, s] : seqs_) {
    for (int64_t l = 0; l < layers_; ++l) total += s.k[l].size() + s.v[l].size();
  }
  return total;
}

}  // namespace amalgam::infer
