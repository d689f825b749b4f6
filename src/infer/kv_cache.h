// Key/value cache, one growing store per sequence id. Keys are stored after RoPE. Entries keep
// their positions, so masking is by position and any order of arrival works.
//
// Storage type: fp32 (exact, the default) or BF16/F16 (half the memory and the bandwidth the
// attention reads): values are rounded to nearest-even when written and widened to fp32 when the
// attention reads them; all arithmetic stays fp32.
//
// Sliding-window eviction: when every layer of the model attends within a window W (Mistral),
// an entry at position pj is invisible to a query at any position p >= newest when
// pj <= newest - W. Such entries are dropped (in batches, so that compaction costs O(1) per
// token), so a long generation keeps at most W + W/8 entries per layer. A sequence then cannot go
// back: truncate/copy_prefix to a position that would need a dropped entry, or a forward pass
// with such a position, fails with an error naming the sequence and the earliest position it
// can continue from.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace amalgam::infer {

enum class KVType { kF32, kBF16, kF16 };

// "f32" | "bf16" | "f16" (the CLI's --kv-cache); fails naming the accepted values.
KVType parse_kv_type(std::string_view name);
std::string_view kv_type_name(KVType type);
size_t kv_type_size(KVType type);

// The storage type of caches made by Model::new_cache() (the CLI's --kv-cache); process-wide, as
// the engine's thread count.
void set_default_kv_type(KVType type);
KVType default_kv_type();

class KVCache {
 public:
  struct Sequence {
    std::vector<int32_t> pos;                // (n) position of each entry
    std::vector<std::vector<uint8_t>> k, v;  // per layer, (n, kv_dim) values of the cache's type
    // Positions below this were dropped by eviction (0: none were).
    int32_t evicted_below = 0;
  };

  // `evict_window` > 0: drop entries the window can no longer see (see above); 0 keeps all.
  KVCache(int64_t layers, int64_t kv_dim, KVType type = KVType::kF32, int64_t evict_window = 0);

  int64_t layers() const { return layers_; }
  int64_t kv_dim() const { return kv_dim_; }
  KVType type() const { return type_; }
  int64_t evict_window() const { return evict_window_; }
  // Number of entries of a sequence (0 if unknown).
  int64_t size(int32_t seq) const;
  bool has(int32_t seq) const { return seqs_.count(seq) != 0; }
  std::vector<int32_t> sequences() const;

  void clear(int32_t seq) { seqs_.erase(seq); }
  void clear() { seqs_.clear(); }
  // Makes `dst` a copy of the entries of `src` with position < n_positions (a shared prompt
  // prefix evaluated once, then continued differently). Fails if eviction dropped entries of
  // `src` that a continuation at n_positions would see.
  void copy_prefix(int32_t src, int32_t dst, int32_t n_positions);
  // Drops the entries of `seq` with position >= from (rewinds a sequence). Fails, leaving the
  // sequence unchanged, if eviction dropped entries a continuation at `from` would see
  // (from == 0, which empties the sequence, is always allowed).
  void truncate(int32_t seq, int32_t from);
  // The lowest position `seq` can be continued from (0 unless entries were evicted).
  int32_t earliest_continuation(int32_t seq) const;
  // Fails, naming the sequence, if a query at `pos` would need entries eviction dropped.
  void check_position(int32_t seq, int32_t pos) const;

  // Used by the forward pass.
  Sequence& sequence(int32_t seq);
  const Sequence* find(int32_t seq) const;
  // Appends an entry at `pos` (k/v left zero until the layers write them); returns its index.
  // Fails if `pos` would see entries that eviction dropped.
  int64_t append(int32_t seq, int32_t pos);
  // Stores k, v (kv_dim floats each, rounded to the cache's type) as entry `index` of `layer`.
  void write(Sequence& s, int64_t layer, int64_t index, const float* k, const float* v) const;
  // Drops the entries of `seq` no later query can see, once there are enough to be worth the
  // move; a no-op without an eviction window.
  void evict(int32_t seq);
  // Bytes held by the stored keys and values (entries x layers x 2 x kv_dim x type size).
  size_t bytes() const;

 private:
  void check_continuation(int32_t seq, const Sequence& s, int32_t pos, const char* what) const;

  int64_t layers_;
  int64_t kv_dim_;
  KVType type_;
  int64_t evict_window_;
  std::map<int32_t, Sequence> seqs_;
};

}  // namespace amalgam::infer
