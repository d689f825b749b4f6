#include "test_util.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"
#include "infer/gemm.h"
#include "merge/method.h"

namespace amalgam::testing {

namespace fs = std::filesystem;

fs::path source_dir() { return AMALGAM_SOURCE_DIR; }
fs::path zoo(const std::string& name) { return source_dir() / "data" / "zoo" / name; }

TempDir::TempDir() {
  std::random_device rd;
  path_ = fs::temp_directory_path() / ("amalgam-test-" + std::to_string(rd()));
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string q(const std::filesystem::path& p) {
  // Appended piece by piece: GCC 12 reports "'" + text + "'" as an overlapping copy (-Wrestrict).
  std::string s(1, '\'');
  s.append(p.string());
  s.push_back('\'');
  return s;
}

CommandResult run_amalgam(const std::string& args) { return run_amalgam_with_prefix("", args); }

CommandResult run_amalgam_with_prefix(const std::string& prefix, const std::string& args) {
  std::string cmd = prefix + " " + std::string(AMALGAM_BINARY) + " " + args + " 2>&1";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  CommandResult result{-1, ""};
  if (pipe == nullptr) return result;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) result.output.append(buf.data(), n);
  int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

void expect_error(const std::function<void()>& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << part << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

tensor::Tensor run_method(const std::string& method, const merge::PlanEntry& entry,
                          const std::vector<tensor::Tensor>& inputs, uint64_t seed) {
  std::vector<const tensor::Tensor*> ptrs;
  for (const auto& t : inputs) ptrs.push_back(&t);
  return merge::method_or_fail(method).merge(entry, ptrs, seed);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

Fp32Products::Fp32Products() : previous_(infer::reduced_precision_products()) {
  infer::set_reduced_precision_products(false);
}
Fp32Products::~Fp32Products() { infer::set_reduced_precision_products(previous_); }

}  // namespace amalgam::testing
