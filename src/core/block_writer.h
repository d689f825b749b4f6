// Writes a file of known size in whole, aligned 2 MiB blocks, whatever the order and size of the
// pieces handed to it. The page cache keeps a written file in folios no larger than the writes
// that made them, and a file mapped from small folios is mapped by 4 KiB pages: decoding a model
// straight after merging or exporting it then streams its weights up to half again slower than
// from 2 MiB pages (docs/performance.md). Pieces that leave a block incomplete wait in memory
// until the rest of the block arrives; pieces that cover whole blocks are written at once.
//
// Memory: one 2 MiB buffer per incomplete block, at most kMaxBuffered of them (writers fill a
// file roughly in order, so a few are incomplete at a time); past that, pieces of further
// incomplete blocks are written straight through, in small folios.
#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace amalgam::core {

class BlockWriter {
 public:
  static constexpr uint64_t kBlock = uint64_t{2} << 20;
  static constexpr size_t kMaxBuffered = 32;

  // `fd` stays owned by the caller; `path` names the file in errors.
  BlockWriter(int fd, uint64_t file_size, std::filesystem::path path);

  // Writes bytes [offset, offset + size) of the file. Thread-safe; every byte of the file must
  // be written exactly once (pieces never overlap). `what` names the data in an error message
  // ("tensor 'lm_head.weight'").
  void write(uint64_t offset, const uint8_t* bytes, size_t size, const std::string& what);

  // Fails if some bytes of the file were never written (an internal error of the caller).
  void check_complete() const;

 private:
  struct Pending {
    std::vector<uint8_t> data;  // empty: the block's pieces are written straight through
    uint64_t filled = 0;        // bytes of the block received so far
  };
  void write_through(uint64_t offset, const uint8_t* bytes, size_t size,
                     const std::string& what) const;

  int fd_;
  uint64_t size_;
  std::filesystem::path path_;
  mutable std::mutex mutex_;
  std::unordered_map<uint64_t, Pending> pending_;  // by block index
  size_t buffered_ = 0;                            // pending blocks holding a buffer
};

}  // namespace amalgam::core
