// Merge throughput against the I/O floor, and peak memory. Makes (once, cached under
// bench/.cache/merge) three TinyLlama-1.1B-shaped bf16 checkpoints in 3 shards each, then measures
//   floor  = read every input shard from the page cache + write an output-sized file and fsync it
//   linear = amalgam merge, linear over the three checkpoints
//   ties   = amalgam merge, TIES (density 0.3) of two checkpoints onto the third as base
//   dare_ties, della = the same two onto the same base: DARE-TIES (density 0.3, L1 rescale on, as
//            by default) and DELLA (density 0.4, epsilon 0.1, rescale on)
// wall time (best of --repeat), ratio to the floor and peak RSS of the amalgam process (wait4).
// The first merge over new inputs also hashes them for the model card's provenance table; that
// run is reported on its own ("cold digest cache"), later runs find the digests cached.
//
//   bench_merge [--repeat N] [--threads N] [--cache DIR] [--only NAME,...]
// --only runs just the named merges (comma-separated: linear, ties, dare_ties, della).
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "bench_util.h"
#include "io/safetensors.h"

namespace {

namespace fs = std::filesystem;
using namespace amalgam::bench;

std::vector<fs::path> shard_files(const fs::path& model) {
  amalgam::io::Checkpoint c(model);
  std::vector<fs::path> out;
  for (const auto& s : c.shards()) out.push_back(s->path());
  return out;
}

struct Measure {
  std::string name;
  double best = 1e30;
  double cpu = 0;  // of the best run
  long rss_kb = 0;
};

}  // namespace

int main(int argc, char** argv) {
  int repeat = 3;
  std::string threads, only;
  fs::path cache = fs::path(AMALGAM_SOURCE_DIR) / "bench" / ".cache" / "merge";
  CLI::App app{"Merge throughput against the I/O floor, and peak memory"};
  app.add_option("--repeat", repeat, "Runs of each merge (the best is kept)")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "Threads of the merges (default: all cores)");
  app.add_option("--cache", cache, "Directory of the generated checkpoints");
  app.add_option("--only", only, "Comma-separated merges to run: linear, ties, dare_ties, della");
  CLI11_PARSE(app, argc, argv);
  try {
    fs::create_directories(cache);
    const std::vector<std::string> names = {"base", "expert-1", "expert-2"};
    std::vector<fs::path> files;
    for (size_t i = 0; i < names.size(); ++i) {
      const fs::path dir = cache / names[i];
      if (!fs::exists(dir / ".complete")) {
        fmt::print(stderr, "making {} (once)...\n", dir.string());
        fs::remove_all(dir);
        auto r = run({AMALGAM_MAKE_TINYLLAMA, dir.string(), "--seed", std::to_string(i + 1),
                      "--family", "1"},
                     /*quiet=*/false);
        if (r.status != 0) amalgam::fail("making {} failed", dir.string());
        amalgam::core::write_text_file(dir / ".complete", "");
      }
      for (const auto& f : shard_files(dir)) files.push_back(f);
    }
    const uint64_t out_bytes = amalgam::io::Checkpoint(cache / "base").total_bytes();
    uint64_t in_bytes = 0;
    for (const auto& f : files) in_bytes += fs::file_size(f);

    const std::string m0 = (cache / names[0]).string(), m1 = (cache / names[1]).string(),
                      m2 = (cache / names[2]).string();
    amalgam::core::write_text_file(
        cache / "linear.yaml",
        fmt::format("merge_method: linear\nmodels:\n  - model: {}\n  - model: {}\n  - model: {}\n"
                    "parameters:\n  weight: 1.0\ndtype: bfloat16\n",
                    m0, m1, m2));
    amalgam::core::write_text_file(
        cache / "ties.yaml",
        fmt::format("merge_method: ties\nbase_model: {}\nmodels:\n  - model: {}\n  - model: {}\n"
                    "parameters:\n  weight: 1.0\n  density: 0.3\ndtype: bfloat16\n",
                    m0, m1, m2));
    amalgam::core::write_text_file(
        cache / "dare_ties.yaml",
        fmt::format("merge_method: dare_ties\nbase_model: {}\nmodels:\n  - model: {}\n  - model: "
                    "{}\nparameters:\n  weight: 1.0\n  density: 0.3\ndtype: bfloat16\n",
                    m0, m1, m2));
    amalgam::core::write_text_file(
        cache / "della.yaml",
        fmt::format("merge_method: della\nbase_model: {}\nmodels:\n  - model: {}\n  - model: "
                    "{}\nparameters:\n  weight: 1.0\n  density: 0.4\n  epsilon: 0.1\n"
                    "dtype: bfloat16\n",
                    m0, m1, m2));
    const fs::path out = cache / "out";
    const std::string digests = "AMALGAM_CACHE_DIR=" + (cache / "digests").string();
    auto merge = [&](const std::string& recipe) {
      std::vector<std::string> args = {AMALGAM_BINARY, "merge",      (cache / recipe).string(),
                                       "-o",           out.string(), "--force",
                                       "--quiet"};
      if (!threads.empty()) args.insert(args.end(), {"--threads", threads});
      RunResult r = run(args, /*quiet=*/false, {digests});
      if (r.status != 0) amalgam::fail("amalgam merge {} failed", recipe);
      fs::remove_all(out);
      ::sync();
      return r;
    };

    const std::string load_before = load_average();
    read_files(files);  // into the page cache
    Measure read{"read inputs (page cache)"}, plain{"write output + fsync"},
        early{"write output + fsync, early writeback"};
    for (int i = 0; i < repeat; ++i) {
      read.best = std::min(read.best, read_files(files));
      plain.best = std::min(plain.best, write_and_sync(cache / "floor.bin", out_bytes, false));
      ::sync();
      early.best = std::min(early.best, write_and_sync(cache / "floor.bin", out_bytes, true));
      ::sync();
    }
    const double floor = read.best + std::min(plain.best, early.best);

    // The cold-digest run (skipped with --only, which only makes sure the digests are cached).
    RunResult cold;
    if (only.empty()) {
      fs::remove_all(cache / "digests");
      read_files(files);
      cold = merge("linear.yaml");
    } else if (!fs::exists(cache / "digests")) {
      merge("linear.yaml");
    }
    std::vector<Measure> merges = {{"linear (3 models)"},
                                   {"ties density 0.3 (base + 2)"},
                                   {"dare_ties density 0.3, rescale (base + 2)"},
                                   {"della density 0.4, epsilon 0.1, rescale (base + 2)"}};
    const std::vector<std::string> recipes = {"linear.yaml", "ties.yaml", "dare_ties.yaml",
                                              "della.yaml"};
    for (int i = 0; i < repeat; ++i) {
      for (size_t m = 0; m < merges.size(); ++m) {
        const std::string name = recipes[m].substr(0, recipes[m].find('.'));
        if (!only.empty() && ("," + only + ",").find("," + name + ",") == std::string::npos) {
          continue;
        }
        read_files(files);
        RunResult r = merge(recipes[m]);
        if (r.seconds < merges[m].best) {
          merges[m].best = r.seconds;
          merges[m].cpu = r.cpu_seconds;
        }
        merges[m].rss_kb = std::max(merges[m].rss_kb, r.max_rss_kb);
      }
    }

    const unsigned cores = std::max(1u, static_cast<unsigned>(::sysconf(_SC_NPROCESSORS_ONLN)));
    fmt::print(
        "inputs: 3 x {:.2f} GB (3 shards each), output {:.2f} GB, {} cores, threads {}, load "
        "average {} before / {} after\n\n",
        static_cast<double>(in_bytes) / 3e9, static_cast<double>(out_bytes) / 1e9, cores,
        threads.empty() ? "all" : threads, load_before, load_average());
    fmt::print(
        "| run | wall s (best of {}) | x floor | CPU s (user+sys) | peak RSS MiB |\n"
        "|---|---:|---:|---:|---:|\n",
        repeat);
    for (const Measure* m : {&read, &plain, &early}) {
      fmt::print("| {} | {:.2f} | | | |\n", m->name, m->best);
    }
    fmt::print("| I/O floor (read + faster write) | {:.2f} | 1.00 | | |\n", floor);
    for (const auto& m : merges) {
      if (m.best == 1e30) continue;
      fmt::print("| {} | {:.2f} | {:.2f} | {:.2f} | {:.0f} |\n", m.name, m.best, m.best / floor,
                 m.cpu, static_cast<double>(m.rss_kb) / 1024.0);
    }
    if (!only.empty()) return 0;
    fmt::print(
        "| linear, first run (cold digest cache: hashes {:.1f} GB) | {:.2f} | {:.2f} | {:.2f} | "
        "{:.0f} |\n",
        static_cast<double>(in_bytes) / 1e9, cold.seconds, cold.seconds / floor, cold.cpu_seconds,
        static_cast<double>(cold.max_rss_kb) / 1024.0);
  } catch (const amalgam::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
