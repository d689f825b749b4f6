#include "merge/gguf_sink.h"

#include <cstring>
#include <map>

#include "core/error.h"

namespace amalgam::merge {

GgufSink::GgufSink(std::filesystem::path out, io::ModelConfig config,
                   std::filesystem::path tokenizer_dir, gguf::ExportOptions options)
    : out_(std::move(out)),
      config_(std::move(config)),
      tokenizer_dir_(std::move(tokenizer_dir)),
      options_(std::move(options)) {
  // Created (and its target checked) before any weight is merged.
  writer_ = std::make_unique<gguf::GgufWriter>(out_, options_.force);
}

void GgufSink::begin(const std::vector<io::OutputTensorSpec>& outputs) {
  specs_ = outputs;
  std::vector<std::pair<std::string, tensor::Shape>> hf;
  std::map<std::string, size_t> by_name;
  for (size_t i = 0; i < outputs.size(); ++i) {
    hf.emplace_back(outputs[i].name, outputs[i].shape);
    by_name[outputs[i].name] = i;
  }
  plan_ = gguf::plan_conversion(config_, hf, options_.type);
  writer_index_ = gguf::declare_gguf(*writer_, plan_, config_, tokenizer_dir_, options_);
  writer_->begin();
  pending_.clear();
  for (size_t i = 0; i < outputs.size(); ++i) pending_.push_back(std::make_unique<Pending>());
  for (size_t t = 0; t < plan_.tensors.size(); ++t) {
    const auto& pt = plan_.tensors[t];
    if (!pt.values.empty()) {
      writer_->write(writer_index_[t], 0, pt.values.data(), pt.values.size() * sizeof(float));
    }
    for (size_t p = 0; p < pt.pieces.size(); ++p) {
      pending_[by_name.at(pt.pieces[p].hf)]->pieces.emplace_back(t, p);
    }
  }
}

void GgufSink::write(size_t index, uint64_t offset, const uint8_t* bytes, size_t size) {
  Pending& p = *pending_.at(index);
  const io::OutputTensorSpec& spec = specs_[index];
  const uint64_t total =
      static_cast<uint64_t>(tensor::numel(spec.shape)) * tensor::dtype_size(spec.dtype);
  bool complete = false;
  {
    std::lock_guard<std::mutex> lock(p.mutex);
    if (p.bytes.empty()) p.bytes.resize(total);
    AMALGAM_CHECK(offset + size <= total, "GGUF sink: write past the end of '{}'", spec.name);
    std::memcpy(p.bytes.data() + offset, bytes, size);
    p.received += size;
    complete = p.received == total;
  }
  if (complete) convert(index);
}

void GgufSink::convert(size_t index) {
  Pending& p = *pending_[index];
  const io::OutputTensorSpec& spec = specs_[index];
  const tensor::TensorView view{spec.dtype, spec.shape, p.bytes.data()};
  for (const auto& [t, piece] : p.pieces) {
    const gguf::PlannedTensor& pt = plan_.tensors[t];
    const auto slot = writer_index_[t];  // C++20 lambdas cannot capture structured bindings
    gguf::convert_piece(pt, pt.pieces[piece], view, [&](uint64_t off, const uint8_t* b, size_t n) {
      writer_->write(slot, off, b, n);
    });
  }
  std::vector<uint8_t>().swap(p.bytes);  // the tensor is in the file: free its buffer
}

void GgufSink::finish() {
  for (size_t i = 0; i < pending_.size(); ++i) {
    const uint64_t total =
        static_cast<uint64_t>(tensor::numel(specs_[i].shape)) * tensor::dtype_size(specs_[i].dtype);
    AMALGAM_CHECK(pending_[i]->received == total, "GGUF sink: tensor '{}' got {} of {} bytes",
                  specs_[i].name, pending_[i]->received, total);
  }
  writer_->commit();
}

}  // namespace amalgam::merge
