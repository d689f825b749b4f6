// `amalgam export-gguf`: a Hugging Face checkpoint directory written as one GGUF file, streamed
// tensor by tensor (rows converted and quantised in parallel, memory bounded by one chunk of
// rows per tensor in flight) into a staged file renamed into place at the end.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "gguf/convert.h"
#include "gguf/format.h"
#include "gguf/writer.h"

namespace amalgam::gguf {

struct ExportOptions {
  ExportType type = *parse_export_type("f16");
  std::optional<std::string> pre;  // --gguf-pre: the llama.cpp pre-tokenizer name to write
  bool force = false;              // replace an existing output file
  std::string name;                // general.name; the model directory's name when empty
};

struct ExportStats {
  size_t tensors = 0;
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  double seconds = 0;
  std::map<std::string, size_t> types;  // ggml type name -> tensors of that type
};

ExportStats export_gguf(const std::filesystem::path& model, const std::filesystem::path& out,
                        const ExportOptions& options);

// Shared with the merge command's GGUF sink: declares the metadata (model, then tokenizer from
// `tokenizer_dir`) and the plan's tensors; returns each planned tensor's writer index.
std::vector<size_t> declare_gguf(GgufWriter& w, const ConversionPlan& plan,
                                 const io::ModelConfig& config,
                                 const std::filesystem::path& tokenizer_dir,
                                 const ExportOptions& options);

}  // namespace amalgam::gguf
