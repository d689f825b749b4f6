// Shared helpers for tests: paths to the bundled zoo, temporary directories, running the CLI.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "merge/plan.h"
#include "tensor/tensor.h"

namespace amalgam::testing {

std::filesystem::path source_dir();
std::filesystem::path zoo(const std::string& name);  // data/zoo/<name>

// A fresh empty directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& child) const { return path_ / child; }

 private:
  std::filesystem::path path_;
};

struct CommandResult {
  int exit_code;
  std::string output;  // stdout and stderr together
};
// `p` in single quotes, for a shell command line.
std::string q(const std::filesystem::path& p);
// Runs the amalgam binary with the given argument string (shell syntax).
CommandResult run_amalgam(const std::string& args);
// The same after shell commands `prefix` (e.g. "ulimit -f 0;").
CommandResult run_amalgam_with_prefix(const std::string& prefix, const std::string& args);

void write_file(const std::filesystem::path& path, const std::string& text);
// The whole file ("" when it cannot be read).
std::string read_file(const std::filesystem::path& path);

// Expects f() to throw an amalgam Error whose message contains `part`.
void expect_error(const std::function<void()>& f, const std::string& part);

// Pins the engine to fp32 products for the guard's scope. Tests that compare the engine with fp64
// or transformers references, or two evaluation paths with each other, check its structure in
// exact arithmetic: BF16 products (the default for BF16 and quantised weights) move logits by
// ~1e-2 and, as any difference flips some BF16 roundings, differ between paths at that level.
class Fp32Products {
 public:
  Fp32Products();
  ~Fp32Products();
  Fp32Products(const Fp32Products&) = delete;
  Fp32Products& operator=(const Fp32Products&) = delete;

 private:
  bool previous_;
};

// Runs merge method `method` on whole fp32 tensors, one per source of `entry`.
tensor::Tensor run_method(const std::string& method, const merge::PlanEntry& entry,
                          const std::vector<tensor::Tensor>& inputs, uint64_t seed = 0);

}  // namespace amalgam::testing
