// Faults from outside: a full disk while writing, an input truncated under a running merge, and
// kill -9 at random points of a merge. The destination is always absent or complete and valid.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <string>

#include "core/fatal_signal.h"
#include "core/fs.h"
#include "core/mapped_file.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::q;
using testing::read_file;
using testing::run_amalgam;
using testing::TempDir;
using testing::write_file;
using testing::zoo;

bool hidden_leftovers(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().find(".tmp-") != std::string::npos) return true;
  }
  return false;
}

void write_linear_recipe(const fs::path& path, const std::string& a, const std::string& b) {
  write_file(path, "merge_method: linear\nmodels:\n  - model: " + a +
                       "\n    parameters: {weight: 1}\n  - model: " + b +
                       "\n    parameters: {weight: 1}\n");
}

// The file-size limit makes every write past 512 KiB fail (EFBIG), as a full disk would, without
// needing privileges.
TEST(FullDisk, MergeFailsNamingTheOutputAndLeavesNothing) {
  TempDir dir;
  write_linear_recipe(dir / "r.yaml", zoo("base").string(), zoo("add-expert").string());
  auto r = testing::run_amalgam_with_prefix("ulimit -f 512;", "merge " + q(dir / "r.yaml") + " -o " +
                                                             q(dir / "out"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("File too large"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find((dir / "out").string()), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "out"));
  EXPECT_FALSE(hidden_leftovers(dir.path()));
}

TEST(FullDisk, ResultFilesKeepThePreviousVersion) {
  TempDir dir;
  write_file(dir / "out.json", "previous");
  auto r = testing::run_amalgam_with_prefix(
      "ulimit -f 0;", "logits " + q(zoo("base")) + " --ids 0,5,6 -o " + q(dir / "out.json"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find((dir / "out.json").string()), std::string::npos) << r.output;
  EXPECT_EQ(read_file(dir / "out.json"), "previous");
  EXPECT_FALSE(hidden_leftovers(dir.path()));
  r = testing::run_amalgam_with_prefix(
      "ulimit -f 0;", "eval " + q(zoo("base")) + " --task " + q(zoo("eval/add.json")) +
                          " --limit 2 --json " + q(dir / "out.json"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(read_file(dir / "out.json"), "previous");
  EXPECT_FALSE(hidden_leftovers(dir.path()));
}

// A real full file system where mounting is permitted (root in a container); skipped elsewhere.
TEST(FullDisk, SmallTmpfs) {
  TempDir dir;
  const fs::path small = dir / "small";
  fs::create_directory(small);
  if (::mount("tmpfs", small.c_str(), "tmpfs", 0, "size=1m") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno)
                 << "); FullDisk.MergeFailsNamingTheOutputAndLeavesNothing covers the case";
  }
  write_linear_recipe(dir / "r.yaml", zoo("base").string(), zoo("add-expert").string());
  auto r = run_amalgam("merge " + q(dir / "r.yaml") + " -o " + q(small / "out"));
  const bool leftovers = hidden_leftovers(small);
  const bool out = fs::exists(small / "out");
  ::umount(small.c_str());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("No space left on device"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find((small / "out").string()), std::string::npos) << r.output;
  EXPECT_FALSE(out);
  EXPECT_FALSE(leftovers);
}

// kill -9 leaves the destination absent or complete; the next run removes the staging directory
// the killed one left and writes a complete output.
TEST(KillNine, DestinationIsAbsentOrCompleteAndTheNextRunCleansUp) {
  TempDir dir;
  write_linear_recipe(dir / "r.yaml", zoo("base-large").string(), zoo("base-large").string());
  std::mt19937 rng(7);
  int absent = 0, complete = 0;
  for (int round = 0; round < 6; ++round) {
    fs::remove_all(dir / "out");
    const int delay_ms = std::uniform_int_distribution<int>(0, 150)(rng);
    testing::run_amalgam_with_prefix(
        "", "-q merge " + q(dir / "r.yaml") + " -o " + q(dir / "out") + " & pid=$!; sleep " +
                std::to_string(delay_ms / 1000.0) + "; kill -9 $pid; wait $pid");
    if (fs::exists(dir / "out")) {
      ++complete;
      auto check = run_amalgam("inspect " + q(dir / "out") + " --summary");
      EXPECT_EQ(check.exit_code, 0) << "after a kill at " << delay_ms << " ms\n" << check.output;
    } else {
      ++absent;
    }
    auto again = run_amalgam("merge " + q(dir / "r.yaml") + " -o " + q(dir / "out") + " --force");
    EXPECT_EQ(again.exit_code, 0) << again.output;
    EXPECT_FALSE(hidden_leftovers(dir.path())) << "round " << round << "\n" << again.output;
  }
  RecordProperty("absent", absent);
  RecordProperty("complete", complete);
}

// SIGTERM (as Ctrl-C's SIGINT) stops the engine commands within a micro-batch: status 130, the
// message "interrupted", and no result file.
TEST(Signals, EngineCommandsStopWithStatus130) {
  TempDir dir;
  for (const std::string& command :
       {"perplexity " + q(zoo("base-large")) + " --file " + q(zoo("eval/heldout.txt")) + " -t 1",
        // About 2.5 s of work on an idle machine: every task, one prompt per forward pass.
        "eval " + q(zoo("base-large")) + " --task " + q(zoo("eval/add.json")) + " --task " +
            q(zoo("eval/rev.json")) + " --task " + q(zoo("eval/sort.json")) + " --task " +
            q(zoo("eval/heldout.txt")) + " -j 1 --one-by-one --json " + q(dir / "out.json")}) {
    // The signal is sent once the process catches SIGTERM (bit 15 of SigCgt): a sanitizer build
    // starts slower than any fixed delay assumed, and the default action would kill it (143).
    auto r = testing::run_amalgam_with_prefix(
        "", command +
                " 2>&1 & pid=$!; i=0; while [ $i -lt 500 ]; do"
                " c=$(awk '/^SigCgt/{print $2}' /proc/$pid/status 2>/dev/null);"
                " [ -n \"$c\" ] && [ $(( 0x$c & 16384 )) -ne 0 ] && break; i=$((i + 1));"
                " sleep 0.01; done; sleep 0.3; kill -TERM $pid; wait $pid; echo status=$?");
    EXPECT_NE(r.output.find("status=130"), std::string::npos) << command << "\n" << r.output;
    EXPECT_NE(r.output.find("interrupted"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(dir / "out.json"));
  }
}

// SIGBUS on a mapped input that shrank: the handler names the file and removes the staging
// directories registered for removal, then exits with status 1.
TEST(TruncatedInput, SigbusNamesTheFileAndRemovesStaging) {
  TempDir dir;
  const fs::path input = dir / "input.bin";
  write_file(input, std::string(1 << 16, 'x'));
  const fs::path staging = dir / ".out.tmp-1234";
  fs::create_directories(staging / "stages");
  write_file(staging / "model.safetensors", "partial");
  write_file(staging / "stages" / "a.json", "{}");
  EXPECT_EXIT(
      {
        core::install_fatal_signal_handler();
        core::register_staging(staging.string());
        core::MappedFile file(input.string());
        if (::truncate(input.c_str(), 0) != 0) std::abort();
        volatile uint8_t byte = file.data()[40000];
        (void)byte;
        std::exit(0);
      },
      ::testing::ExitedWithCode(1), "input.bin: the file shrank while it was being read");
  EXPECT_FALSE(fs::exists(staging));
}

}  // namespace
}  // namespace amalgam
