#include "infer/model.h"

#include <fmt/format.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "gguf/import.h"
#include "infer/finite.h"
#include "io/safetensors.h"

namespace amalgam::infer {

std::span<const float> ForwardResult::logits_of(int32_t batch_index) const {
  auto it = std::lower_bound(rows.begin(), rows.end(), batch_index);
  if (it == rows.end() || *it != batch_index) {
    fail("batch token {} did not ask for logits", batch_index);
  }
  return row(static_cast<size_t>(it - rows.begin()));
}

Model::Model(io::ModelConfig config, WeightMap weights, std::shared_ptr<const void> keepalive,
             QuantizedMap quantized)
    : config_(std::move(config)),
      arch_(&find_arch(config_)),
      views_(std::move(weights)),
      quantized_(std::move(quantized)),
      keepalive_(std::move(keepalive)),
      weights_(resolve_weights(config_, *arch_, views_, quantized_)),
      rope_(config_) {}

int64_t Model::context_length() const {
  if (config_.rope.type == "dynamic") return 0;  // scales its base past the trained length
  return std::max<int64_t>(config_.max_position_embeddings, 0);
}

std::string Model::context_description() const {
  return fmt::format(
      "{} positions (config.json max_position_embeddings, rope {}{})", context_length(),
      config_.rope.type,
      config_.rope.type == "default" ? "; a longer context needs rope scaling in config.json" : "");
}

uint64_t Model::weight_bytes_per_token() const {
  auto bytes = [](const WeightMatrix& m) { return static_cast<uint64_t>(m.rows) * m.row_bytes(); };
  uint64_t total = bytes(weights_.lm_head);
  for (const auto& l : weights_.layers) {
    total += bytes(l.q.w) + bytes(l.k.w) + bytes(l.v.w) + bytes(l.o.w);
    if (l.experts.empty()) {
      total += bytes(l.gate.w) + bytes(l.up.w) + bytes(l.down.w);
    } else {
      total += bytes(l.router);
      for (const auto& e : l.experts) total += bytes(e.gate) + bytes(e.up) + bytes(e.down);
      if (l.has_shared) {
        total +=
            bytes(l.shared_gate) + bytes(l.shared.gate) + bytes(l.shared.up) + bytes(l.shared.down);
      }
    }
  }
  return total;
}

WeightMap checkpoint_weights(const io::Checkpoint& checkpoint) {
  WeightMap map;
  for (const auto& name : checkpoint.names()) map.emplace(name, checkpoint.view(name));
  return map;
}

namespace {

// An anonymous, huge-page-advised arena holding copies of tensors in their stored dtype.
class WeightArena {
 public:
  explicit WeightArena(size_t bytes) : size_(std::max<size_t>(bytes, 1)) {
    void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("cannot allocate {} bytes for the model weights", size_);
    data_ = static_cast<uint8_t*>(p);
    ::madvise(data_, size_, MADV_HUGEPAGE);  // advisory; ignored where unsupported
  }
  ~WeightArena() { ::munmap(data_, size_); }
  WeightArena(const WeightArena&) = delete;
  WeightArena& operator=(const WeightArena&) = delete;
  uint8_t* data() { return data_; }

 private:
  size_t size_;
  uint8_t* data_ = nullptr;
};

constexpr size_t kArenaAlign = 64;

size_t aligned_size(size_t bytes) { return (bytes + kArenaAlign - 1) / kArenaAlign * kArenaAlign; }

size_t quantized_bytes(const gguf::QuantizedMatrix& q) {
  return static_cast<size_t>(q.rows) * static_cast<size_t>(gguf::row_bytes(q.type, q.cols));
}

}  // namespace

WeightMap copy_weights_into_memory(const WeightMap& views, QuantizedMap* quantized,
                                   std::shared_ptr<const void>* storage) {
  size_t total = 0;
  for (const auto& [name, v] : views) total += aligned_size(v.nbytes());
  if (quantized != nullptr) {
    for (const auto& [name, q] : *quantized) total += aligned_size(quantized_bytes(q));
  }
  auto arena = std::make_shared<WeightArena>(total);
  size_t offset = 0;
  auto copy = [&](const uint8_t* src, size_t bytes) {
    uint8_t* dst = arena->data() + offset;
    std::memcpy(dst, src, bytes);
    offset += aligned_size(bytes);
    return dst;
  };
  WeightMap out;
  for (const auto& [name, v] : views) {
    out.emplace(name, tensor::TensorView{v.dtype, v.shape, copy(v.data, v.nbytes())});
  }
  if (quantized != nullptr) {
    for (auto& [name, q] : *quantized) q.data = copy(q.data, quantized_bytes(q));
  }
  *storage = arena;
  return out;
}

std::unique_ptr<Model> load_model(const std::filesystem::path& path, const LoadOptions& options) {
  if (std::filesystem::is_regular_file(path) && gguf::is_gguf_file(path)) {
    // Run as stored: F32/F16/BF16 matrices mapped, quantised ones dequantised block by block
    // inside the products; the engine scores exactly the values the file holds.
    gguf::ImportedModel g = gguf::import_gguf(path, /*keep_stored_types=*/true);
    WeightMap weights(g.views.begin(), g.views.end());
    if (check_finite_on_load()) {
      check_finite_weights(weights, path.string());
      check_finite_quantized(g.quantized, path.string());
    }
    // The file's mapping (and any converted tensors) is released once the copies are made.
    if (options.in_memory) weights = copy_weights_into_memory(weights, &g.quantized, &g.storage);
    try {
      return std::make_unique<Model>(std::move(g.config), std::move(weights), g.storage,
                                     std::move(g.quantized));
    } catch (const Error& e) {
      fail("{}: {}", path.string(), e.what());
    }
  }
  auto checkpoint = std::make_shared<io::Checkpoint>(path);
  io::ModelConfig config = io::read_model_config(checkpoint->directory());
  WeightMap weights = checkpoint_weights(*checkpoint);
  if (check_finite_on_load()) check_finite_weights(weights, path.string());
  std::shared_ptr<const void> keepalive = checkpoint;
  // The checkpoint's mapping is released on return when the weights are copied.
  if (options.in_memory) weights = copy_weights_into_memory(weights, nullptr, &keepalive);
  try {
    return std::make_unique<Model>(std::move(config), std::move(weights), keepalive);
  } catch (const Error& e) {
    fail("{}: {}", path.string(), e.what());
  }
}

}  // namespace amalgam::infer
