#include "gguf/export.h"

#include "core/error.h"
#include "core/log.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "gguf/tokenizer_meta.h"
#include "io/hf_config.h"
#include "io/safetensors.h"

namespace amalgam::gguf {

namespace fs = std::filesystem;

std::vector<size_t> declare_gguf(GgufWriter& w, const ConversionPlan& plan,
                                 const io::ModelConfig& config, const fs::path& tokenizer_dir,
                                 const ExportOptions& options) {
  std::string name = options.name;
  if (name.empty()) {
    fs::path p = fs::absolute(tokenizer_dir).lexically_normal();
    name = p.filename().empty() ? p.parent_path().filename().string() : p.filename().string();
  }
  for (auto& [k, v] : model_metadata(config, *plan.arch, options.type, name)) w.set(k, v);
  for (auto& [k, v] : tokenizer_metadata(tokenizer_dir, config, options.pre)) w.set(k, v);
  std::vector<size_t> index;
  for (const auto& t : plan.tensors) index.push_back(w.add_tensor(t.name, t.shape, t.type));
  return index;
}

ExportStats export_gguf(const fs::path& model, const fs::path& out, const ExportOptions& options) {
  io::Checkpoint ckpt(model);
  const io::ModelConfig config = io::read_model_config(ckpt.directory());
  std::vector<std::pair<std::string, tensor::Shape>> hf;
  for (const auto& n : ckpt.names()) hf.emplace_back(n, ckpt.info(n).shape);
  const ConversionPlan plan = plan_conversion(config, hf, options.type);

  GgufWriter w(out, options.force);
  const std::vector<size_t> index = declare_gguf(w, plan, config, ckpt.directory(), options);
  w.begin();
  ExportStats stats;
  core::ProgressBar bar("export-gguf", plan.tensors.size(), "tensors");
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    uint64_t read = 0;
    if (!t.values.empty()) {
      w.write(index[i], 0, t.values.data(), t.values.size() * sizeof(float));
    }
    for (const auto& p : t.pieces) {
      const tensor::TensorView v = ckpt.view(p.hf);
      try {
        convert_piece(t, p, v, [&](uint64_t off, const uint8_t* b, size_t n) {
          w.write(index[i], off, b, n);
        });
      } catch (const Error& e) {
        fail("{}: tensor '{}' -> '{}': {}", ckpt.path().string(), p.hf, t.name, e.what());
      }
      read += static_cast<uint64_t>(p.rows) * static_cast<uint64_t>(v.shape.back()) *
              tensor::dtype_size(v.dtype);
      // Streaming: the input pages of a converted tensor are not needed again.
      if (p.expert < 0 || p.expert + 1 == v.shape[0]) {
        core::release_mapped_pages(v.data, v.nbytes());
      }
    }
    stats.bytes_read += read;
    ++stats.types[std::string(type_name(t.type))];
    bar.advance(1, read, w.tensor_bytes(index[i]));
  }
  w.commit();
  bar.finish();
  stats.tensors = plan.tensors.size();
  stats.bytes_written = w.file_bytes();
  stats.seconds = bar.elapsed_seconds();
  return stats;
}

}  // namespace amalgam::gguf
