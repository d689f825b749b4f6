#include "merge/finalize.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"
#include "io/config_check.h"
#include "merge/gguf_sink.h"
#include "merge/method.h"
#include "merge/provenance.h"
#include "merge/sink.h"

namespace amalgam::merge {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

// Copied as-is from the tokenizer source (the donor unless the recipe names one).
constexpr const char* kTokenizerFiles[] = {
    "tokenizer.json",  "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "added_tokens.json",     "merges.txt",
    "vocab.json",      "chat_template.jinja",   "chat_template.json"};
// Describe the source's vocabulary, so they are not copied when the merge built a new one.
constexpr const char* kVocabularyFiles[] = {"tokenizer.model", "added_tokens.json", "merges.txt",
                                            "vocab.json"};
// Copied from the donor.
constexpr const char* kDonorFiles[] = {"generation_config.json"};

fs::path model_directory(const fs::path& model) {
  return fs::is_regular_file(model) ? model.parent_path() : model;
}

void copy_file_synced(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
  if (ec) fail("{}: cannot copy to {}: {}", from.string(), to.string(), ec.message());
  core::fsync_path(to);
}

std::string method_phrase(const merge::MethodInfo& m) {
  return m.reference.empty() ? m.title : fmt::format("[{}]({})", m.title, m.reference);
}

std::string model_card(const Plan& plan, const fs::path& dir,
                       const std::vector<ShardDigest>& digests) {
  const merge::MergeMethod* known = merge::find_method(plan.method);
  const merge::MethodInfo method =
      known ? known->info() : merge::MethodInfo{.name = plan.method, .title = plan.method};
  std::string out = "---\ntags:\n- amalgam\n- merge\nlibrary_name: transformers\n---\n";
  // The staging directory's final name is the output's: strip the staging decoration.
  std::string title = dir.filename().string();
  if (!title.empty() && title[0] == '.') title = title.substr(1, title.rfind(".tmp-") - 1);
  out += fmt::format(
      "# {}\n\nThis model is a merge of pre-trained language models made with "
      "amalgam.\n\n## Merge details\n\n### Merge method\n\n",
      title);
  out += fmt::format("This model was merged using the {} merge method", method_phrase(method));
  if (plan.base_model && method.card_names_base) {
    out += fmt::format(" using `{}` as a base", model_name(plan, *plan.base_model));
  }
  out += ".\n\n### Models merged\n\nThe following models were included in the merge:\n";
  for (size_t m = 0; m < plan.models.size(); ++m) {
    if (plan.base_model && m == *plan.base_model && method.card_names_base) continue;
    out += fmt::format("- `{}`\n", model_name(plan, m));
  }
  out += fmt::format("\nOutput: {} layers, {} weights.\n", plan.num_layers,
                     tensor::torch_dtype_name(plan.out_dtype));
  if (!plan.recipe_text.empty()) {
    out +=
        "\n### Configuration\n\nThe following YAML configuration was used to produce this "
        "model:\n\n```yaml\n";
    out += plan.recipe_text;
    if (plan.recipe_text.back() != '\n') out += "\n";
    out += "```\n";
  }
  if (!digests.empty()) {
    out +=
        "\n### Provenance\n\nInput files and their sha256:\n\n"
        "| model | file | bytes | sha256 |\n|---|---|---:|---|\n";
    for (const auto& d : digests) {
      out += fmt::format("| `{}` | `{}` | {} | `{}` |\n", model_name(plan, d.model),
                         d.file.filename().string(), d.bytes, d.sha256);
    }
  }
  return out;
}

}  // namespace

std::string output_config_json(const Plan& plan, const std::string& donor_config_text,
                               const std::string& where) {
  ordered_json j;
  try {
    j = ordered_json::parse(donor_config_text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed JSON: {}", where, e.what());
  }
  if (!j.is_object()) fail("{}: config is not a JSON object", where);
  if (plan.num_layers > 0) {
    bool found = false;
    for (const char* key : {"num_hidden_layers", "n_layer", "num_layers"}) {
      if (j.contains(key)) {
        j[key] = plan.num_layers;
        found = true;
        break;
      }
    }
    if (!found) j["num_hidden_layers"] = plan.num_layers;
  }
  if (plan.built_tokenizer) j["vocab_size"] = plan.built_tokenizer->vocab_size;
  const std::string dtype(tensor::torch_dtype_name(plan.out_dtype));
  const bool has_dtype = j.contains("dtype"), has_torch_dtype = j.contains("torch_dtype");
  if (has_dtype) j["dtype"] = dtype;
  if (has_torch_dtype) j["torch_dtype"] = dtype;
  if (!has_dtype && !has_torch_dtype) {
    const std::string version = j.value("transformers_version", "");
    j[version.rfind("4.", 0) == 0 || version.empty() ? "torch_dtype" : "dtype"] = dtype;
  }
  return j.dump(2) + "\n";
}

void write_model_files(const Plan& plan, const fs::path& dir,
                       const std::vector<ShardDigest>& digests, bool write_card) {
  AMALGAM_CHECK(plan.donor < plan.models.size(), "internal: bad donor index");
  const fs::path donor = model_directory(plan.models[plan.donor]);
  const fs::path config = donor / "config.json";
  if (fs::exists(config)) {
    core::write_text_file(dir / "config.json",
                          output_config_json(plan, core::read_text_file(config), config.string()));
  } else {
    core::warn("{}: no config.json; the output has none either", donor.string());
  }
  const fs::path tokenizer_dir =
      plan.tokenizer_source ? model_directory(plan.models.at(*plan.tokenizer_source)) : donor;
  bool tokenizer = false;
  const BuiltTokenizer* built = plan.built_tokenizer.get();
  if (built) {
    core::write_text_file(dir / "tokenizer.json", built->tokenizer_json);
    if (built->tokenizer_config_json) {
      core::write_text_file(dir / "tokenizer_config.json", *built->tokenizer_config_json);
    }
    tokenizer = true;
  }
  for (const char* name : kTokenizerFiles) {
    const std::string_view n(name);
    if (built &&
        (n == "tokenizer.json" || (n == "tokenizer_config.json" && built->tokenizer_config_json))) {
      continue;
    }
    if (built && std::find(std::begin(kVocabularyFiles), std::end(kVocabularyFiles), n) !=
                     std::end(kVocabularyFiles)) {
      continue;
    }
    if (fs::exists(tokenizer_dir / name)) {
      copy_file_synced(tokenizer_dir / name, dir / name);
      tokenizer = true;
    }
  }
  if (!tokenizer) core::warn("{}: no tokenizer files to copy", tokenizer_dir.string());
  for (const char* name : kDonorFiles) {
    if (fs::exists(donor / name)) copy_file_synced(donor / name, dir / name);
  }
  if (!plan.recipe_text.empty()) {
    core::write_text_file(dir / "amalgam_recipe.yaml", plan.recipe_text);
    core::write_text_file(dir / "mergekit_config.yml", plan.recipe_text);
  }
  if (write_card) core::write_text_file(dir / "README.md", model_card(plan, dir, digests));
}

namespace {

// The output's config.json (the donor's, edited as write_model_files writes it).
io::ModelConfig output_config(const Plan& plan) {
  const fs::path config = model_directory(plan.models.at(plan.donor)) / "config.json";
  if (!fs::exists(config)) fail("{}: no config.json; a GGUF output needs one", config.string());
  const std::string text = output_config_json(plan, core::read_text_file(config), config.string());
  return io::parse_model_config(nlohmann::ordered_json::parse(text), config.string());
}

}  // namespace

void validate_output_config(const Plan& plan, const fs::path& out) {
  AMALGAM_CHECK(plan.donor < plan.models.size(), "internal: bad donor index");
  const fs::path config = model_directory(plan.models[plan.donor]) / "config.json";
  if (!fs::exists(config)) return;
  const io::ModelConfig written = output_config(plan);
  io::TensorShapes shapes;
  std::map<std::string, const tensor::Shape*> by_name;
  for (const auto& e : plan.entries) {
    shapes.names.push_back(e.name);
    by_name[e.name] = &e.shape;
  }
  shapes.shape = [&by_name](const std::string& n) { return *by_name.at(n); };
  if (auto problem = io::config_tensor_mismatch(written, shapes)) {
    fail(
        "{}: the merge would write a checkpoint whose config.json (from {}) contradicts its "
        "tensors: {}; nothing was written",
        out.string(), config.string(), *problem);
  }
}

namespace {

fs::path tokenizer_directory(const Plan& plan) {
  return model_directory(
      plan.models.at(plan.tokenizer_source ? *plan.tokenizer_source : plan.donor));
}

void write_built_tokenizer(const BuiltTokenizer& built, const fs::path& dir) {
  core::write_text_file(dir / "tokenizer.json", built.tokenizer_json);
  if (built.tokenizer_config_json) {
    core::write_text_file(dir / "tokenizer_config.json", *built.tokenizer_config_json);
  }
}

OutputSummary write_gguf_only(const Plan& plan, InputSet& inputs, const OutputOptions& options) {
  const GgufOutput& g = *options.gguf;
  fs::path tokenizer_dir = tokenizer_directory(plan);
  std::optional<core::StagedDirectory> scratch;  // never committed: removed on return
  if (plan.built_tokenizer) {
    scratch.emplace(fs::path(g.path.string() + ".tokenizer"), true);
    write_built_tokenizer(*plan.built_tokenizer, scratch->path());
    tokenizer_dir = scratch->path();
  }
  GgufSink sink(g.path, output_config(plan), tokenizer_dir, g.options);
  OutputSummary summary;
  summary.stats = execute(plan, inputs, sink, options.execute);
  return summary;
}

}  // namespace

OutputSummary write_model(const Plan& plan, InputSet& inputs, const fs::path& out,
                          const OutputOptions& options) {
  std::vector<const io::Checkpoint*> checkpoints = inputs.open_all(plan);
  validate_plan(plan, checkpoints);
  validate_output_config(plan, out);
  std::error_code ec;
  const fs::path target = fs::weakly_canonical(fs::absolute(out), ec);
  for (const auto& m : plan.models) {
    const fs::path input = fs::weakly_canonical(fs::absolute(model_directory(m)), ec);
    if (input == target) {
      fail("{}: the output directory is an input of the merge; choose another output",
           out.string());
    }
  }
  if (options.gguf && options.gguf->only) return write_gguf_only(plan, inputs, options);
  core::StagedDirectory staged(out, options.force);

  std::vector<ShardDigest> digests;
  std::vector<fs::path> files;
  for (size_t m = 0; m < checkpoints.size(); ++m) {
    for (const auto& shard : checkpoints[m]->shards()) {
      digests.push_back({m, shard->path(), shard->file_size(), ""});
      files.push_back(shard->path());
    }
  }
  for (const auto& [m, dir] : plan.adapters) {
    const fs::path file = dir / io::kAdapterWeightsFile;
    std::error_code size_ec;
    const uint64_t bytes = fs::file_size(file, size_ec);
    digests.push_back({m, file, size_ec ? 0 : bytes, ""});
    files.push_back(file);
  }
  std::optional<ProvenanceHasher> hasher;
  if (options.model_card) hasher.emplace(files);

  OutputSummary summary;
  try {
    CheckpointSink sink(staged.path(), options.max_shard_bytes);
    std::unique_ptr<GgufSink> gguf_sink;
    if (options.gguf) {
      // The tokenizer the output gets: a built one is written into the staged directory first.
      fs::path tokenizer_dir = tokenizer_directory(plan);
      if (plan.built_tokenizer) {
        write_built_tokenizer(*plan.built_tokenizer, staged.path());
        tokenizer_dir = staged.path();
      }
      gguf_sink = std::make_unique<GgufSink>(options.gguf->path, output_config(plan),
                                             tokenizer_dir, options.gguf->options);
    }
    TeeSink tee({&sink, gguf_sink.get()});
    TensorSink& target_sink = gguf_sink ? static_cast<TensorSink&>(tee) : sink;
    summary.stats = execute(plan, inputs, target_sink, options.execute);
    summary.shards = sink.writer().shard_count();
    summary.weight_bytes = sink.writer().total_bytes();
    if (hasher) {
      std::vector<std::string> hashes = hasher->wait();
      for (size_t i = 0; i < digests.size(); ++i) digests[i].sha256 = hashes[i];
    } else {
      digests.clear();
    }
    write_model_files(plan, staged.path(), digests, options.model_card);
    core::fsync_path(staged.path());
  } catch (const Error& e) {
    throw Error(staged.user_message(e.what()));
  }
  staged.commit();
  return summary;
}

}  // namespace amalgam::merge
