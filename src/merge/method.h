// A merge method computes one output tensor from its input tensors in fp32. Each method is one
// file behind the registry (merge/methods.def). Everything the recipe layer, the executor, the
// model card, `amalgam methods` and the evolutionary search need to know about a method lives in
// its MethodInfo: parameters (typed, ranged, searchable or not), how it treats the base model
// and embeddings, how many inputs it takes, its title and reference.
//
// Methods stream: the executor never holds whole fp32 copies of large tensors. prepare() may scan
// the inputs through a TensorReader to compute per-tensor statistics (norms, top-k thresholds)
// and returns a ChunkMerger that then computes the output range by range, in ascending order,
// from fp32 input chunks. A method that truly needs whole tensors reads them in prepare().
#pragma once

#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "merge/plan.h"
#include "tensor/tensor.h"

namespace amalgam::merge {

enum class ParamScope {
  kGlobal,  // one value per output tensor (slice or top-level parameters)
  kTensor,  // one value per (model, tensor)
};
enum class ParamKind { kReal, kBool, kInt };

struct ParamSpec {
  std::string name;
  ParamScope scope = ParamScope::kTensor;
  ParamKind kind = ParamKind::kReal;
  std::optional<double> default_value;  // nullopt: required
  double min = -std::numeric_limits<double>::infinity();  // valid range, inclusive
  double max = std::numeric_limits<double>::infinity();
  // An evolutionary search may make it a gene; [search_min, search_max] is the box it searches.
  bool searchable = false;
  double search_min = 0, search_max = 1;
  std::string help;
};

// Why a value is not valid for spec (wrong kind or out of range), or nullopt when it is.
std::optional<std::string> param_problem(const ParamSpec& spec, double value);

enum class BaseRole {
  kInput,     // the base (if any) is one more ordinary input and needs its parameters
  kRequired,  // the method subtracts or interpolates from the base; required
  kOptional,  // optional, but special when given (nuslerp, multislerp: task vectors)
};

enum class EmbedRule {
  kCommonSubMatrix,  // inputs of different vocab sizes are cropped to the common rows/cols
  kCropToBase,       // GTA family: cropped to the base; other shape mismatches drop the model
};

struct MethodInfo {
  std::string name;       // registry name, as in recipes
  std::string title;      // for the model card
  std::string reference;  // paper or page, "" when none
  std::string summary;    // one line for `amalgam methods`
  BaseRole base = BaseRole::kInput;
  EmbedRule embed = EmbedRule::kCommonSubMatrix;
  std::optional<size_t> inputs;  // inputs per output tensor when fixed (passthrough 1, slerp 2)
  bool random = false;           // draws random numbers (seeded by --random-seed)
  bool card_names_base = true;   // slerp's base is only its t = 0 end, not a base of task vectors
  std::vector<ParamSpec> params;
};

// Random access to the fp32 values of one tensor's inputs (already rounded to the plan's compute
// dtype and cropped to the entry's shape). Element indices are those of the output tensor.
class TensorReader {
 public:
  virtual ~TensorReader() = default;
  virtual size_t inputs() const = 0;
  virtual size_t numel() const = 0;
  // Elements per chunk for statistics passes: whole rows of the last dimension.
  virtual size_t chunk_elements() const = 0;
  // Writes elements [begin, begin + n) of input `input` to dst.
  virtual void read(size_t input, size_t begin, size_t n, float* dst) const = 0;
};

struct MethodInputs {
  const PlanEntry& entry;      // name, shape, resolved parameters
  const TensorReader& reader;  // one input per entry.sources, same order
  uint64_t seed = 0;           // --random-seed; random methods key their streams by it
};

// Computes output elements range by range. Chunks cover the tensor in ascending order and always
// hold whole rows of the last dimension.
class ChunkMerger {
 public:
  virtual ~ChunkMerger() = default;
  // inputs[i] holds elements [begin, begin + n) of input i; writes n values to out.
  virtual void merge(size_t begin, size_t n, std::span<const float* const> inputs, float* out) = 0;
};

class MergeMethod {
 public:
  explicit MergeMethod(MethodInfo info) : info_(std::move(info)) {}
  virtual ~MergeMethod() = default;

  const MethodInfo& info() const { return info_; }
  std::string_view name() const { return info_.name; }
  bool requires_base() const { return info_.base == BaseRole::kRequired; }
  std::vector<ParamSpec> params(ParamScope scope) const;
  const ParamSpec* param(std::string_view name) const;  // nullptr when the method has none

  // Checks the entry alone without reading weights: every parameter's kind and range, then the
  // method's own rules (input count, base); throws Error naming the tensor. The executor runs it
  // for every entry before writing anything.
  void check(const PlanEntry& entry) const;
  // Scans the inputs if the method needs per-tensor statistics and returns the chunk merger.
  virtual std::unique_ptr<ChunkMerger> prepare(const MethodInputs& in) const = 0;
  // True when the output is exactly the single input (the executor then copies bytes).
  virtual bool copies_input(const PlanEntry&) const { return false; }

  // Whole-tensor form (tests, small tensors): merges fp32 tensors of equal shape, one per source.
  tensor::Tensor merge(const PlanEntry& entry, const std::vector<const tensor::Tensor*>& tensors,
                       uint64_t seed = 0) const;

  // A tensor (per-model) parameter of source `source`, falling back to the method's default;
  // throws naming the tensor and model when a required one is missing.
  double tensor_param(const PlanEntry& entry, size_t source, std::string_view name) const;
  double global_param(const PlanEntry& entry, std::string_view name) const;
  bool global_flag(const PlanEntry& entry, std::string_view name) const {
    return global_param(entry, name) != 0;
  }

 protected:
  // The method's own rules beyond parameter kinds and ranges.
  virtual void check_entry(const PlanEntry&) const {}

 private:
  MethodInfo info_;
};

const MergeMethod* find_method(std::string_view name);  // nullptr when unknown
// Like find_method, but throws an Error listing the known methods.
const MergeMethod& method_or_fail(std::string_view name);
std::vector<std::string> method_names();

}  // namespace amalgam::merge
