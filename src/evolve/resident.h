// The model a recipe search evaluates, kept resident across candidates: each new plan recomputes
// only the output tensors whose recipe differs from the previous candidate's, and tensors that are
// exact copies of an input (every unscaled tensor of a layer-path candidate) alias the input's
// memory mapping instead of being copied. Nothing is written to disk.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "infer/model.h"
#include "merge/executor.h"
#include "merge/plan.h"
#include "merge/sink.h"

namespace amalgam::evolve {

struct UpdateStats {
  size_t computed = 0;  // output tensors merged
  size_t reused = 0;    // unchanged since the previous candidate
  size_t aliased = 0;   // views into an input checkpoint
  double seconds = 0;
};

class ResidentModel {
 public:
  ResidentModel(merge::InputSet& inputs, unsigned threads, uint64_t seed);

  // Brings the weights to `plan`; the returned model reads them and is valid until the next
  // update.
  std::unique_ptr<infer::Model> update(const merge::Plan& plan);
  const UpdateStats& last() const { return last_; }

 private:
  const std::string& donor_config(const std::filesystem::path& model);

  merge::InputSet& inputs_;
  merge::ExecuteOptions options_;
  merge::MemorySink sink_{/*keep_unlisted=*/true};
  std::map<std::string, std::string> signatures_;  // output name -> what its buffer holds
  std::map<std::filesystem::path, std::string> configs_;
  UpdateStats last_;
};

}  // namespace amalgam::evolve
