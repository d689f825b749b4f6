#include "infer/proxy.h"

#include <cmath>

#include "core/error.h"

namespace amalgam::infer {

ProxyLogits::ProxyLogits(const Model& large, const Model& expert, const Model& anti, float alpha)
    : large_(large), expert_(expert), anti_(anti), alpha_(alpha) {
  AMALGAM_CHECK(std::isfinite(alpha), "proxy tuning: alpha must be a finite number, got {}", alpha);
  AMALGAM_CHECK(
      expert.vocab_size() == large.vocab_size() && anti.vocab_size() == large.vocab_size(),
      "proxy tuning: the three models must share one vocabulary, but the large model "
      "has {} tokens, the expert {} and the anti-expert {}; use an expert/anti-expert "
      "pair trained with the large model's tokenizer",
      large.vocab_size(), expert.vocab_size(), anti.vocab_size());
}

int64_t ProxyLogits::context_length() const {
  int64_t shortest = 0;
  for (const ModelLogits* s : {&large_, &expert_, &anti_}) {
    const int64_t c = s->context_length();
    if (c > 0 && (shortest == 0 || c < shortest)) shortest = c;
  }
  return shortest;
}

ForwardResult ProxyLogits::forward(const Batch& batch, const ForwardOptions& options) {
  AMALGAM_CHECK(!options.hidden_states,
                "proxy tuning: hidden states are not defined for a combination of models");
  ForwardResult out = large_.forward(batch, options);
  const ForwardResult e = expert_.forward(batch, options);
  const ForwardResult a = anti_.forward(batch, options);
  // Same batch, so the same rows in the same order.
  AMALGAM_CHECK(e.rows == out.rows && a.rows == out.rows,
                "internal: proxy models returned logits for different batch tokens");
  // out (rows, vocab) += alpha * (e - a)
  const size_t n = out.logits.size();
  for (size_t i = 0; i < n; ++i) out.logits[i] += alpha_ * (e.logits[i] - a.logits[i]);
  return out;
}

void ProxyLogits::clear(int32_t seq) {
  large_.clear(seq);
  expert_.clear(seq);
  anti_.clear(seq);
}

void ProxyLogits::clear() {
  large_.clear();
  expert_.clear();
  anti_.clear();
}

}  // namespace amalgam::infer
