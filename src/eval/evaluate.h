// Scores a model on a task (text level: tokenization, scoring rules, metrics, per-item outputs)
// on top of the packed engine operations of runner.h.
//  * generation: the prompt encoded with the tokenizer's special tokens (BOS), greedy decoding
//    until EOS or len(encode(answer)) + 2 tokens, exact string match of the decoded
//    continuation with the answer. Metric exact_match.
//  * choice: log-likelihood of each choice after the prompt (lm-eval's split: trailing spaces of
//    the prompt move to the choice, the choice tokens are those of encode(prompt + choice) after
//    the prompt's tokens). Metrics acc (highest log-likelihood) and acc_norm (highest
//    log-likelihood per byte of the choice).
//  * perplexity: documents encoded as BOS text EOS and concatenated; rows of row_tokens + 1
//    tokens; mean next-token nll over all predictions. Metrics nll and ppl = exp(nll).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "eval/runner.h"
#include "eval/task.h"
#include "infer/logit_source.h"
#include "infer/model.h"
#include "tokenizer/tokenizer.h"

namespace amalgam::eval {

struct Metric {
  std::string name;
  double value = 0.0;
  std::optional<double> stderr_value;
};

struct TaskResult {
  std::string task;
  TaskKind kind = TaskKind::kGeneration;
  std::vector<Metric> metrics;
  size_t items = 0;
  double seconds = 0.0;
  nlohmann::ordered_json outputs = nlohmann::ordered_json::array();  // one entry per item

  const Metric& metric(const std::string& name) const;  // throws if absent
  double items_per_second() const { return seconds > 0 ? items / seconds : 0.0; }
};

// Binomial standard error of a mean of 0/1 outcomes as lm-eval reports it:
// sqrt(p (1 - p) / (n - 1)).
double binomial_stderr(double p, size_t n);
// Standard error of the mean of `values` (sample standard deviation / sqrt(n)).
double mean_stderr(const std::vector<double>& values);

// The zoo's perplexity rows (infer::document_rows): documents as BOS text EOS, concatenated,
// cut into `rows` rows of row_tokens + 1 tokens. Fails naming `where` when the documents are too
// short or the tokenizer has no EOS.
std::vector<std::vector<int32_t>> perplexity_rows(const tokenizer::Tokenizer& tokenizer,
                                                  const PerplexitySpec& spec,
                                                  const std::string& where);

// The tokens that end a generation, for every command (generate, eval, soup, evolve): the
// tokenizer's EOS, then config.json's and generation_config.json's eos_token_id(s) (a GGUF file's
// tokenizer.ggml.eos_token_id), without repeats. `tokenizer` may be null (token ids given).
std::vector<int32_t> stop_ids(const infer::Model& model, const tokenizer::Tokenizer* tokenizer);
std::vector<int32_t> stop_ids(const infer::Model& model, const tokenizer::Tokenizer& tokenizer);

// A task tokenized once, to be evaluated on many models that share the tokenizer (soups, recipe
// search).
struct PreparedTask {
  const Task* task = nullptr;
  std::vector<int32_t> stop_ids;
  std::vector<GreedyRequest> generation;  // generation: one per item
  std::vector<ScoreRequest> scoring;      // choice: one per (item, choice); perplexity: rows
  std::vector<size_t> first_choice;       // choice: index of each item's first request
};

// `task` must outlive the result.
PreparedTask prepare_task(const Task& task, const tokenizer::Tokenizer& tokenizer,
                          std::vector<int32_t> stop_ids);

TaskResult run_task(const infer::Model& model, const tokenizer::Tokenizer& tokenizer,
                    const PreparedTask& prepared, const RunOptions& options);
// The same on any logit source (e.g. proxy tuning, infer/proxy.h).
TaskResult run_task(infer::LogitSource& source, const tokenizer::Tokenizer& tokenizer,
                    const PreparedTask& prepared, const RunOptions& options);

// prepare_task + run_task.
TaskResult evaluate_task(const infer::Model& model, const tokenizer::Tokenizer& tokenizer,
                         const Task& task, const RunOptions& options);

}  // namespace amalgam::eval
