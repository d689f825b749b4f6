// Read-only memory map of a whole file (RAII). Views into it stay valid while it lives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace amalgam::core {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Copies bytes [offset, offset + n) with pread, without mapping them: scattered small reads
  // through the mapping would map (and keep resident) whole large folios around each one.
  void read_at(size_t offset, size_t n, uint8_t* dst) const;

 private:
  std::string path_;
  int fd_ = -1;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  int signal_slot_ = -1;  // this mapping, named if reading it raises SIGBUS
};

// Drops the whole pages inside [data, data + size) of a read-only file mapping from this process
// (MADV_DONTNEED). The page cache keeps them, so a later access refaults without I/O; streaming
// through inputs larger than memory then keeps the resident set bounded.
void release_mapped_pages(const void* data, size_t size);
// Starts reading [data, data + size) of a file mapping ahead of use (MADV_WILLNEED).
void prefetch_mapped_pages(const void* data, size_t size);

}  // namespace amalgam::core
