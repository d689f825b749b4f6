#include "infer/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <vector>

#include "infer/gemm.h"
#include "infer/kv_kernels.h"
#include "infer/ops.h"
#include "infer/thread_pool.h"

namespace amalgam::infer {

namespace {

constexpr float kMasked = -std::numeric_limits<float>::infinity();

// Which cache entries a query sees: causal (pj <= p) or not, within the window (0 = none).
struct Mask {
  int64_t window = 0;
  bool causal = true;

  bool visible(int32_t p, int32_t pj) const {
    const int64_t ahead = static_cast<int64_t>(p) - pj;
    if (causal && ahead < 0) return false;
    return window <= 0 || std::abs(ahead) < window;
  }
};

// One query row: softmax over the visible scores, in place; returns 1 / sum of exponentials.
// s (n): scores, masked ones already -inf.
float softmax_row(float* __restrict s, int64_t n) {
  float max_score = kMasked;
  for (int64_t j = 0; j < n; ++j) max_score = std::max(max_score, s[j]);
  for (int64_t j = 0; j < n; ++j) {
    const float x = s[j];
    const float e = exp_approx(x - max_score);
    s[j] = x == kMasked ? 0.0f : e;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += s[j];
  return 1.0f / sum;
}

// Entries [first, last) of s hold every entry visible from some position in [min_p, max_p]
// (first == last when none is).
void visible_span(const KVCache::Sequence& s, int32_t min_p, int32_t max_p, Mask mask,
                  int64_t& first, int64_t& last) {
  const int64_t entries = static_cast<int64_t>(s.pos.size());
  first = entries;
  last = 0;
  for (int64_t j = 0; j < entries; ++j) {
    const int32_t pj = s.pos[j];
    const bool seen = mask.causal ? pj <= max_p && (mask.window <= 0 ||
                                                    static_cast<int64_t>(min_p) - pj < mask.window)
                                  : mask.visible(min_p, pj) || mask.visible(max_p, pj);
    if (seen) {
      first = std::min(first, j);
      last = j + 1;
    }
  }
  if (first > last) first = last;
}

// One token, nq consecutive query heads sharing the kv head at kv_offset (a GQA group), through
// the KV kernels: each cache row is read once for the whole group and widened in registers.
// qh (nq, d) and out (nq, d), contiguous heads.
void attend_group(const KVCache::Sequence& s, KVType type, int64_t layer, int32_t p,
                  const float* qh, int nq, int64_t kv_offset, int64_t kvdim, int64_t d, Mask mask,
                  float scale, std::vector<float>& scores, float* out) {
  const KVKernelSet& kernels = kv_best_kernels();
  const int64_t elem = static_cast<int64_t>(kv_type_size(type)), stride = kvdim * elem;
  int64_t first = 0, last = 0;
  visible_span(s, p, p, mask, first, last);
  const int64_t span = last - first;  // >= 1: a query sees at least itself
  const uint8_t* K = s.k[layer].data() + first * stride + kv_offset * elem;
  const uint8_t* V = s.v[layer].data() + first * stride + kv_offset * elem;
  scores.resize(static_cast<size_t>(nq * span));
  // S (nq, span) = scale * Q (nq, d) . K^T
  kernels.dot_rows(type, K, stride, span, qh, nq, d, scale, scores.data(), span);
  float inv[kKVMaxQueries];
  for (int i = 0; i < nq; ++i) {
    float* row = &scores[i * span];
    for (int64_t j = 0; j < span; ++j) {
      if (!mask.visible(p, s.pos[first + j])) row[j] = kMasked;
    }
    inv[i] = softmax_row(row, span);
  }
  // O (nq, d) = P (nq, span) . V
  std::fill(out, out + nq * d, 0.0f);
  kernels.add_rows(type, V, stride, span, scores.data(), nq, span, d, out);
  for (int i = 0; i < nq; ++i) {
    for (int64_t c = 0; c < d; ++c) out[i * d + c] *= inv[i];
  }
}

struct Scratch {
  std::vector<float> scores, q, o, inv, k, v;
};

// Queries per sgemm block: blocks of a causal prefill only read the keys up to their last
// position, which halves the work of one big square block.
constexpr int64_t kQueryBlock = 64;

// m queries of one sequence, one head, through two sgemm calls per block of kQueryBlock queries.
// rows: batch indices of the queries; q (n, H*d) of the batch; out likewise.
void attend_block(const KVCache::Sequence& s, KVType type, int64_t layer, const BatchToken* tokens,
                  const std::vector<int64_t>& rows, const float* q, int64_t head, int64_t qdim,
                  int64_t kv_offset, int64_t kvdim, int64_t d, Mask mask, float scale, Scratch& w,
                  float* out) {
  for (size_t b0 = 0; b0 < rows.size(); b0 += kQueryBlock) {
    const int64_t m = std::min<int64_t>(kQueryBlock, static_cast<int64_t>(rows.size() - b0));
    const int64_t* block = rows.data() + b0;
    int32_t min_p = tokens[block[0]].pos, max_p = min_p;
    for (int64_t i = 1; i < m; ++i) {
      min_p = std::min(min_p, tokens[block[i]].pos);
      max_p = std::max(max_p, tokens[block[i]].pos);
    }
    int64_t first = 0, last = 0;
    visible_span(s, min_p, max_p, mask, first, last);
    const int64_t span = last - first;  // >= 1: each query sees at least itself
    w.q.resize(static_cast<size_t>(m * d));
    w.o.resize(static_cast<size_t>(m * d));
    w.scores.resize(static_cast<size_t>(m * span));
    w.inv.resize(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) {
      std::copy(q + block[i] * qdim + head * d, q + block[i] * qdim + (head + 1) * d, &w.q[i * d]);
    }
    // K, V (span, d) of this head: read in place (fp32), or widened into scratch (bf16 / f16).
    const int64_t elem = static_cast<int64_t>(kv_type_size(type)), stride = kvdim * elem;
    const uint8_t* Kb = s.k[layer].data() + first * stride + kv_offset * elem;
    const uint8_t* Vb = s.v[layer].data() + first * stride + kv_offset * elem;
    const float* K = reinterpret_cast<const float*>(Kb);
    const float* V = reinterpret_cast<const float*>(Vb);
    int64_t ld = kvdim;
    if (type != KVType::kF32) {
      w.k.resize(static_cast<size_t>(span * d));
      w.v.resize(static_cast<size_t>(span * d));
      kv_best_kernels().widen_rows(type, Kb, stride, span, d, w.k.data());
      kv_best_kernels().widen_rows(type, Vb, stride, span, d, w.v.data());
      K = w.k.data();
      V = w.v.data();
      ld = d;
    }
    // S (m, span) = scale * Qh (m, d) . K^T
    sgemm(false, true, m, span, d, scale, w.q.data(), d, K, ld, 0.0f, w.scores.data(), span);
    for (int64_t i = 0; i < m; ++i) {
      float* row = &w.scores[i * span];
      const int32_t p = tokens[block[i]].pos;
      for (int64_t j = 0; j < span; ++j) {
        if (!mask.visible(p, s.pos[first + j])) row[j] = kMasked;
      }
      w.inv[i] = softmax_row(row, span);
    }
    // O (m, d) = P (m, span) . V (span, d)
    sgemm(false, false, m, d, span, 1.0f, w.scores.data(), span, V, ld, 0.0f, w.o.data(), d);
    for (int64_t i = 0; i < m; ++i) {
      float* o = out + block[i] * qdim + head * d;
      for (int64_t k = 0; k < d; ++k) o[k] = w.o[i * d + k] * w.inv[i];
    }
  }
}

}  // namespace

void attention(const AttentionShape& shape, const BatchToken* tokens, int64_t n, const float* q,
               const KVCache& cache, int64_t layer, float* out) {
  const int64_t H = shape.heads, d = shape.head_dim, group = H / shape.kv_heads;
  const int64_t qdim = H * d, kvdim = shape.kv_heads * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const Mask mask{shape.window, shape.causal};
  // Tokens grouped by sequence, in batch order.
  std::map<int32_t, std::vector<int64_t>> by_seq;
  for (int64_t t = 0; t < n; ++t) by_seq[tokens[t].seq].push_back(t);
  struct Task {
    const KVCache::Sequence* seq;
    const std::vector<int64_t>* rows;  // a block of queries (sgemm path), or null
    int64_t token;                     // the single query (loop path)
    int64_t head;                      // the first query head
    int nq;                            // query heads from `head` on (loop path), all of one kv head
  };
  std::vector<Task> tasks;
  int64_t work = 0;
  for (const auto& [seq, rows] : by_seq) {
    const KVCache::Sequence* s = cache.find(seq);
    work += static_cast<int64_t>(rows.size() * s->pos.size()) * qdim;
    if (static_cast<int64_t>(rows.size()) >= kAttentionGemmMinQueries) {
      for (int64_t h = 0; h < H; ++h) tasks.push_back({s, &rows, -1, h, 1});
    } else {
      // Heads of one kv group together, at most kKVMaxQueries per task.
      for (int64_t t : rows) {
        for (int64_t h = 0; h < H;) {
          const int64_t group_end = (h / group + 1) * group;
          const int64_t nq = std::min<int64_t>(kKVMaxQueries, group_end - h);
          tasks.push_back({s, nullptr, t, h, static_cast<int>(nq)});
          h += nq;
        }
      }
    }
  }
  const int64_t count = static_cast<int64_t>(tasks.size());
  auto run_task = [&](int64_t i, int) {
    thread_local Scratch scratch;
    {
      const Task& task = tasks[i];
      const int64_t kv_offset = (task.head / group) * d;
      if (task.rows != nullptr) {
        attend_block(*task.seq, cache.type(), layer, tokens, *task.rows, q, task.head, qdim,
                     kv_offset, kvdim, d, mask, scale, scratch, out);
      } else {
        attend_group(*task.seq, cache.type(), layer, tokens[task.token].pos,
                     q + task.token * qdim + task.head * d, task.nq, kv_offset, kvdim, d, mask,
                     scale, scratch.scores, out + task.token * qdim + task.head * d);
      }
    }
  };
  if (work >= (1 << 16)) {
    engine_pool().run(count, run_task);
  } else {
    for (int64_t i = 0; i < count; ++i) run_task(i, 0);
  }
}

}  // namespace amalgam::infer
