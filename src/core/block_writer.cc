#include "core/block_writer.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace amalgam::core {

BlockWriter::BlockWriter(int fd, uint64_t file_size, std::filesystem::path path)
    : fd_(fd), size_(file_size), path_(std::move(path)) {}

void BlockWriter::write(uint64_t offset, const uint8_t* bytes, size_t size,
                        const std::string& what) {
  if (offset > size_ || size > size_ - offset) {
    fail("internal: {}: {} bytes at {} are past the file's {} bytes", path_.string(), size,
         offset, size_);
  }
  while (size > 0) {
    const uint64_t block = offset / kBlock;
    const uint64_t begin = block * kBlock, end = std::min(begin + kBlock, size_);
    const size_t n = static_cast<size_t>(std::min<uint64_t>(size, end - offset));
    if (offset == begin && n == end - begin) {
      write_through(offset, bytes, n, what);  // a whole block in one piece
    } else {
      std::vector<uint8_t> complete;
      bool through = false;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        const auto [it, added] = pending_.try_emplace(block);
        Pending& p = it->second;
        if (added && buffered_ < kMaxBuffered) {
          p.data.resize(end - begin);
          ++buffered_;
        }
        through = p.data.empty();
        if (!through) std::memcpy(p.data.data() + (offset - begin), bytes, n);
        p.filled += n;
        if (p.filled == end - begin) {
          if (!through) {
            complete = std::move(p.data);
            --buffered_;
          }
          pending_.erase(it);
        }
      }
      if (through) {
        write_through(offset, bytes, n, what);
      } else if (!complete.empty()) {
        write_through(begin, complete.data(), complete.size(), what);
      }
    }
    offset += n;
    bytes += n;
    size -= n;
  }
}

void BlockWriter::write_through(uint64_t offset, const uint8_t* bytes, size_t size,
                                const std::string& what) const {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pwrite(fd_, bytes + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("{}: writing {} failed: {}", path_.string(), what, std::strerror(errno));
    if (n == 0) fail("{}: writing {} made no progress", path_.string(), what);
    done += static_cast<size_t>(n);
  }
}

void BlockWriter::check_complete() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (pending_.empty()) return;
  uint64_t first = UINT64_MAX;
  for (const auto& [block, p] : pending_) first = std::min(first, block);
  fail("internal: {}: {} blocks were never completely written (the first at byte {})",
       path_.string(), pending_.size(), first * kBlock);
}

}  // namespace amalgam::core
