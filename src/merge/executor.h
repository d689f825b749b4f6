// The streaming merge executor: runs a Plan tensor by tensor. Worker threads take output tensors
// from a shared counter; each reads its inputs from memory-mapped checkpoints in chunks of whole
// rows, converts them to fp32 (rounded to the plan's compute dtype), crops embeddings to the
// output shape, lets the method merge, checks for NaN/Inf, encodes to the output dtype once
// (round-to-nearest-even) and hands the bytes to a sink. Peak memory is a few chunks per thread,
// never a whole model (nor a whole tensor).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "io/hf_config.h"
#include "io/lora.h"
#include "io/safetensors.h"
#include "merge/plan.h"
#include "merge/sink.h"

namespace amalgam::merge {

// Input checkpoints, each opened (headers parsed, files mapped) once and kept for as many plan
// executions as needed: evolutionary search runs thousands of plans over the same models.
class InputSet {
 public:
  // The checkpoint at `path`, opened on first use.
  const io::Checkpoint& open(const std::filesystem::path& path) { return *share(path); }
  std::shared_ptr<const io::Checkpoint> share(const std::filesystem::path& path);
  // config.json of a model directory, parsed on first use.
  io::ModelConfig config(const std::filesystem::path& dir);
  // The checkpoints of plan.models, in that order.
  std::vector<const io::Checkpoint*> open_all(const Plan& plan);
  // Per plan model, its LoRA adapter (nullptr for none), opened once and checked against the
  // model's headers.
  std::vector<const io::LoraAdapter*> adapters(const Plan& plan);
  size_t size() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::filesystem::path, std::shared_ptr<const io::Checkpoint>> open_;
  std::map<std::filesystem::path, io::ModelConfig> configs_;
  std::map<std::filesystem::path, std::unique_ptr<io::LoraAdapter>> adapters_;
};

struct ExecuteOptions {
  unsigned threads = 0;             // 0: one per core
  bool progress = true;             // progress bar on stderr (also off when --quiet)
  uint64_t seed = 0;                // --random-seed: random methods key their streams by it
  size_t chunk_elements = 1 << 14;  // fp32 values per input chunk (rounded to whole rows)
  bool release_input_pages = true;  // unmap input pages once used (bounded resident memory)
};

struct ExecuteStats {
  size_t tensors = 0;
  uint64_t bytes_read = 0;     // input tensor bytes (each input tensor counted once)
  uint64_t bytes_written = 0;  // output tensor bytes
  double seconds = 0;
};

class MergeMethod;

// True when output `e` is exactly the bytes of its single input `input`: non-float tensors, and
// copies (passthrough with scale 1) that no rounding to the compute dtype, LoRA update or
// vocabulary remapping changes. The executor copies those bytes; a resident model aliases them.
bool is_byte_copy(const Plan& plan, const MergeMethod& method, const PlanEntry& e,
                  const tensor::TensorView& input, bool lora_update);

// Checks the plan against the inputs' headers without reading weights: every source tensor
// exists, shapes fit the output (embeddings may be cropped), dtypes can be merged, the method
// accepts each entry, output names are unique. Throws Error naming the model and tensor.
void validate_plan(const Plan& plan, const std::vector<const io::Checkpoint*>& inputs);

// Validates, then executes the plan into the sink. On error (also from a worker thread) throws
// the first Error after every worker stopped; the sink is not finished.
ExecuteStats execute(const Plan& plan, InputSet& inputs, TensorSink& sink,
                     const ExecuteOptions& options = {});

}  // namespace amalgam::merge
