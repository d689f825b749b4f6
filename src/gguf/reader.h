// A GGUF file, memory-mapped and validated as defensively as llama.cpp's gguf.cpp: every count,
// length and offset is checked against the file's size before use, duplicate keys and tensor
// names are rejected, tensors must be aligned, inside the data section and not overlap, and the
// first error names the file and the key or tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "gguf/format.h"
#include "gguf/metadata.h"

namespace amalgam::gguf {

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // outermost first (ne reversed)
  GgmlType type;
  uint64_t offset = 0;  // from the start of the data section
  uint64_t bytes = 0;
  const uint8_t* data = nullptr;

  int64_t numel() const;
  int64_t row_length() const { return shape.back(); }
  int64_t rows() const { return numel() / row_length(); }
};

class GgufFile {
 public:
  explicit GgufFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  const Metadata& metadata() const { return metadata_; }
  const Value* find(const std::string& key) const { return gguf::find(metadata_, key); }
  // The key's value; fails naming the file and key when absent.
  const Value& require(const std::string& key) const;
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* tensor(const std::string& name) const;
  uint64_t file_size() const { return file_->size(); }

 private:
  std::filesystem::path path_;
  std::shared_ptr<core::MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = kDefaultAlignment;
  uint64_t data_offset_ = 0;
  Metadata metadata_;
  std::vector<TensorInfo> tensors_;
};

// True when the file starts with the GGUF magic.
bool is_gguf_file(const std::filesystem::path& path);

}  // namespace amalgam::gguf
