// A GGUF file written metadata first: every key and tensor (name, shape, type) is declared up
// front, begin() writes the header and sizes the file, then tensor bytes are written at their
// offsets in any order and from several threads (pwrite). The file is staged beside the target
// and renamed into place by commit(); destroyed without commit(), the staged file is removed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "gguf/format.h"
#include "gguf/metadata.h"

namespace amalgam::gguf {

class GgufWriter {
 public:
  GgufWriter(std::filesystem::path target, bool force);
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Keys are written in the order set; setting a key again replaces its value.
  void set(const std::string& key, Value value);
  // shape: outermost first (as safetensors and torch write it); the file stores it reversed
  // (ne[0] is the row length). Returns the tensor's index.
  size_t add_tensor(std::string name, std::vector<int64_t> shape, GgmlType type);
  void begin();
  void write(size_t tensor, uint64_t offset, const void* data, size_t size);
  void commit();

  uint64_t tensor_bytes(size_t tensor) const { return tensors_.at(tensor).bytes; }
  uint64_t file_bytes() const { return file_bytes_; }
  const std::filesystem::path& staged_path() const { return staged_; }

 private:
  struct Info {
    std::string name;
    std::vector<int64_t> shape;
    GgmlType type;
    uint64_t bytes = 0;
    uint64_t offset = 0;  // from the start of the data section
  };
  std::filesystem::path target_;
  std::filesystem::path staged_;
  bool force_;
  int fd_ = -1;
  Metadata metadata_;
  std::vector<Info> tensors_;
  uint64_t data_start_ = 0;
  uint64_t file_bytes_ = 0;
  bool begun_ = false;
  bool committed_ = false;
};

}  // namespace amalgam::gguf
