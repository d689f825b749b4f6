#include "infer/generate.h"

#include <algorithm>

#include "core/error.h"

namespace amalgam::infer {

namespace {
bool is_stop(const GenerateOptions& o, int32_t id) {
  return std::find(o.stop_ids.begin(), o.stop_ids.end(), id) != o.stop_ids.end();
}
}  // namespace

Generation generate(const Model& model, const std::vector<int32_t>& prompt,
                    const GenerateOptions& options, const std::function<bool(int32_t)>& on_token) {
  ModelLogits source(model);
  return generate(source, prompt, options, on_token);
}

Generation generate(LogitSource& source, const std::vector<int32_t>& prompt,
                    const GenerateOptions& options, const std::function<bool(int32_t)>& on_token) {
  AMALGAM_CHECK(!prompt.empty(), "generation needs a non-empty prompt");
  const int64_t context = source.context_length();
  if (context > 0 && static_cast<int64_t>(prompt.size()) > context) {
    fail("the prompt has {} tokens but the model's context is {}", prompt.size(), context);
  }
  source.clear();
  Sampler sampler(options.sampler);
  Generation gen;
  Batch batch;
  batch.add_sequence(prompt, 0, 0, false);
  int32_t pos = static_cast<int32_t>(prompt.size());
  while (static_cast<int64_t>(gen.ids.size()) < options.max_new_tokens) {
    ForwardResult r = source.forward(batch);
    const int32_t next = sampler.sample(r.row(0));
    if (is_stop(options, next)) {
      gen.stopped = true;
      break;
    }
    gen.ids.push_back(next);
    if (on_token && !on_token(next)) break;
    if (context > 0 && pos >= context) {
      gen.context_full = static_cast<int64_t>(gen.ids.size()) < options.max_new_tokens;
      break;
    }
    batch = Batch();
    batch.add(next, pos++, 0, true);
  }
  return gen;
}

std::vector<Generation> generate_many(const Model& model,
                                      const std::vector<std::vector<int32_t>>& prompts,
                                      const GenerateOptions& options) {
  ModelLogits source(model);
  return generate_many(source, prompts, options);
}

std::vector<Generation> generate_many(LogitSource& source,
                                      const std::vector<std::vector<int32_t>>& prompts,
                                      const GenerateOptions& options) {
  const size_t n = prompts.size();
  std::vector<Generation> out(n);
  if (n == 0) return out;
  const int64_t context = source.context_length();
  source.clear();
  std::vector<Sampler> samplers;
  std::vector<int32_t> next_pos(n);
  Batch batch;
  for (size_t i = 0; i < n; ++i) {
    AMALGAM_CHECK(!prompts[i].empty(), "generation: prompt {} is empty", i);
    if (context > 0 && static_cast<int64_t>(prompts[i].size()) > context) {
      fail("generation: prompt {} has {} tokens but the model's context is {}", i,
           prompts[i].size(), context);
    }
    SamplerOptions so = options.sampler;
    so.seed += i;
    samplers.emplace_back(so);
    batch.add_sequence(prompts[i], static_cast<int32_t>(i), 0, false);
    next_pos[i] = static_cast<int32_t>(prompts[i].size());
  }
  if (options.max_new_tokens <= 0) return out;
  while (!batch.empty()) {
    ForwardResult r = source.forward(batch);
    Batch next;
    for (size_t row = 0; row < r.rows.size(); ++row) {
      const int32_t seq = batch.tokens[r.rows[row]].seq;
      Generation& g = out[seq];
      const int32_t id = samplers[seq].sample(r.row(row));
      if (is_stop(options, id)) {
        g.stopped = true;
        source.clear(seq);
        continue;
      }
      g.ids.push_back(id);
      if (static_cast<int64_t>(g.ids.size()) >= options.max_new_tokens) {
        source.clear(seq);
        continue;
      }
      if (context > 0 && next_pos[seq] >= context) {
        g.context_full = true;
        source.clear(seq);
        continue;
      }
      next.add(id, next_pos[seq]++, seq, true);
    }
    batch = std::move(next);
  }
  return out;
}

}  // namespace amalgam::infer
