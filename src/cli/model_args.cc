#include "cli/model_args.h"

#include <algorithm>

#include "core/error.h"
#include "core/json.h"
#include "eval/model_source.h"
#include "gguf/import.h"
#include "infer/finite.h"
#include "infer/matmul.h"
#include "io/lora.h"

namespace amalgam::cli {

namespace fs = std::filesystem;

const tokenizer::Tokenizer& LoadedModel::require_tokenizer() const {
  if (!tokenizer) fail("{}: no tokenizer.json; give token ids with --ids instead", dir.string());
  return *tokenizer;
}

LoadedModel open_model(const std::string& path, bool tokenizer) {
  LoadedModel m;
  if (!fs::exists(path)) {
    if (auto split = io::split_lora_reference(path)) {  // BASE+LORA, applied in RAM
      eval::ModelLoader loader;
      eval::LoadedModel loaded = loader.load(path);
      m.dir = fs::is_directory(split->first) ? fs::path(split->first)
                                             : fs::path(split->first).parent_path();
      m.model = std::move(loaded.model);
      m.tokenizer = std::move(loaded.tokenizer);
      return m;
    }
  }
  m.dir = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
  if (fs::is_regular_file(path) && gguf::is_gguf_file(path)) {
    // The tokenizer comes from the file itself (rebuilt from its tokenizer.ggml.* keys).
    m.model = infer::load_model(path);
    if (auto json = gguf::tokenizer_json_from_gguf(gguf::GgufFile(path))) {
      m.tokenizer = tokenizer::Tokenizer::from_json(*json, path + ": tokenizer.ggml.*");
    } else if (tokenizer) {
      fail(
          "{}: its tokenizer (model and pre-tokenizer) cannot be run by amalgam; give token ids "
          "with --ids",
          path);
    }
    return m;
  }
  m.model = infer::load_model(path);
  if (tokenizer || fs::exists(m.dir / "tokenizer.json")) {
    m.tokenizer = tokenizer::Tokenizer::from_directory(m.dir);
  }
  return m;
}

std::vector<int32_t> parse_id_list(const std::string& text) {
  std::vector<int32_t> ids;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string item =
        text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    size_t used = 0;
    long long value = -1;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || value < 0 || value > INT32_MAX) {
      fail("--ids: '{}' is not a token id (expected a comma-separated list like 1,2,3)", item);
    }
    ids.push_back(static_cast<int32_t>(value));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return ids;
}

std::vector<int32_t> stop_ids(const LoadedModel& m) {
  std::vector<int32_t> ids;
  auto add = [&](int64_t id) {
    if (id >= 0 && std::find(ids.begin(), ids.end(), id) == ids.end()) {
      ids.push_back(static_cast<int32_t>(id));
    }
  };
  // The same policy as evaluation (eval::stop_ids): the tokenizer's EOS, then config.json's and
  // generation_config.json's eos_token_id (read with the config).
  if (m.tokenizer && m.tokenizer->eos_id()) add(*m.tokenizer->eos_id());
  for (int64_t id : m.model->config().eos_token_ids) add(id);
  return ids;
}

void add_threads_option(CLI::App* cmd, int& threads) {
  threads = infer::default_num_threads();
  cmd->add_option("-t,--threads", threads, "Worker threads (default: all cores)")
      ->check(CLI::Range(1, 1024));
}

void apply_threads(int threads) { infer::set_num_threads(threads); }

void add_check_finite_option(CLI::App* cmd) {
  cmd->add_flag_callback(
      "--no-check-finite", [] { infer::set_check_finite_on_load(false); },
      "Do not scan the weights for NaN/Inf when loading");
}

}  // namespace amalgam::cli
