// The merge output as a GGUF file: a second TensorSink beside the safetensors one. The GGUF
// header needs every tensor up front, which begin() receives; each output tensor is buffered
// until its last byte arrives, then converted (q/k permutation, expert stacking, quantisation)
// straight into its place in the staged file. Memory is bounded by the tensors in flight.
#pragma once

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gguf/convert.h"
#include "gguf/export.h"
#include "gguf/writer.h"
#include "io/hf_config.h"
#include "merge/sink.h"

namespace amalgam::merge {

class GgufSink : public TensorSink {
 public:
  // `config`: the output's config.json; `tokenizer_dir`: a directory with its tokenizer files.
  GgufSink(std::filesystem::path out, io::ModelConfig config, std::filesystem::path tokenizer_dir,
           gguf::ExportOptions options);
  void begin(const std::vector<io::OutputTensorSpec>& outputs) override;
  void write(size_t index, uint64_t offset, const uint8_t* bytes, size_t size) override;
  void finish() override;

 private:
  struct Pending {
    std::mutex mutex;
    std::vector<uint8_t> bytes;
    uint64_t received = 0;
    std::vector<std::pair<size_t, size_t>> pieces;  // (planned tensor, piece)
  };
  void convert(size_t index);

  std::filesystem::path out_;
  io::ModelConfig config_;
  std::filesystem::path tokenizer_dir_;
  gguf::ExportOptions options_;
  std::unique_ptr<gguf::GgufWriter> writer_;
  gguf::ConversionPlan plan_;
  std::vector<size_t> writer_index_;
  std::vector<io::OutputTensorSpec> specs_;
  std::vector<std::unique_ptr<Pending>> pending_;
};

// Forwards every call to several sinks (safetensors and GGUF).
class TeeSink : public TensorSink {
 public:
  explicit TeeSink(std::vector<TensorSink*> sinks) : sinks_(std::move(sinks)) {}
  void begin(const std::vector<io::OutputTensorSpec>& outputs) override {
    for (auto* s : sinks_) s->begin(outputs);
  }
  void write(size_t index, uint64_t offset, const uint8_t* bytes, size_t size) override {
    for (auto* s : sinks_) s->write(index, offset, bytes, size);
  }
  void finish() override {
    for (auto* s : sinks_) s->finish();
  }

 private:
  std::vector<TensorSink*> sinks_;
};

}  // namespace amalgam::merge
