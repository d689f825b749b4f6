#include "merge/sink.h"

#include <cstring>
#include <set>

#include "core/error.h"

namespace amalgam::merge {

CheckpointSink::CheckpointSink(std::filesystem::path dir, uint64_t max_shard_bytes)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes) {}

void CheckpointSink::begin(const std::vector<io::OutputTensorSpec>& outputs) {
  writer_ = std::make_unique<io::SafetensorsWriter>(dir_, outputs, max_shard_bytes_);
}

void CheckpointSink::write(size_t index, uint64_t offset, const uint8_t* bytes, size_t size) {
  writer_->write_range(index, offset, bytes, size);
}

void CheckpointSink::finish() { writer_->finish(); }

void MemorySink::begin(const std::vector<io::OutputTensorSpec>& outputs) {
  if (!keep_unlisted_) {
    // Drop tensors this plan does not produce; keep (and reuse) the buffers of those it does.
    std::set<std::string> names;
    for (const auto& o : outputs) names.insert(o.name);
    retain(names);
  }
  by_index_.clear();
  for (const auto& o : outputs) {
    MemoryTensor& t = tensors_[o.name];
    t.dtype = o.dtype;
    t.shape = o.shape;
    t.bytes.resize(static_cast<size_t>(tensor::numel(o.shape)) * tensor::dtype_size(o.dtype));
    by_index_.push_back(&t);
  }
}

void MemorySink::write(size_t index, uint64_t offset, const uint8_t* bytes, size_t size) {
  MemoryTensor& t = *by_index_.at(index);
  AMALGAM_CHECK(offset <= t.bytes.size() && size <= t.bytes.size() - offset,
                "internal: write outside an in-memory tensor");
  std::memcpy(t.bytes.data() + offset, bytes, size);
}

void MemorySink::retain(const std::set<std::string>& names) {
  for (auto it = tensors_.begin(); it != tensors_.end();) {
    it = names.count(it->first) ? std::next(it) : tensors_.erase(it);
  }
}

std::map<std::string, tensor::TensorView> MemorySink::views() const {
  std::map<std::string, tensor::TensorView> out;
  for (const auto& [name, t] : tensors_) out.emplace(name, t.view());
  return out;
}

const MemoryTensor& MemorySink::at(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail("no output tensor '{}' in memory", name);
  return it->second;
}

}  // namespace amalgam::merge
