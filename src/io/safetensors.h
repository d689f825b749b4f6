// safetensors reading: one file (SafetensorsFile) or a model directory, single or sharded
// (Checkpoint). Files are memory-mapped; tensors are zero-copy views. Every header is validated
// before use, and errors name the file and tensor. PyTorch checkpoints (pytorch_model.bin, a
// torch.save zip archive) are read through the same classes (io/torch_file.h).
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "tensor/tensor.h"

namespace amalgam::io {

struct TensorInfo {
  std::string name;
  tensor::DType dtype;
  tensor::Shape shape;
  uint64_t begin = 0;  // offsets into the data section (after the header; a torch file: the file)
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const;
  tensor::TensorView view(const TensorInfo& info) const;
  // Copies bytes [offset, offset + n) of a tensor's data with pread (no mapping).
  void read_data(const TensorInfo& info, uint64_t offset, size_t n, uint8_t* dst) const;
  uint64_t file_size() const { return file_.size(); }

 private:
  core::MappedFile file_;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;  // in file order (ascending offsets)
  std::map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

// A Hugging Face model directory (model.safetensors or model.safetensors.index.json + shards,
// else pytorch_model.bin or pytorch_model.bin.index.json + shards), or a single such file.
class Checkpoint {
 public:
  explicit Checkpoint(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  // Directory holding config.json and tokenizer files (the path itself, or a file's parent).
  const std::filesystem::path& directory() const { return dir_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& shards() const { return shards_; }
  // All tensor names, sorted.
  std::vector<std::string> names() const;
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  tensor::TensorView view(const std::string& name) const;
  // Reads a tensor as fp32 (copies). Throws naming the tensor if its dtype is not a float type.
  tensor::Tensor load_f32(const std::string& name) const;
  const SafetensorsFile& shard_of(const std::string& name) const;
  uint64_t total_bytes() const;

 private:
  struct Entry {
    size_t shard;
    const TensorInfo* info;
  };
  const Entry& entry(const std::string& name) const;

  std::filesystem::path path_;
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, Entry> index_;
};

}  // namespace amalgam::io
