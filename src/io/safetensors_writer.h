// Streaming safetensors writer. Every output tensor's name, dtype and shape is declared up front
// (the merge plan knows them before any weight is read), so shard layout and headers are fixed
// first; then tensors are written in any order, from any thread, straight to their offsets with
// pwrite. Memory stays bounded by the tensors in flight. Shards roll over at max_shard_bytes,
// as mergekit does; names follow Hugging Face (model.safetensors or model-0000k-of-0000N...).
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace amalgam::io {

struct OutputTensorSpec {
  std::string name;
  tensor::DType dtype;
  tensor::Shape shape;
};

class SafetensorsWriter {
 public:
  // Lays out shards in `dir` for the given tensors, in that order; allocates the files (a full
  // disk fails here, before any computation).
  SafetensorsWriter(const std::filesystem::path& dir, std::vector<OutputTensorSpec> specs,
                    uint64_t max_shard_bytes);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Writes the bytes of tensor `index` (size must equal dtype size x numel). Thread-safe.
  void write(size_t index, const uint8_t* bytes, size_t size);
  // Writes bytes [offset, offset + size) of tensor `index`; the ranges of one tensor may come in
  // any order, from any thread, and must not overlap. Thread-safe.
  void write_range(size_t index, uint64_t offset, const uint8_t* bytes, size_t size);
  // Checks every tensor was written, fsyncs the shards, writes index.json when sharded.
  void finish();

  const std::vector<OutputTensorSpec>& specs() const { return specs_; }
  size_t shard_count() const { return shards_.size(); }
  uint64_t total_bytes() const { return total_bytes_; }

 private:
  struct Shard {
    std::filesystem::path path;
    int fd = -1;
    uint64_t data_start = 0;
  };
  struct Slot {
    size_t shard;
    uint64_t begin;
    uint64_t end;
  };

  std::filesystem::path dir_;
  std::vector<OutputTensorSpec> specs_;
  std::vector<Shard> shards_;
  std::vector<Slot> slots_;
  std::unique_ptr<std::atomic<uint64_t>[]> written_;  // bytes written per tensor
  // Bytes written per shard since its writeback was last started (see write_range).
  std::unique_ptr<std::atomic<uint64_t>[]> unflushed_;
  uint64_t total_bytes_ = 0;
};

// "5B", "500M", "2G", "1000" -> bytes. Suffixes K/M/B/G are decimal, as in mergekit.
uint64_t parse_size(const std::string& text);

}  // namespace amalgam::io
