// The decoder forward pass (transformers' LlamaModel / MistralModel / Qwen2Model /
// MixtralModel / Qwen2MoeModel semantics, llama.cpp's batch semantics). One function per stage,
// shapes in the comments: n = tokens of the micro-batch, D = hidden, H/Hkv = query/kv heads, d =
// head_dim, I = intermediate size, E = experts, V = vocab.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/interrupt.h"
#include "infer/attention.h"
#include "infer/matmul.h"
#include "infer/model.h"
#include "infer/ops.h"

namespace amalgam::infer {

namespace {

void record(Dumper* dump, std::string_view name, int64_t layer, const float* data, int64_t rows,
            int64_t cols) {
  if (dump != nullptr && dump->wants(name, layer)) dump->record(name, layer, data, rows, cols);
}

// Runs f, adding its wall time to `stage` when profiling.
template <typename F>
void timed(StageTimes* profile, const char* stage, F&& f) {
  if (profile == nullptr) {
    f();
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  f();
  profile->add(stage, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

// y (n, rows) = x (n, cols) . W^T + b
void linear(const Linear& l, const float* x, int64_t n, float* y) {
  matmul(l.w, x, n, y);
  if (!l.bias.empty()) add_bias(y, l.bias.data(), n, l.w.rows);
}

}  // namespace

int64_t Model::eviction_window() const {
  int64_t window = 0;
  for (const LayerWeights& lw : weights_.layers) {
    if (lw.window <= 0) return 0;
    window = std::max(window, lw.window);
  }
  return window;
}

KVCache Model::new_cache(KVType type, bool evict) const {
  return KVCache(config_.num_layers, config_.num_kv_heads * config_.head_dim, type,
                 evict ? eviction_window() : 0);
}

ForwardResult Model::forward(const Batch& batch, KVCache& cache,
                             const ForwardOptions& options) const {
  AMALGAM_CHECK(cache.layers() == config_.num_layers &&
                    cache.kv_dim() == config_.num_kv_heads * config_.head_dim,
                "KV cache was made for another model shape");
  const int64_t window = eviction_window();
  AMALGAM_CHECK(cache.evict_window() == 0 || (window > 0 && cache.evict_window() >= window),
                "KV cache evicts by a window of {} but the model attends within {}",
                cache.evict_window(),
                window > 0 ? fmt::format("{}", window) : "the whole sequence");
  AMALGAM_CHECK(options.micro_batch > 0, "micro_batch must be positive");
  const int64_t n = static_cast<int64_t>(batch.size());
  AMALGAM_CHECK(!options.unmasked || n <= options.micro_batch,
                "unmasked attention needs the whole batch ({} tokens) in one micro-batch ({})", n,
                options.micro_batch);
  ForwardResult result;
  result.vocab = vocab_size();
  std::map<int32_t, int64_t> last_of_seq;
  const int64_t context = context_length();
  for (int64_t i = 0; i < n; ++i) {
    const BatchToken& t = batch.tokens[i];
    AMALGAM_CHECK(t.id >= 0 && t.id < weights_.embed.rows,
                  "batch token {}: id {} outside the vocabulary of {} embeddings", i, t.id,
                  weights_.embed.rows);
    AMALGAM_CHECK(t.pos >= 0, "batch token {}: negative position {}", i, t.pos);
    if (context > 0 && t.pos >= context) {
      fail("position {} is past the model's context of {}", t.pos, context_description());
    }
    AMALGAM_CHECK(t.seq >= 0, "batch token {}: negative sequence id {}", i, t.seq);
    if (t.logits) result.rows.push_back(static_cast<int32_t>(i));
    last_of_seq[t.seq] = i;
  }
  result.logits.resize(result.rows.size() * static_cast<size_t>(result.vocab));
  if (options.hidden_states) {
    for (const auto& [seq, index] : last_of_seq) {
      result.hidden[seq].assign(static_cast<size_t>((config_.num_layers + 1) * config_.hidden_size),
                                0.0f);
    }
  }
  for (int64_t start = 0; start < n; start += options.micro_batch) {
    // Every command that runs the engine (generate, eval, perplexity, soup, evolve) passes here
    // often: Ctrl-C / SIGTERM stop it within one micro-batch.
    core::check_interrupted();
    const int64_t m = std::min(options.micro_batch, n - start);
    forward_micro_batch(batch.tokens.data() + start, m, start, cache, last_of_seq, options, result);
  }
  return result;
}

void Model::forward_micro_batch(const BatchToken* tokens, int64_t n, int64_t first_index,
                                KVCache& cache, const std::map<int32_t, int64_t>& last_of_seq,
                                const ForwardOptions& options, ForwardResult& result) const {
  const io::ModelConfig& c = config_;
  const int64_t D = c.hidden_size, H = c.num_heads, Hkv = c.num_kv_heads, d = c.head_dim;
  const int64_t qdim = H * d, kvdim = Hkv * d;
  Dumper* dump = options.dump;
  StageTimes* prof = options.profile;

  // Tokens of this micro-batch that are the last of their sequence in the whole batch.
  std::vector<std::pair<int64_t, int32_t>> hidden_rows;  // (token, seq)
  if (options.hidden_states) {
    for (int64_t t = 0; t < n; ++t) {
      if (last_of_seq.at(tokens[t].seq) == first_index + t)
        hidden_rows.push_back({t, tokens[t].seq});
    }
  }
  auto record_hidden = [&](int64_t slot, const float* rows_src) {
    for (const auto& [t, seq] : hidden_rows) {
      std::copy(rows_src + t * D, rows_src + (t + 1) * D, result.hidden.at(seq).begin() + slot * D);
    }
  };

  // x (n, D) = E[id]
  std::vector<float> x(static_cast<size_t>(n * D));
  for (int64_t t = 0; t < n; ++t) rows_to_f32(weights_.embed, tokens[t].id, 1, x.data() + t * D);
  record(dump, "embd", -1, x.data(), n, D);

  // Cache slots, and RoPE angles (rd/2 per token) shared by all layers.
  // Every position is checked before anything is appended: a refused micro-batch leaves the
  // cache as it was.
  for (int64_t t = 0; t < n; ++t) cache.check_position(tokens[t].seq, tokens[t].pos);
  std::vector<int64_t> entry(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) entry[t] = cache.append(tokens[t].seq, tokens[t].pos);
  const int64_t rd = rope_.rotary_dim(), half = rd / 2;
  std::vector<float> cos(static_cast<size_t>(n * half)), sin(static_cast<size_t>(n * half));
  for (int64_t t = 0; t < n; ++t) rope_.angles(tokens[t].pos, &cos[t * half], &sin[t * half]);

  std::vector<float> h(static_cast<size_t>(n * D)), out(static_cast<size_t>(n * D));
  std::vector<float> q(static_cast<size_t>(n * qdim)), att(static_cast<size_t>(n * qdim));
  std::vector<float> k(static_cast<size_t>(n * kvdim)), v(static_cast<size_t>(n * kvdim));
  std::vector<float> ffn_scratch;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = weights_.layers[l];
    record_hidden(l, x.data());
    // h = RMSNorm(x); q, k, v = h.Wq^T + bq, ...
    timed(prof, "norm",
          [&] { rms_norm(x.data(), lw.attn_norm.data(), n, D, c.rms_norm_eps, h.data()); });
    record(dump, "attn_norm", l, h.data(), n, D);
    timed(prof, "qkv", [&] {
      const MatmulJob jobs[] = {{lw.q.w, q.data()}, {lw.k.w, k.data()}, {lw.v.w, v.data()}};
      matmul_many(jobs, h.data(), n);
      if (!lw.q.bias.empty()) add_bias(q.data(), lw.q.bias.data(), n, qdim);
      if (!lw.k.bias.empty()) add_bias(k.data(), lw.k.bias.data(), n, kvdim);
      if (!lw.v.bias.empty()) add_bias(v.data(), lw.v.bias.data(), n, kvdim);
    });
    record(dump, "q", l, q.data(), n, qdim);
    record(dump, "k", l, k.data(), n, kvdim);
    record(dump, "v", l, v.data(), n, kvdim);
    for (int64_t t = 0; t < n; ++t) {
      Rope::apply(&q[t * qdim], H, d, rd, &cos[t * half], &sin[t * half]);
      Rope::apply(&k[t * kvdim], Hkv, d, rd, &cos[t * half], &sin[t * half]);
    }
    record(dump, "q_rope", l, q.data(), n, qdim);
    record(dump, "k_rope", l, k.data(), n, kvdim);
    for (int64_t t = 0; t < n; ++t) {
      cache.write(cache.sequence(tokens[t].seq), l, entry[t], &k[t * kvdim], &v[t * kvdim]);
    }
    timed(prof, "attention", [&] {
      attention({H, Hkv, d, lw.window, !options.unmasked}, tokens, n, q.data(), cache, l,
                att.data());
    });
    record(dump, "attn", l, att.data(), n, qdim);
    timed(prof, "o_proj", [&] { linear(lw.o, att.data(), n, out.data()); });
    record(dump, "attn_out", l, out.data(), n, D);
    add_into(x.data(), out.data(), n * D);
    record(dump, "ffn_inp", l, x.data(), n, D);
    timed(prof, "norm",
          [&] { rms_norm(x.data(), lw.ffn_norm.data(), n, D, c.rms_norm_eps, h.data()); });
    record(dump, "ffn_norm", l, h.data(), n, D);
    if (lw.experts.empty()) {
      feed_forward_dense(lw, h.data(), n, l, options, ffn_scratch, out.data());
    } else {
      feed_forward_moe(lw, h.data(), n, l, options, out.data());
    }
    record(dump, "ffn_out", l, out.data(), n, D);
    add_into(x.data(), out.data(), n * D);
    record(dump, "l_out", l, x.data(), n, D);
  }

  // Every query of this micro-batch is done with the cache: drop what no later one can see.
  if (cache.evict_window() > 0) {
    int32_t previous = -1;
    for (int64_t t = 0; t < n; ++t) {
      if (tokens[t].seq != previous) cache.evict(tokens[t].seq);
      previous = tokens[t].seq;
    }
  }

  if (!hidden_rows.empty()) {
    rms_norm(x.data(), weights_.final_norm.data(), n, D, c.rms_norm_eps, h.data());
    record_hidden(c.num_layers, h.data());
  }
  // logits (m, V) = RMSNorm(x[rows with logits]) . Wout^T
  std::vector<int64_t> wanted;
  for (int64_t t = 0; t < n; ++t) {
    if (tokens[t].logits) wanted.push_back(t);
  }
  if (wanted.empty()) return;
  const int64_t m = static_cast<int64_t>(wanted.size());
  std::vector<float> xs(static_cast<size_t>(m * D)), hs(static_cast<size_t>(m * D));
  for (int64_t i = 0; i < m; ++i) {
    std::copy(&x[wanted[i] * D], &x[(wanted[i] + 1) * D], &xs[i * D]);
  }
  rms_norm(xs.data(), weights_.final_norm.data(), m, D, c.rms_norm_eps, hs.data());
  record(dump, "result_norm", -1, hs.data(), m, D);
  const auto first_row =
      std::lower_bound(result.rows.begin(), result.rows.end(), static_cast<int32_t>(first_index)) -
      result.rows.begin();
  float* logits = result.logits.data() + first_row * result.vocab;
  timed(prof, "lm_head", [&] { matmul(weights_.lm_head, hs.data(), m, logits); });
  record(dump, "logits", -1, logits, m, result.vocab);
}

// out (n, D) = (silu(h.Wg^T) * (h.Wu^T)) . Wd^T
void Model::feed_forward_dense(const LayerWeights& lw, const float* h, int64_t n, int64_t layer,
                               const ForwardOptions& options, std::vector<float>& scratch,
                               float* out) const {
  Dumper* dump = options.dump;
  StageTimes* prof = options.profile;
  const int64_t I = lw.gate.w.rows;
  // Reused across layers: fresh multi-megabyte buffers cost page faults every layer.
  if (scratch.size() < static_cast<size_t>(2 * n * I))
    scratch.resize(static_cast<size_t>(2 * n * I));
  std::span<float> g(scratch.data(), static_cast<size_t>(n * I));
  std::span<float> u(scratch.data() + n * I, static_cast<size_t>(n * I));
  timed(prof, "gate_up", [&] {
    const MatmulJob jobs[] = {{lw.gate.w, g.data()}, {lw.up.w, u.data()}};
    matmul_many(jobs, h, n);
    if (!lw.gate.bias.empty()) add_bias(g.data(), lw.gate.bias.data(), n, I);
    if (!lw.up.bias.empty()) add_bias(u.data(), lw.up.bias.data(), n, I);
  });
  record(dump, "gate", layer, g.data(), n, I);
  record(dump, "up", layer, u.data(), n, I);
  timed(prof, "silu", [&] { silu_mul(g.data(), u.data(), n * I); });
  record(dump, "ffn_act", layer, g.data(), n, I);
  timed(prof, "down", [&] { linear(lw.down, g.data(), n, out); });
}

namespace {

// expert (m, D) = (silu(x.Wg^T) * (x.Wu^T)) . Wd^T for m rows of x (m, D).
void expert_mlp(const Expert& ex, const float* x, int64_t m, float* y) {
  const int64_t I = ex.gate.rows;
  std::vector<float> g(static_cast<size_t>(m * I)), u(static_cast<size_t>(m * I));
  const MatmulJob jobs[] = {{ex.gate, g.data()}, {ex.up, u.data()}};
  matmul_many(jobs, x, m);
  silu_mul(g.data(), u.data(), m * I);
  matmul(ex.down, g.data(), m, y);
}

}  // namespace

// out (n, D) = sum over the top-k experts e of token t: w_e * expert_e(h_t), where
// w = softmax(router logits) restricted to the top k, renormalised to sum 1 (Mixtral; Qwen2-MoE
// when norm_topk_prob) or not (Qwen2-MoE's default); Qwen2-MoE adds
// sigmoid(h_t . shared_gate) * shared_expert(h_t) (transformers' Qwen2MoeSparseMoeBlock).
// Experts are added in increasing index order for every token, the shared expert last.
void Model::feed_forward_moe(const LayerWeights& lw, const float* h, int64_t n, int64_t layer,
                             const ForwardOptions& options, float* out) const {
  Dumper* dump = options.dump;
  const int64_t D = config_.hidden_size, E = lw.router.rows, K = config_.experts_per_token;
  std::vector<float> logits(static_cast<size_t>(n * E));
  matmul(lw.router, h, n, logits.data());
  record(dump, "router", layer, logits.data(), n, E);
  std::vector<std::vector<std::pair<int64_t, float>>> routed(static_cast<size_t>(E));
  std::vector<float> prob(static_cast<size_t>(E));
  std::vector<int64_t> order(static_cast<size_t>(E));
  AMALGAM_CHECK(options.force_expert < E, "force_expert {} but the model has {} experts",
                options.force_expert, E);
  for (int64_t t = 0; t < n; ++t) {
    if (options.force_expert >= 0) {
      routed[options.force_expert].push_back({t, 1.0f});
      continue;
    }
    const float* z = &logits[t * E];
    const float zmax = *std::max_element(z, z + E);
    float total = 0.0f;
    for (int64_t e = 0; e < E; ++e) total += prob[e] = std::exp(z[e] - zmax);
    for (int64_t e = 0; e < E; ++e) prob[e] /= total;
    for (int64_t e = 0; e < E; ++e) order[e] = e;
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return prob[a] > prob[b]; });
    float top = 0.0f;
    for (int64_t i = 0; i < K; ++i) top += prob[order[i]];
    if (!lw.norm_topk) top = 1.0f;
    for (int64_t i = 0; i < K; ++i) routed[order[i]].push_back({t, prob[order[i]] / top});
  }
  std::fill(out, out + n * D, 0.0f);
  for (int64_t e = 0; e < E; ++e) {
    const auto& assigned = routed[e];
    if (assigned.empty()) continue;
    const int64_t m = static_cast<int64_t>(assigned.size());
    std::vector<float> xe(static_cast<size_t>(m * D)), y(static_cast<size_t>(m * D));
    for (int64_t i = 0; i < m; ++i)
      std::copy(h + assigned[i].first * D, h + (assigned[i].first + 1) * D, &xe[i * D]);
    expert_mlp(lw.experts[e], xe.data(), m, y.data());
    for (int64_t i = 0; i < m; ++i) {
      float* o = out + assigned[i].first * D;
      const float w = assigned[i].second;
      for (int64_t j = 0; j < D; ++j) o[j] += w * y[i * D + j];
    }
  }
  if (!lw.has_shared) return;
  // shared (n, D) = sigmoid(h . Wsg^T) (n, 1) * expert_shared(h)
  std::vector<float> gate(static_cast<size_t>(n)), y(static_cast<size_t>(n * D));
  matmul(lw.shared_gate, h, n, gate.data());
  record(dump, "shared_gate", layer, gate.data(), n, 1);
  expert_mlp(lw.shared, h, n, y.data());
  for (int64_t t = 0; t < n; ++t) {
    const float w = 1.0f / (1.0f + std::exp(-gate[t]));
    float* o = out + t * D;
    for (int64_t j = 0; j < D; ++j) o[j] += w * y[t * D + j];
  }
}

}  // namespace amalgam::infer
