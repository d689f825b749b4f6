#include "merge/executor.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <optional>
#include <set>
#include <thread>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/log.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "merge/method.h"
#include "tensor/convert.h"

namespace amalgam::merge {

namespace fs = std::filesystem;

namespace {
fs::path canonical_key(const fs::path& path) {
  std::error_code ec;
  fs::path key = fs::weakly_canonical(path, ec);
  return ec ? fs::absolute(path) : key;
}
}  // namespace

std::shared_ptr<const io::Checkpoint> InputSet::share(const fs::path& path) {
  const fs::path key = canonical_key(path);
  std::lock_guard lock(mutex_);
  auto it = open_.find(key);
  if (it == open_.end()) it = open_.emplace(key, std::make_shared<io::Checkpoint>(path)).first;
  return it->second;
}

io::ModelConfig InputSet::config(const fs::path& dir) {
  const fs::path key = canonical_key(dir);
  std::lock_guard lock(mutex_);
  auto it = configs_.find(key);
  if (it == configs_.end()) it = configs_.emplace(key, io::read_model_config(dir)).first;
  return it->second;
}

std::vector<const io::Checkpoint*> InputSet::open_all(const Plan& plan) {
  std::vector<const io::Checkpoint*> out;
  for (const auto& m : plan.models) out.push_back(&open(m));
  return out;
}

std::vector<const io::LoraAdapter*> InputSet::adapters(const Plan& plan) {
  std::vector<const io::LoraAdapter*> out(plan.models.size(), nullptr);
  for (const auto& [model, dir] : plan.adapters) {
    AMALGAM_CHECK(model < plan.models.size(), "internal: adapter of a model the plan lacks");
    const io::Checkpoint& base = open(plan.models[model]);
    std::error_code ec;
    fs::path key = fs::weakly_canonical(dir, ec);
    if (ec) key = fs::absolute(dir);
    std::lock_guard lock(mutex_);
    auto it = adapters_.find(key);
    if (it == adapters_.end()) {
      it = adapters_.emplace(key, std::make_unique<io::LoraAdapter>(dir)).first;
    }
    it->second->check_base(base);
    out[model] = it->second.get();
  }
  return out;
}

size_t InputSet::size() const {
  std::lock_guard lock(mutex_);
  return open_.size();
}

namespace {

size_t numel_of(const tensor::Shape& shape) { return static_cast<size_t>(tensor::numel(shape)); }

// Elements of one row: the last dimension (1 for scalars).
size_t row_length(const tensor::Shape& shape) {
  return shape.empty() || shape.back() == 0 ? 1 : static_cast<size_t>(shape.back());
}

struct Source {
  const io::Checkpoint* checkpoint;
  const std::string* tensor;
  tensor::TensorView view;
  const io::SafetensorsFile* shard;
  const io::TensorInfo* info;
  std::unique_ptr<io::LoraDelta> delta;  // LoRA update added to the rows read, if any
};

// A LoRA adapter on the input ("BASE+LORA") replaces the tensor's bytes (modules_to_save) and/or
// adds a low-rank update to its rows as they are read.
void apply_adapter(const io::LoraAdapter& adapter, Source& s) {
  const io::LoraTensor* t = adapter.find(*s.tensor);
  if (!t) return;
  if (t->replacement) {
    s.view = adapter.file().view(*t->replacement);
    s.shard = &adapter.file();
    s.info = t->replacement;
  }
  if (t->has_update()) s.delta = std::make_unique<io::LoraDelta>(adapter, *t);
}

std::string describe_sources(const PlanEntry& e, const std::vector<Source>& sources) {
  std::string out;
  for (size_t i = 0; i < sources.size(); ++i) {
    if (i) out += ", ";
    out += sources[i].checkpoint->path().string();
    if (*sources[i].tensor != e.name) out += fmt::format("['{}']", *sources[i].tensor);
  }
  return out;
}

const char* nonfinite_name(float v) { return std::isnan(v) ? "NaN" : "Inf"; }

// Reads an entry's inputs as fp32: decodes, checks for NaN/Inf, crops embeddings to the output
// shape (the common sub-matrix), rounds to the compute dtype.
//
// Resident memory: sequential reads go through the mapping and drop the pages behind them a
// window at a time (a method may read a tensor several times; each pass refaults from the page
// cache), so the resident set stays a few MiB per input however large the tensor. Small reads
// away from the current position (a method sampling a tensor) use pread instead: through the
// mapping each would map a whole large folio around it.
class EntryReader : public TensorReader {
 public:
  EntryReader(const PlanEntry& entry, const std::vector<Source>& sources,
              std::optional<tensor::DType> compute, size_t chunk_target, bool release_pages)
      : entry_(entry),
        sources_(sources),
        compute_(compute),
        release_pages_(release_pages),
        next_(sources.size(), 0),
        window_start_(sources.size(), 0) {
    numel_ = numel_of(entry.shape);
    cols_ = row_length(entry.shape);
    chunk_ = std::max<size_t>(1, chunk_target / cols_) * cols_;
  }

  size_t inputs() const override { return sources_.size(); }
  size_t numel() const override { return numel_; }
  size_t chunk_elements() const override { return chunk_; }

  void read(size_t input, size_t begin, size_t n, float* dst) const override {
    if (n == 0) return;
    if (const RowMap* map = entry_.sources[input].rows.get()) {
      return read_mapped(input, *map, begin, n, dst);
    }
    const Source& s = sources_[input];
    const size_t in_cols = row_length(s.view.shape);
    const size_t esize = tensor::dtype_size(s.view.dtype);
    // Input element of output element i (a cropped embedding is a wider matrix).
    auto source_index = [&](size_t i) { return i / cols_ * in_cols + i % cols_; };
    const uint64_t from = source_index(begin) * esize,
                   to = (source_index(begin + n - 1) + 1) * esize;
    const bool sequential = from == next_[input];
    next_[input] = to;
    if (!sequential) window_start_[input] = from;
    const bool scattered = release_pages_ && !sequential && to - from <= kScatteredBytes;
    if (in_cols == cols_) {
      decode(s, begin, n, dst, scattered);
    } else {
      for (size_t done = 0; done < n;) {
        const size_t at = begin + done;
        const size_t len = std::min(cols_ - at % cols_, n - done);
        decode(s, source_index(at), len, dst + done, scattered);
        done += len;
      }
    }
    if (s.delta) add_delta(*s.delta, begin, n, dst);
    // A LoRA-updated input no longer holds values of its stored dtype: round it too.
    if (compute_ && *compute_ != tensor::DType::kF32 && (*compute_ != s.view.dtype || s.delta)) {
      tensor::round_through(*compute_, dst, n);
    }
    if (release_pages_ && !scattered && to - window_start_[input] >= kWindowBytes) {
      core::release_mapped_pages(s.view.data + window_start_[input], to - window_start_[input]);
      window_start_[input] = to;
    }
  }

 private:
  static constexpr uint64_t kWindowBytes = uint64_t{4} << 20;
  static constexpr uint64_t kScatteredBytes = uint64_t{256} << 10;

  // Output element (row, col) is the input's (row, col) also when an embedding is cropped.
  void add_delta(const io::LoraDelta& delta, size_t begin, size_t n, float* dst) const {
    for (size_t done = 0; done < n;) {
      const size_t at = begin + done;
      const size_t len = std::min(cols_ - at % cols_, n - done);
      delta.add(at / cols_, at % cols_, len, dst + done);
      done += len;
    }
  }

  // An embedding mapped to the output vocabulary (tokenizer merging): every output row is built
  // from the input rows the map names when it is read, so no permuted matrix is ever held.
  void read_mapped(size_t input, const RowMap& map, size_t begin, size_t n, float* dst) const {
    if (sources_[input].delta) {
      fail(
          "tensor '{}': a LoRA adapter on an embedding whose rows a tokenizer merge remaps is "
          "not supported; merge the adapter into its model first",
          entry_.name);
    }
    row_.resize(cols_);
    for (size_t done = 0; done < n;) {
      const size_t at = begin + done, col = at % cols_;
      const size_t len = std::min(cols_ - col, n - done);
      mapped_row(input, map, static_cast<int64_t>(at / cols_), row_.data());
      std::copy(row_.data() + col, row_.data() + col + len, dst + done);
      done += len;
    }
    if (compute_ && *compute_ != tensor::DType::kF32) tensor::round_through(*compute_, dst, n);
    // Rows are read mostly in order: drop the pages behind, a window at a time, as read() does.
    if (!release_pages_) return;
    for (size_t s = 0; s < touched_.size(); ++s) {
      auto& [lo, hi] = touched_[s];
      if (hi > lo && hi - lo >= kWindowBytes) {
        core::release_mapped_pages(sources_[s].view.data + lo, hi - lo);
        lo = hi = 0;
      }
    }
  }

  // Output row `r` of a mapped source: the mean of its picks (zeros for none); a padding row is
  // the mean of the real rows (computed once per source).
  void mapped_row(size_t input, const RowMap& map, int64_t r, float* out) const {
    if (r >= map.real_rows) {
      if (padding_.size() <= input) padding_.resize(sources_.size());
      std::vector<float>& mean = padding_[input];
      if (mean.empty()) {
        std::vector<double> sum(cols_, 0.0);
        std::vector<float> row(cols_);
        for (int64_t i = 0; i < map.real_rows; ++i) {
          mapped_row(input, map, i, row.data());
          for (size_t c = 0; c < cols_; ++c) sum[c] += row[c];
        }
        mean.resize(cols_);
        for (size_t c = 0; c < cols_; ++c) {
          mean[c] = map.real_rows > 0 ? static_cast<float>(sum[c] / map.real_rows) : 0.0f;
        }
      }
      std::copy(mean.begin(), mean.end(), out);
      return;
    }
    const uint32_t first = map.offsets[static_cast<size_t>(r)],
                   last = map.offsets[static_cast<size_t>(r) + 1];
    std::fill(out, out + cols_, 0.0f);
    if (first == last) return;
    pick_.resize(cols_);
    touched_.resize(sources_.size());
    for (uint32_t k = first; k < last; ++k) {
      const RowPick& p = map.picks[k];
      const Source& s = sources_[p.source];
      decode(s, static_cast<size_t>(p.row) * cols_, cols_, pick_.data(), false);
      const uint64_t esize = tensor::dtype_size(s.view.dtype);
      const uint64_t from = static_cast<uint64_t>(p.row) * cols_ * esize, to = from + cols_ * esize;
      auto& [lo, hi] = touched_[p.source];
      lo = hi > lo ? std::min(lo, from) : from;
      hi = std::max(hi, to);
      for (size_t c = 0; c < cols_; ++c) out[c] += pick_[c];
    }
    if (last - first > 1) {
      const float inv = 1.0f / static_cast<float>(last - first);
      for (size_t c = 0; c < cols_; ++c) out[c] *= inv;
    }
  }

  void decode(const Source& s, size_t at, size_t n, float* dst, bool scattered) const {
    const size_t esize = tensor::dtype_size(s.view.dtype);
    const uint8_t* bytes = s.view.data + at * esize;
    if (scattered) {
      buffer_.resize(n * esize);
      s.shard->read_data(*s.info, at * esize, n * esize, buffer_.data());
      bytes = buffer_.data();
    }
    const size_t bad = tensor::decode_checked(s.view.dtype, bytes, dst, n);
    if (bad != n) {
      fail(
          "{}: tensor '{}' holds {} at element {}; the input is broken and a merge would spread "
          "it (needed for output '{}')",
          s.shard->path(), *s.tensor, nonfinite_name(dst[bad]), at + bad, entry_.name);
    }
  }

  const PlanEntry& entry_;
  const std::vector<Source>& sources_;
  std::optional<tensor::DType> compute_;
  bool release_pages_;
  // Per input: the byte offset where a sequential read would continue, and where the bytes not
  // yet released start.
  mutable std::vector<uint64_t> next_, window_start_;
  mutable std::vector<uint8_t> buffer_;
  mutable std::vector<float> row_, pick_;            // mapped embedding rows
  mutable std::vector<std::vector<float>> padding_;  // per input: its padding row, once known
  mutable std::vector<std::pair<uint64_t, uint64_t>> touched_;  // per input: bytes read, unreleased
  size_t numel_ = 0, cols_ = 1, chunk_ = 1;
};

// Per-thread buffers, reused from tensor to tensor.
struct Scratch {
  std::vector<std::vector<float>> inputs;
  std::vector<const float*> pointers;
  std::vector<float> out;
  std::vector<uint8_t> encoded;
};

class Executor {
 public:
  Executor(const Plan& plan, std::vector<const io::Checkpoint*> inputs,
           std::vector<const io::LoraAdapter*> adapters, TensorSink& sink,
           const ExecuteOptions& options)
      : plan_(plan),
        inputs_(std::move(inputs)),
        adapters_(std::move(adapters)),
        sink_(sink),
        options_(options),
        method_(method_or_fail(plan.method)) {}

  ExecuteStats run() {
    const auto start = std::chrono::steady_clock::now();
    std::vector<io::OutputTensorSpec> specs;
    for (const auto& e : plan_.entries) specs.push_back({e.name, e.out_dtype, e.shape});
    sink_.begin(specs);

    // Largest tensors first, so that the last ones to finish are small and no thread idles long.
    order_.resize(plan_.entries.size());
    for (size_t i = 0; i < order_.size(); ++i) order_[i] = i;
    std::stable_sort(order_.begin(), order_.end(), [&](size_t a, size_t b) {
      return numel_of(plan_.entries[a].shape) > numel_of(plan_.entries[b].shape);
    });

    unsigned threads = options_.threads ? options_.threads : std::thread::hardware_concurrency();
    threads = std::max(1u, std::min<unsigned>(threads, static_cast<unsigned>(order_.size())));
    threads_ = threads;
    if (options_.progress) progress_.emplace("merge", order_.size(), "tensors");
    std::vector<std::thread> workers;
    for (unsigned t = 1; t < threads; ++t) workers.emplace_back([this] { work(); });
    work();
    for (auto& w : workers) w.join();
    if (error_) std::rethrow_exception(error_);
    sink_.finish();
    ExecuteStats stats;
    stats.tensors = order_.size();
    stats.bytes_read = bytes_read_;
    stats.bytes_written = bytes_written_;
    stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (progress_) progress_->finish();
    return stats;
  }

 private:
  void work() {
    Scratch scratch;
    try {
      while (!stop_.load()) {
        const size_t i = next_++;
        if (i >= order_.size()) break;
        core::check_interrupted();
        run_entry(order_[i], scratch);
      }
    } catch (...) {
      std::lock_guard lock(error_mutex_);
      if (!error_) error_ = std::current_exception();
      stop_ = true;
    }
  }

  void run_entry(size_t index, Scratch& scratch) {
    const PlanEntry& e = plan_.entries[index];
    std::vector<Source> sources;
    uint64_t read = 0;
    for (const auto& s : e.sources) {
      const io::Checkpoint* ckpt = inputs_[s.model];
      sources.push_back({ckpt, &s.tensor, ckpt->view(s.tensor), &ckpt->shard_of(s.tensor),
                         &ckpt->info(s.tensor), nullptr});
      if (adapters_[s.model]) apply_adapter(*adapters_[s.model], sources.back());
      read += sources.back().view.nbytes();
      core::prefetch_mapped_pages(sources.back().view.data, sources.back().view.nbytes());
    }
    const uint64_t written = numel_of(e.shape) * tensor::dtype_size(e.out_dtype);
    if (copies_bytes(e, sources)) {
      copy_entry(index, e, sources[0]);
    } else {
      merge_entry(index, e, sources, scratch);
    }
    if (options_.release_input_pages) {
      for (const auto& s : sources) core::release_mapped_pages(s.view.data, s.view.nbytes());
    }
    bytes_read_ += read;
    bytes_written_ += written;
    if (progress_) progress_->advance(1, read, written);
  }

  bool copies_bytes(const PlanEntry& e, const std::vector<Source>& sources) const {
    return sources.size() == 1 &&
           is_byte_copy(plan_, method_, e, sources[0].view, sources[0].delta != nullptr);
  }

  // Copies piece by piece, checking float values and dropping each piece's input pages once
  // written, so that even a gigabyte-sized embedding never becomes resident at once.
  void copy_entry(size_t index, const PlanEntry& e, const Source& s) {
    const tensor::TensorView& v = s.view;
    const size_t esize = tensor::dtype_size(v.dtype);
    const size_t piece = (size_t{16} << 20) / esize * esize;
    const size_t total = v.nbytes();
    for (size_t off = 0; off < total; off += piece) {
      const size_t len = std::min(piece, total - off);
      if (tensor::is_float_dtype(v.dtype)) {
        const size_t bad = tensor::find_nonfinite(v.dtype, v.data + off, len / esize);
        if (bad != len / esize) {
          float value = 0;
          tensor::decode_checked(v.dtype, v.data + off + bad * esize, &value, 1);
          fail(
              "{}: tensor '{}' holds {} at element {}; the input is broken (needed for output "
              "'{}')",
              s.shard->path(), *s.tensor, nonfinite_name(value), off / esize + bad, e.name);
        }
      }
      sink_.write(index, off, v.data + off, len);
      if (options_.release_input_pages) core::release_mapped_pages(v.data + off, len);
    }
  }

  void merge_entry(size_t index, const PlanEntry& e, const std::vector<Source>& sources,
                   Scratch& scratch) {
    // A tensor whose inputs fit this thread's share of kMappedBudget stays mapped while the
    // method reads it (several passes then hit the CPU caches, not page faults); a larger one is
    // streamed, its pages dropped behind the reads.
    uint64_t input_bytes = 0;
    for (const auto& s : sources) input_bytes += s.view.nbytes();
    const bool stream = options_.release_input_pages && input_bytes * threads_ > kMappedBudget;
    EntryReader reader(e, sources, plan_.compute_dtype, options_.chunk_elements, stream);
    auto merger = method_.prepare(MethodInputs{e, reader, options_.seed});
    const size_t n = reader.numel(), chunk = reader.chunk_elements();
    const size_t out_size = tensor::dtype_size(e.out_dtype);
    scratch.inputs.resize(std::max(scratch.inputs.size(), sources.size()));
    scratch.pointers.resize(sources.size());
    for (size_t i = 0; i < sources.size(); ++i) {
      if (scratch.inputs[i].size() < chunk) scratch.inputs[i].resize(chunk);
      scratch.pointers[i] = scratch.inputs[i].data();
    }
    if (scratch.out.size() < chunk) scratch.out.resize(chunk);
    if (scratch.encoded.size() < chunk * out_size) scratch.encoded.resize(chunk * out_size);
    for (size_t begin = 0; begin < n; begin += chunk) {
      if (stop_.load()) return;
      core::check_interrupted();
      const size_t len = std::min(chunk, n - begin);
      for (size_t i = 0; i < sources.size(); ++i) {
        reader.read(i, begin, len, scratch.inputs[i].data());
      }
      merger->merge(begin, len, scratch.pointers, scratch.out.data());
      const size_t bad =
          tensor::encode_checked(scratch.out.data(), e.out_dtype, scratch.encoded.data(), len);
      if (bad != len) {
        fail(
            "tensor '{}': the merged value at element {} is {} in {} (method {}, inputs: {}); "
            "check the recipe's weights and parameters",
            e.name, begin + bad,
            std::isfinite(scratch.out[bad]) ? fmt::format("{} (too large)", scratch.out[bad])
                                            : std::string(nonfinite_name(scratch.out[bad])),
            tensor::dtype_name(e.out_dtype), plan_.method, describe_sources(e, sources));
      }
      sink_.write(index, begin * out_size, scratch.encoded.data(), len * out_size);
    }
  }

  const Plan& plan_;
  std::vector<const io::Checkpoint*> inputs_;
  std::vector<const io::LoraAdapter*> adapters_;
  TensorSink& sink_;
  const ExecuteOptions& options_;
  const MergeMethod& method_;
  static constexpr uint64_t kMappedBudget = uint64_t{512} << 20;

  std::vector<size_t> order_;
  unsigned threads_ = 1;
  std::atomic<size_t> next_{0};
  std::atomic<bool> stop_{false};
  std::mutex error_mutex_;
  std::exception_ptr error_;
  std::atomic<uint64_t> bytes_read_{0}, bytes_written_{0};
  std::optional<core::ProgressBar> progress_;
};

}  // namespace

namespace {

// Every row a map names exists, in an input as wide as the output.
void check_row_map(const PlanEntry& e, const RowMap& map,
                   const std::vector<const io::Checkpoint*>& inputs) {
  AMALGAM_CHECK(e.shape.size() == 2 && map.real_rows >= 0 && map.real_rows <= e.shape[0] &&
                    map.offsets.size() == static_cast<size_t>(map.real_rows) + 1 &&
                    map.offsets.back() == map.picks.size(),
                "internal: output '{}': malformed row map", e.name);
  for (const auto& s : e.sources) {
    const tensor::Shape& shape = inputs[s.model]->info(s.tensor).shape;
    if (shape.size() != 2 || shape[1] != e.shape[1]) {
      fail("{}: tensor '{}' has shape {} but output '{}' takes rows of {} values",
           inputs[s.model]->path().string(), s.tensor, tensor::shape_string(shape), e.name,
           e.shape[1]);
    }
  }
  for (const auto& p : map.picks) {
    AMALGAM_CHECK(p.source < e.sources.size(), "internal: output '{}': bad row source", e.name);
    const SourceTensor& s = e.sources[p.source];
    const int64_t rows = inputs[s.model]->info(s.tensor).shape[0];
    if (p.row < 0 || p.row >= rows) {
      fail("{}: tensor '{}' has {} rows; output '{}' needs row {}",
           inputs[s.model]->path().string(), s.tensor, rows, e.name, p.row);
    }
  }
}

}  // namespace

bool is_byte_copy(const Plan& plan, const MergeMethod& method, const PlanEntry& e,
                  const tensor::TensorView& input, bool lora_update) {
  if (e.passthrough_bytes) return true;
  if (e.sources.size() != 1 || lora_update || e.sources[0].rows || !method.copies_input(e)) {
    return false;
  }
  const bool exact_compute = !plan.compute_dtype || *plan.compute_dtype == tensor::DType::kF32 ||
                             *plan.compute_dtype == input.dtype;
  return input.dtype == e.out_dtype && input.shape == e.shape && exact_compute;
}

void validate_plan(const Plan& plan, const std::vector<const io::Checkpoint*>& inputs) {
  AMALGAM_CHECK(plan.models.size() == inputs.size(), "internal: {} inputs for {} plan models",
                inputs.size(), plan.models.size());
  const MergeMethod& method = method_or_fail(plan.method);
  if (plan.compute_dtype && !tensor::is_float_dtype(*plan.compute_dtype)) {
    fail("dtype {} cannot be used for merge arithmetic (use bfloat16, float16 or float32)",
         tensor::torch_dtype_name(*plan.compute_dtype));
  }
  std::set<std::string_view> names;
  for (const auto& e : plan.entries) {
    if (!names.insert(e.name).second) fail("output tensor '{}' is produced twice", e.name);
    if (e.sources.empty()) fail("output tensor '{}' has no input", e.name);
    AMALGAM_CHECK(!e.base || *e.base < e.sources.size(), "internal: tensor '{}': bad base index",
                  e.name);
    for (const auto& s : e.sources) {
      AMALGAM_CHECK(s.model < inputs.size(), "internal: tensor '{}': bad model index", e.name);
      const io::Checkpoint& ckpt = *inputs[s.model];
      if (!ckpt.has(s.tensor)) {
        fail("{}: tensor '{}' not found (needed for output '{}')", ckpt.path().string(), s.tensor,
             e.name);
      }
      const io::TensorInfo& info = ckpt.info(s.tensor);
      if (e.passthrough_bytes) {
        if (info.shape != e.shape || info.dtype != e.out_dtype) {
          fail("{}: tensor '{}' is {} {} but output '{}' copies it as {} {}", ckpt.path().string(),
               s.tensor, tensor::dtype_name(info.dtype), tensor::shape_string(info.shape), e.name,
               tensor::dtype_name(e.out_dtype), tensor::shape_string(e.shape));
        }
        continue;
      }
      if (!tensor::is_float_dtype(info.dtype)) {
        fail("{}: tensor '{}' has dtype {}, which cannot be merged", ckpt.path().string(), s.tensor,
             tensor::dtype_name(info.dtype));
      }
      if (s.rows) {
        check_row_map(e, *s.rows, inputs);
      } else if (info.shape != e.shape) {
        const bool croppable = e.is_embed && info.shape.size() == 2 && e.shape.size() == 2 &&
                               info.shape[0] >= e.shape[0] && info.shape[1] >= e.shape[1];
        if (!croppable) {
          fail("{}: tensor '{}' has shape {} but output '{}' needs {} (shape mismatch{})",
               ckpt.path().string(), s.tensor, tensor::shape_string(info.shape), e.name,
               tensor::shape_string(e.shape),
               e.is_embed ? "; embeddings are cropped to the common sub-matrix, never padded" : "");
        }
      }
    }
    if (e.passthrough_bytes) continue;
    if (!tensor::is_float_dtype(e.out_dtype)) {
      fail("output tensor '{}': out_dtype {} cannot hold merged values", e.name,
           tensor::dtype_name(e.out_dtype));
    }
    method.check(e);
  }
}

ExecuteStats execute(const Plan& plan, InputSet& inputs, TensorSink& sink,
                     const ExecuteOptions& options) {
  std::vector<const io::Checkpoint*> checkpoints = inputs.open_all(plan);
  std::vector<const io::LoraAdapter*> adapters = inputs.adapters(plan);
  validate_plan(plan, checkpoints);
  return Executor(plan, std::move(checkpoints), std::move(adapters), sink, options).run();
}

}  // namespace amalgam::merge
