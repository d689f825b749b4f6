// Autoregressive decoding on top of Model::forward: one prompt (streaming), or many prompts
// decoded together in lock-step, one sequence id each (the prompts are prefilled in one packed
// batch).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "infer/logit_source.h"
#include "infer/model.h"
#include "infer/sampler.h"

namespace amalgam::infer {

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  SamplerOptions sampler;
  std::vector<int32_t> stop_ids;  // usually the EOS ids; the stop token is not returned
};

struct Generation {
  std::vector<int32_t> ids;  // the continuation, without the stop token
  bool stopped = false;      // ended on a stop token (else ran out of max_new_tokens)
  bool context_full = false;  // ended because the model's context was full
};

// Calls on_token for every new token before the next one is computed; returning false stops.
Generation generate(const Model& model, const std::vector<int32_t>& prompt,
                    const GenerateOptions& options,
                    const std::function<bool(int32_t)>& on_token = {});
// The same from any logit source (e.g. proxy tuning); the source's state is cleared first.
Generation generate(LogitSource& source, const std::vector<int32_t>& prompt,
                    const GenerateOptions& options,
                    const std::function<bool(int32_t)>& on_token = {});

// Decodes every prompt; results in prompt order. Each prompt has its own sampler seeded with
// options.sampler.seed + index, so results do not depend on the batch composition.
std::vector<Generation> generate_many(const Model& model,
                                      const std::vector<std::vector<int32_t>>& prompts,
                                      const GenerateOptions& options);
std::vector<Generation> generate_many(LogitSource& source,
                                      const std::vector<std::vector<int32_t>>& prompts,
                                      const GenerateOptions& options);

}  // namespace amalgam::infer
