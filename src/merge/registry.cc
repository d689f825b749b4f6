#include "merge/registry.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <map>

#include "core/error.h"

namespace amalgam::merge {

namespace {
using Registry = std::map<std::string, std::unique_ptr<MergeMethod>, std::less<>>;

const Registry& registry() {
  static const Registry methods = [] {
    Registry r;
    using Factory = std::unique_ptr<MergeMethod> (*)();
    constexpr Factory kFactories[] = {
#define AMALGAM_METHOD(name) make_##name,
#include "merge/methods.def"
#undef AMALGAM_METHOD
    };
    for (Factory make : kFactories) {
      auto m = make();
      std::string name(m->name());
      r.emplace(std::move(name), std::move(m));
    }
    return r;
  }();
  return methods;
}

// Reads whole fp32 tensors held in memory (MergeMethod::merge).
class WholeTensorReader : public TensorReader {
 public:
  WholeTensorReader(const std::vector<const tensor::Tensor*>& tensors, size_t numel, size_t cols)
      : tensors_(tensors), numel_(numel), cols_(cols) {}
  size_t inputs() const override { return tensors_.size(); }
  size_t numel() const override { return numel_; }
  size_t chunk_elements() const override {
    constexpr size_t kTarget = 1 << 16;
    return std::max<size_t>(1, kTarget / cols_) * cols_;
  }
  void read(size_t input, size_t begin, size_t n, float* dst) const override {
    std::memcpy(dst, tensors_[input]->data.data() + begin, n * sizeof(float));
  }

 private:
  const std::vector<const tensor::Tensor*>& tensors_;
  size_t numel_;
  size_t cols_;
};

}  // namespace

std::optional<std::string> param_problem(const ParamSpec& spec, double value) {
  if (!std::isfinite(value)) return fmt::format("'{}' must be a finite number", spec.name);
  if (spec.kind == ParamKind::kBool && value != 0 && value != 1) {
    return fmt::format("'{}' is a switch: give true or false (or 1 or 0), not {}", spec.name,
                       value);
  }
  if (spec.kind == ParamKind::kInt && value != std::floor(value)) {
    return fmt::format("'{}' must be a whole number, not {}", spec.name, value);
  }
  if (value < spec.min || value > spec.max) {
    const std::string lo = std::isinf(spec.min) ? "-inf" : fmt::format("{}", spec.min);
    const std::string hi = std::isinf(spec.max) ? "inf" : fmt::format("{}", spec.max);
    return fmt::format("'{}' = {} is out of range: it must lie in [{}, {}]", spec.name, value, lo,
                       hi);
  }
  return std::nullopt;
}

ParamSpec weight_spec() {
  ParamSpec s;
  s.name = "weight";
  s.searchable = true;
  s.help = "weight of the model's contribution";
  return s;
}

ParamSpec density_spec() {
  ParamSpec s;
  s.name = "density";
  s.default_value = 1.0;
  s.min = 0;
  s.max = 1;
  s.searchable = true;
  s.help = "fraction of the task vector kept";
  return s;
}

ParamSpec flag_spec(std::string name, bool default_value, std::string help) {
  ParamSpec s;
  s.name = std::move(name);
  s.scope = ParamScope::kGlobal;
  s.kind = ParamKind::kBool;
  s.default_value = default_value ? 1.0 : 0.0;
  s.min = 0;
  s.max = 1;
  s.help = std::move(help);
  return s;
}

ParamSpec real_spec(std::string name, std::optional<double> default_value, double min, double max,
                    std::string help) {
  ParamSpec s;
  s.name = std::move(name);
  s.scope = ParamScope::kGlobal;
  s.default_value = default_value;
  s.min = min;
  s.max = max;
  s.help = std::move(help);
  return s;
}

std::vector<ParamSpec> MergeMethod::params(ParamScope scope) const {
  std::vector<ParamSpec> out;
  for (const auto& p : info_.params) {
    if (p.scope == scope) out.push_back(p);
  }
  return out;
}

const ParamSpec* MergeMethod::param(std::string_view name) const {
  for (const auto& p : info_.params) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

void MergeMethod::check(const PlanEntry& entry) const {
  auto check_value = [&](const std::string& name, double value, const std::string& where) {
    const ParamSpec* spec = param(name);
    if (spec == nullptr) return;  // unknown parameters were warned about when resolving
    if (auto problem = param_problem(*spec, value)) {
      fail("tensor '{}'{}: {} parameter {}", entry.name, where, this->name(), *problem);
    }
  };
  for (const auto& [name, value] : entry.global) check_value(name, value, "");
  for (const auto& s : entry.sources) {
    for (const auto& [name, value] : s.params) {
      check_value(name, value, fmt::format(" (input '{}' of model {})", s.tensor, s.model));
    }
  }
  check_entry(entry);
  if (info_.inputs && entry.sources.size() != *info_.inputs && entry.sources.size() != 1) {
    fail("tensor '{}': {} takes exactly {} input(s), got {}", entry.name, this->name(),
         *info_.inputs, entry.sources.size());
  }
}

const MergeMethod* find_method(std::string_view name) {
  auto it = registry().find(name);
  return it == registry().end() ? nullptr : it->second.get();
}

const MergeMethod& method_or_fail(std::string_view name) {
  const MergeMethod* m = find_method(name);
  if (m == nullptr) {
    fail("unknown merge method '{}' (known: {})", name, fmt::join(method_names(), ", "));
  }
  return *m;
}

std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (const auto& [name, m] : registry()) names.push_back(name);
  return names;
}

tensor::Tensor MergeMethod::merge(const PlanEntry& entry,
                                  const std::vector<const tensor::Tensor*>& tensors,
                                  uint64_t seed) const {
  if (tensors.size() != entry.sources.size()) {
    fail("tensor '{}': {} inputs given for {} sources", entry.name, tensors.size(),
         entry.sources.size());
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i]->shape != entry.shape) {
      fail("tensor '{}': input {} has shape {} but the output has {} (size mismatch)", entry.name,
           i, tensor::shape_string(tensors[i]->shape), tensor::shape_string(entry.shape));
    }
  }
  check(entry);
  const size_t n = static_cast<size_t>(tensor::numel(entry.shape));
  const size_t cols =
      entry.shape.empty() || entry.shape.back() == 0 ? 1 : static_cast<size_t>(entry.shape.back());
  WholeTensorReader reader(tensors, n, cols);
  auto merger = prepare(MethodInputs{entry, reader, seed});
  tensor::Tensor out(entry.shape);
  const size_t chunk = reader.chunk_elements();
  std::vector<const float*> ptrs(tensors.size());
  for (size_t begin = 0; begin < n; begin += chunk) {
    const size_t len = std::min(chunk, n - begin);
    for (size_t i = 0; i < tensors.size(); ++i) ptrs[i] = tensors[i]->data.data() + begin;
    merger->merge(begin, len, ptrs, out.data.data() + begin);
  }
  return out;
}

double MergeMethod::tensor_param(const PlanEntry& entry, size_t source,
                                 std::string_view name) const {
  const Params& p = entry.sources.at(source).params;
  auto it = p.find(std::string(name));
  if (it != p.end()) return it->second;
  if (const ParamSpec* spec = param(name); spec && spec->default_value) return *spec->default_value;
  fail("tensor '{}': model {} ('{}') has no '{}' parameter, which {} requires", entry.name,
       entry.sources[source].model, entry.sources[source].tensor, name, this->name());
}

double MergeMethod::global_param(const PlanEntry& entry, std::string_view name) const {
  auto it = entry.global.find(std::string(name));
  if (it != entry.global.end()) return it->second;
  if (const ParamSpec* spec = param(name); spec && spec->default_value) return *spec->default_value;
  fail("tensor '{}': parameter '{}' is required by {}", entry.name, name, this->name());
}

namespace {
class CopyInput : public ChunkMerger {
 public:
  explicit CopyInput(size_t input) : input_(input) {}
  void merge(size_t, size_t n, std::span<const float* const> inputs, float* out) override {
    std::copy(inputs[input_], inputs[input_] + n, out);
  }

 private:
  size_t input_;
};
}  // namespace

std::unique_ptr<ChunkMerger> copy_input(size_t input) { return std::make_unique<CopyInput>(input); }

size_t require_base(const PlanEntry& entry, std::string_view method) {
  if (!entry.base || *entry.base >= entry.sources.size()) {
    fail("tensor '{}': {} needs a base_model", entry.name, method);
  }
  return *entry.base;
}

void require_inputs(const PlanEntry& entry, std::string_view method, size_t at_least) {
  if (entry.sources.size() < at_least) {
    fail("tensor '{}': {} needs at least {} input(s), got {}", entry.name, method, at_least,
         entry.sources.size());
  }
}

}  // namespace amalgam::merge
