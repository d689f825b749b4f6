// passthrough: copies its single input, optionally multiplied by `scale` (frankenmerges).
#include "core/error.h"
#include "merge/registry.h"

namespace amalgam::merge {

namespace {

class ScaleMerger : public ChunkMerger {
 public:
  explicit ScaleMerger(float scale) : scale_(scale) {}
  void merge(size_t, size_t n, std::span<const float* const> inputs, float* out) override {
    const float* x = inputs[0];
    for (size_t j = 0; j < n; ++j) out[j] = x[j] * scale_;
  }

 private:
  float scale_;
};

ParamSpec scale_spec() {
  ParamSpec s;
  s.name = "scale";
  s.default_value = 1.0;
  s.help = "factor applied to the copied tensor";
  return s;
}

class Passthrough : public MergeMethod {
 public:
  Passthrough()
      : MergeMethod({.name = "passthrough",
                     .title = "Passthrough",
                     .summary = "copies one model's tensors, optionally scaled (frankenmerges)",
                     .inputs = 1,
                     .params = {scale_spec()}}) {}

  bool copies_input(const PlanEntry& entry) const override {
    return tensor_param(entry, 0, "scale") == 1.0;
  }

  void check_entry(const PlanEntry& entry) const override {
    if (entry.sources.size() != 1) {
      fail("tensor '{}': passthrough takes exactly one input, got {} (use one source per slice)",
           entry.name, entry.sources.size());
    }
  }

  std::unique_ptr<ChunkMerger> prepare(const MethodInputs& in) const override {
    check(in.entry);
    return std::make_unique<ScaleMerger>(static_cast<float>(tensor_param(in.entry, 0, "scale")));
  }
};

}  // namespace

std::unique_ptr<MergeMethod> make_passthrough() { return std::make_unique<Passthrough>(); }

}  // namespace amalgam::merge
