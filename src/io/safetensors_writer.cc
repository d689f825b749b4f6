#include "io/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"

namespace amalgam::io {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

uint64_t parse_size(const std::string& text) {
  if (text.empty()) fail("empty size");
  size_t pos = 0;
  double value = 0;
  try {
    value = std::stod(text, &pos);
  } catch (const std::exception&) {
    fail("'{}' is not a size (examples: 5B, 500M, 1000000)", text);
  }
  std::string suffix = text.substr(pos);
  double mult = 1;
  if (suffix == "K" || suffix == "k")
    mult = 1e3;
  else if (suffix == "M" || suffix == "m")
    mult = 1e6;
  else if (suffix == "B" || suffix == "G" || suffix == "b" || suffix == "g")
    mult = 1e9;
  else if (suffix == "T" || suffix == "t")
    mult = 1e12;
  else if (!suffix.empty())
    fail("'{}' is not a size (examples: 5B, 500M, 1000000)", text);
  if (value <= 0) fail("size '{}' must be positive", text);
  return static_cast<uint64_t>(value * mult);
}

SafetensorsWriter::SafetensorsWriter(const fs::path& dir, std::vector<OutputTensorSpec> specs,
                                     uint64_t max_shard_bytes)
    : dir_(dir),
      specs_(std::move(specs)),
      written_(std::make_unique<std::atomic<uint64_t>[]>(specs_.size())) {
  // Assign tensors to shards in order, starting a new shard when the next tensor would overflow.
  std::vector<std::vector<size_t>> groups(1);
  uint64_t current = 0;
  for (size_t i = 0; i < specs_.size(); ++i) {
    uint64_t bytes =
        static_cast<uint64_t>(tensor::numel(specs_[i].shape)) * tensor::dtype_size(specs_[i].dtype);
    if (!groups.back().empty() && current + bytes > max_shard_bytes) {
      groups.emplace_back();
      current = 0;
    }
    groups.back().push_back(i);
    current += bytes;
    total_bytes_ += bytes;
  }
  slots_.resize(specs_.size());
  const size_t n = groups.size();
  unflushed_ = std::make_unique<std::atomic<uint64_t>[]>(n);
  for (size_t s = 0; s < n; ++s) {
    Shard shard;
    shard.path = dir_ / (n == 1 ? std::string("model.safetensors")
                                : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, n));
    ordered_json header = ordered_json::object();
    header["__metadata__"] = {{"format", "pt"}};
    uint64_t offset = 0;
    for (size_t i : groups[s]) {
      uint64_t bytes = static_cast<uint64_t>(tensor::numel(specs_[i].shape)) *
                       tensor::dtype_size(specs_[i].dtype);
      header[specs_[i].name] = {{"dtype", tensor::dtype_name(specs_[i].dtype)},
                                {"shape", specs_[i].shape},
                                {"data_offsets", {offset, offset + bytes}}};
      slots_[i] = Slot{s, offset, offset + bytes};
      offset += bytes;
    }
    std::string text = header.dump();
    text.resize((text.size() + 7) / 8 * 8, ' ');  // align the data section to 8 bytes
    uint64_t header_len = text.size();
    shard.data_start = 8 + header_len;
    shard.fd = ::open(shard.path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (shard.fd < 0) fail("{}: cannot create: {}", shard.path.string(), std::strerror(errno));
    shards_.push_back(shard);
    uint64_t file_size = shard.data_start + offset;
    int rc = ::posix_fallocate(shard.fd, 0, static_cast<off_t>(file_size));
    if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL) {
      fail("{}: cannot allocate {} bytes: {}", shard.path.string(), file_size, std::strerror(rc));
    }
    if (rc != 0 && ::ftruncate(shard.fd, static_cast<off_t>(file_size)) != 0) {
      fail("{}: cannot size file: {}", shard.path.string(), std::strerror(errno));
    }
    std::string prefix(8, '\0');
    std::memcpy(prefix.data(), &header_len, 8);
    prefix += text;
    core::pwrite_all(shard.fd, prefix.data(), prefix.size(), 0, shard.path);
  }
}

SafetensorsWriter::~SafetensorsWriter() {
  for (auto& s : shards_) {
    if (s.fd >= 0) ::close(s.fd);
  }
}

void SafetensorsWriter::write(size_t index, const uint8_t* bytes, size_t size) {
  const Slot& slot = slots_.at(index);
  if (size != slot.end - slot.begin) {
    fail("internal: tensor '{}' has {} bytes, expected {}", specs_[index].name, size,
         slot.end - slot.begin);
  }
  write_range(index, 0, bytes, size);
}

void SafetensorsWriter::write_range(size_t index, uint64_t offset, const uint8_t* bytes,
                                    size_t size) {
  const Slot& slot = slots_.at(index);
  const Shard& shard = shards_[slot.shard];
  if (offset > slot.end - slot.begin || size > slot.end - slot.begin - offset) {
    fail("internal: bytes [{}, {}) are outside tensor '{}' ({} bytes)", offset, offset + size,
         specs_[index].name, slot.end - slot.begin);
  }
  core::pwrite_all(shard.fd, bytes, size, shard.data_start + slot.begin + offset, shard.path,
                   specs_[index].name);
  written_[index] += size;
  // Start writeback every 64 MB instead of leaving it all to the final fsync: the disk then
  // writes while the merge computes. (Asynchronous; a failure would surface at fsync.)
  constexpr uint64_t kWritebackBytes = uint64_t{64} << 20;
  if (unflushed_[slot.shard].fetch_add(size) + size >= kWritebackBytes) {
    unflushed_[slot.shard] = 0;
    ::sync_file_range(shard.fd, 0, 0, SYNC_FILE_RANGE_WRITE);
  }
}

void SafetensorsWriter::finish() {
  for (size_t i = 0; i < specs_.size(); ++i) {
    const uint64_t expected = slots_[i].end - slots_[i].begin;
    if (written_[i].load() != expected) {
      fail("internal: output tensor '{}' got {} of its {} bytes", specs_[i].name,
           written_[i].load(), expected);
    }
  }
  for (auto& s : shards_) {
    if (::fsync(s.fd) != 0 || ::close(s.fd) != 0) {
      s.fd = -1;
      fail("{}: sync failed: {}", s.path.string(), std::strerror(errno));
    }
    s.fd = -1;
  }
  if (shards_.size() > 1) {
    ordered_json index;
    index["metadata"] = {{"total_size", total_bytes_}};
    ordered_json map = ordered_json::object();
    for (size_t i = 0; i < specs_.size(); ++i) {
      map[specs_[i].name] = shards_[slots_[i].shard].path.filename().string();
    }
    index["weight_map"] = map;
    core::write_text_file(dir_ / "model.safetensors.index.json", index.dump(2) + "\n");
  }
}

}  // namespace amalgam::io
