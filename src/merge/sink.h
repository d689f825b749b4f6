// Where the executor puts output tensors: a safetensors checkpoint on disk (streamed, sharded) or
// a map in memory that the inference engine reads as tensor views (recipes evaluated in RAM).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "io/safetensors_writer.h"
#include "tensor/tensor.h"

namespace amalgam::merge {

class TensorSink {
 public:
  virtual ~TensorSink() = default;
  // Declares every output tensor, in plan order, before any write.
  virtual void begin(const std::vector<io::OutputTensorSpec>& outputs) = 0;
  // Stores bytes [offset, offset + size) of output `index`. Called from several threads at once,
  // with ranges that never overlap.
  virtual void write(size_t index, uint64_t offset, const uint8_t* bytes, size_t size) = 0;
  // Called once after every byte was written.
  virtual void finish() = 0;
};

// Writes model.safetensors, or model-0000k-of-0000N.safetensors + index.json, into `dir`.
class CheckpointSink : public TensorSink {
 public:
  CheckpointSink(std::filesystem::path dir, uint64_t max_shard_bytes);
  void begin(const std::vector<io::OutputTensorSpec>& outputs) override;
  void write(size_t index, uint64_t offset, const uint8_t* bytes, size_t size) override;
  void finish() override;
  const io::SafetensorsWriter& writer() const { return *writer_; }

 private:
  std::filesystem::path dir_;
  uint64_t max_shard_bytes_;
  std::unique_ptr<io::SafetensorsWriter> writer_;
};

struct MemoryTensor {
  tensor::DType dtype = tensor::DType::kBF16;
  tensor::Shape shape;
  std::vector<uint8_t> bytes;
  tensor::TensorView view() const { return {dtype, shape, bytes.data()}; }
};

// Keeps the output in memory. Executing another plan with the same outputs into the same sink
// reuses the buffers (evolutionary search merges thousands of candidates this way).
class MemorySink : public TensorSink {
 public:
  // keep_unlisted: begin() keeps the tensors a plan does not produce (a resident model updated by
  // plans of the tensors that changed); otherwise they are dropped.
  explicit MemorySink(bool keep_unlisted = false) : keep_unlisted_(keep_unlisted) {}
  void begin(const std::vector<io::OutputTensorSpec>& outputs) override;
  void write(size_t index, uint64_t offset, const uint8_t* bytes, size_t size) override;
  void finish() override {}

  const std::map<std::string, MemoryTensor>& tensors() const { return tensors_; }
  // name -> view into this sink's buffers (valid until the next begin()).
  std::map<std::string, tensor::TensorView> views() const;
  const MemoryTensor& at(const std::string& name) const;
  // Drops every tensor whose name is not in `names`.
  void retain(const std::set<std::string>& names);

 private:
  bool keep_unlisted_ = false;
  std::map<std::string, MemoryTensor> tensors_;
  std::vector<MemoryTensor*> by_index_;
};

}  // namespace amalgam::merge
