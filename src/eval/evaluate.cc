#include "eval/evaluate.h"

#include <chrono>
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "infer/documents.h"

namespace amalgam::eval {

namespace {

using nlohmann::ordered_json;

// lm-eval's context/continuation split: trailing whitespace of the context belongs to the
// continuation; the continuation's tokens are those of the whole text after the context's.
ScoreRequest choice_request(const tokenizer::Tokenizer& tok, const std::string& prompt,
                            const std::string& choice, const std::string& where) {
  size_t keep = prompt.size();
  while (keep > 0 && std::isspace(static_cast<unsigned char>(prompt[keep - 1]))) --keep;
  const std::string context = prompt.substr(0, keep);
  const std::string continuation = prompt.substr(keep) + choice;
  ScoreRequest r;
  r.context = tok.encode(context, true);
  const std::vector<int32_t> whole = tok.encode(context + continuation, true);
  bool prefix = whole.size() > r.context.size() &&
                std::equal(r.context.begin(), r.context.end(), whole.begin());
  if (prefix) {
    r.continuation.assign(whole.begin() + static_cast<ptrdiff_t>(r.context.size()), whole.end());
  } else {
    // The prompt's last token merged with the choice: score the choice tokens on their own.
    r.continuation = tok.encode(continuation, false);
  }
  AMALGAM_CHECK(!r.context.empty(), "{}: the prompt encodes to no tokens", where);
  AMALGAM_CHECK(!r.continuation.empty(), "{}: the choice encodes to no tokens", where);
  return r;
}

size_t argmax_of(const std::vector<double>& v) {
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i) {
    if (v[i] > v[best]) best = i;
  }
  return best;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void run_generation(infer::LogitSource& source, const tokenizer::Tokenizer& tok,
                    const PreparedTask& p, const RunOptions& options, TaskResult& result) {
  const auto outputs = greedy_decode(source, p.generation, p.stop_ids, options);
  size_t correct = 0;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const GenerationItem& item = p.task->generation[i];
    const std::string text = tok.decode(outputs[i].ids);
    const bool match = text == item.answer;
    correct += match;
    result.outputs.push_back(ordered_json{{"prompt", item.prompt},
                                          {"answer", item.answer},
                                          {"output", text},
                                          {"correct", match},
                                          {"tokens", outputs[i].ids},
                                          {"stopped", outputs[i].stopped}});
  }
  const size_t n = outputs.size();
  const double acc = n ? static_cast<double>(correct) / static_cast<double>(n) : 0.0;
  result.metrics.push_back({"exact_match", acc, binomial_stderr(acc, n)});
}

void run_choice(infer::LogitSource& source, const PreparedTask& p, const RunOptions& options,
                TaskResult& result) {
  const auto scores = score_continuations(source, p.scoring, options);
  size_t hits = 0, hits_norm = 0;
  const auto& items = p.task->choice;
  for (size_t i = 0; i < items.size(); ++i) {
    std::vector<double> ll, ll_norm;
    for (size_t c = 0; c < items[i].choices.size(); ++c) {
      const double v = scores[p.first_choice[i] + c].logprob;
      ll.push_back(v);
      ll_norm.push_back(v / static_cast<double>(items[i].choices[c].size()));
    }
    const size_t pred = argmax_of(ll), pred_norm = argmax_of(ll_norm);
    const auto label = static_cast<size_t>(items[i].label);
    hits += pred == label;
    hits_norm += pred_norm == label;
    result.outputs.push_back(ordered_json{{"prompt", items[i].prompt},
                                          {"label", label},
                                          {"loglikelihoods", ll},
                                          {"pred", pred},
                                          {"pred_norm", pred_norm}});
  }
  const size_t n = items.size();
  const double acc = n ? static_cast<double>(hits) / static_cast<double>(n) : 0.0;
  const double acc_norm = n ? static_cast<double>(hits_norm) / static_cast<double>(n) : 0.0;
  result.metrics.push_back({"acc", acc, binomial_stderr(acc, n)});
  result.metrics.push_back({"acc_norm", acc_norm, binomial_stderr(acc_norm, n)});
}

void run_perplexity(infer::LogitSource& source, const PreparedTask& p, const RunOptions& options,
                    TaskResult& result) {
  const auto scores = score_continuations(source, p.scoring, options);
  double total = 0.0;
  size_t count = 0;
  std::vector<double> row_nll;
  for (const ScoreOutput& s : scores) {
    total -= s.logprob;
    count += s.token_logprobs.size();
    row_nll.push_back(-s.logprob / static_cast<double>(s.token_logprobs.size()));
    result.outputs.push_back(
        ordered_json{{"nll", row_nll.back()}, {"tokens", s.token_logprobs.size()}});
  }
  const double nll = count ? total / static_cast<double>(count) : 0.0;
  result.metrics.push_back({"nll", nll, mean_stderr(row_nll)});
  result.metrics.push_back({"ppl", std::exp(nll), std::nullopt});
}

}  // namespace

const Metric& TaskResult::metric(const std::string& name) const {
  for (const Metric& m : metrics) {
    if (m.name == name) return m;
  }
  fail("task {}: no metric '{}'", task, name);
}

double binomial_stderr(double p, size_t n) {
  if (n < 2) return 0.0;
  return std::sqrt(p * (1.0 - p) / static_cast<double>(n - 1));
}

double mean_stderr(const std::vector<double>& values) {
  const size_t n = values.size();
  if (n < 2) return 0.0;
  double mean = 0.0;
  for (double v : values) mean += v;
  mean /= static_cast<double>(n);
  double ss = 0.0;
  for (double v : values) ss += (v - mean) * (v - mean);
  return std::sqrt(ss / static_cast<double>(n - 1)) / std::sqrt(static_cast<double>(n));
}

std::vector<std::vector<int32_t>> perplexity_rows(const tokenizer::Tokenizer& tok,
                                                  const PerplexitySpec& spec,
                                                  const std::string& where) {
  const auto eos = tok.eos_id();
  AMALGAM_CHECK(eos, "{}: the tokenizer has no EOS token to end documents with", where);
  AMALGAM_CHECK(tok.add_bos(), "{}: the tokenizer does not start texts with BOS", where);
  try {
    return infer::document_rows(tok, spec.documents, *eos, spec.rows, spec.row_tokens);
  } catch (const Error& e) {
    fail("{}: {}", where, e.what());
  }
}

std::vector<int32_t> stop_ids(const infer::Model& model, const tokenizer::Tokenizer* tok) {
  std::vector<int32_t> ids;
  auto add = [&](int64_t id) {
    if (id >= 0 && id <= INT32_MAX && std::find(ids.begin(), ids.end(), id) == ids.end()) {
      ids.push_back(static_cast<int32_t>(id));
    }
  };
  if (tok != nullptr) {
    if (auto eos = tok->eos_id()) add(*eos);
  }
  for (int64_t id : model.config().eos_token_ids) add(id);
  return ids;
}

std::vector<int32_t> stop_ids(const infer::Model& model, const tokenizer::Tokenizer& tok) {
  return stop_ids(model, &tok);
}

PreparedTask prepare_task(const Task& task, const tokenizer::Tokenizer& tok,
                          std::vector<int32_t> stops) {
  PreparedTask p;
  p.task = &task;
  p.stop_ids = std::move(stops);
  const std::string file = task.file.string();
  switch (task.kind) {
    case TaskKind::kGeneration:
      for (size_t i = 0; i < task.generation.size(); ++i) {
        const GenerationItem& item = task.generation[i];
        GreedyRequest r;
        r.prompt = tok.encode(item.prompt, true);
        AMALGAM_CHECK(!r.prompt.empty(), "{}: item {}: the prompt encodes to no tokens", file, i);
        r.max_new_tokens = static_cast<int64_t>(tok.encode(item.answer, false).size()) + 2;
        p.generation.push_back(std::move(r));
      }
      break;
    case TaskKind::kChoice:
      for (size_t i = 0; i < task.choice.size(); ++i) {
        p.first_choice.push_back(p.scoring.size());
        for (size_t c = 0; c < task.choice[i].choices.size(); ++c) {
          p.scoring.push_back(choice_request(tok, task.choice[i].prompt, task.choice[i].choices[c],
                                             fmt::format("{}: item {}: choice {}", file, i, c)));
        }
      }
      break;
    case TaskKind::kPerplexity:
      for (auto& row : perplexity_rows(tok, task.perplexity, file)) {
        ScoreRequest r;
        r.context.assign(row.begin(), row.begin() + 1);
        r.continuation.assign(row.begin() + 1, row.end());
        p.scoring.push_back(std::move(r));
      }
      break;
  }
  return p;
}

TaskResult run_task(const infer::Model& model, const tokenizer::Tokenizer& tok,
                    const PreparedTask& p, const RunOptions& options) {
  infer::ModelLogits source(model);
  return run_task(source, tok, p, options);
}

TaskResult run_task(infer::LogitSource& source, const tokenizer::Tokenizer& tok,
                    const PreparedTask& p, const RunOptions& options) {
  AMALGAM_CHECK(p.task != nullptr, "internal: task not prepared");
  TaskResult result;
  result.task = p.task->name;
  result.kind = p.task->kind;
  const auto start = std::chrono::steady_clock::now();
  switch (p.task->kind) {
    case TaskKind::kGeneration:
      run_generation(source, tok, p, options, result);
      result.items = p.generation.size();
      break;
    case TaskKind::kChoice:
      run_choice(source, p, options, result);
      result.items = p.task->choice.size();
      break;
    case TaskKind::kPerplexity:
      run_perplexity(source, p, options, result);
      result.items = p.scoring.size();
      break;
  }
  result.seconds = seconds_since(start);
  return result;
}

TaskResult evaluate_task(const infer::Model& model, const tokenizer::Tokenizer& tok,
                         const Task& task, const RunOptions& options) {
  return run_task(model, tok, prepare_task(task, tok, stop_ids(model, tok)), options);
}

}  // namespace amalgam::eval
