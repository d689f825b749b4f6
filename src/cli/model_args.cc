#include "cli/model_args.h"

#include "core/error.h"
#include "infer/finite.h"
#include "infer/matmul.h"

namespace amalgam::cli {

namespace fs = std::filesystem;

LoadedModel open_model(const std::string& path, bool tokenizer, bool in_memory) {
  // A loader of its own: the model keeps its mapping or RAM copy alive after the loader is gone.
  eval::ModelLoader loader(0, in_memory);
  return loader.load(path,
                     tokenizer ? eval::TokenizerNeed::kRequired : eval::TokenizerNeed::kIfPresent);
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
