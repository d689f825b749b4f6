// GGUF export speed against the I/O floor, and peak memory. Makes (once, cached under
// bench/.cache/gguf) a TinyLlama-1.1B-shaped bf16 checkpoint in 3 shards with the zoo's tokenizer,
// then for each export type measures
//   floor  = read every input shard from the page cache + write a file of the output's size and
//            fsync it (the faster of plain and early writeback)
//   export = amalgam export-gguf MODEL -o OUT --type T
// wall time (best of --repeat), ratio to the floor, CPU time and peak RSS of the amalgam process.
//
//   bench_gguf_export [--repeat N] [--threads N] [--cache DIR] [--types f16,q4_k_m,...]
// --threads sets OMP_NUM_THREADS for the export (default: all cores).
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/error.h"
#include "core/fs.h"
#include "io/safetensors.h"

namespace {

namespace fs = std::filesystem;
namespace bench = amalgam::bench;

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

struct Measure {
  std::string type;
  uint64_t out_bytes = 0;
  double floor = 0;
  double best = 1e30;
  double cpu = 0;  // of the best run
  long rss_kb = 0;
};

}  // namespace

int main(int argc, char** argv) {
  int repeat = 3;
  std::string threads, types = "f16,q4_k_m";
  fs::path cache = fs::path(AMALGAM_SOURCE_DIR) / "bench" / ".cache" / "gguf";
  CLI::App app{"GGUF export speed against the I/O floor, and peak memory"};
  app.add_option("--repeat", repeat, "Runs of each export (the best is kept)")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "OMP_NUM_THREADS of the exports (default: all cores)");
  app.add_option("--cache", cache, "Directory of the generated checkpoint");
  app.add_option("--types", types, "Comma-separated export types");
  CLI11_PARSE(app, argc, argv);
  try {
    fs::create_directories(cache);
    const fs::path model = cache / "tinyllama";
    if (!fs::exists(model / ".complete")) {
      fmt::print(stderr, "making {} (once)...\n", model.string());
      fs::remove_all(model);
      auto r = bench::run({AMALGAM_MAKE_TINYLLAMA, model.string(), "--seed", "1"}, false);
      if (r.status != 0) amalgam::fail("making {} failed", model.string());
      // The zoo's byte-level BPE tokenizer (1,024 tokens; the rest of the 32,000 become [PADn]).
      const fs::path zoo = fs::path(AMALGAM_SOURCE_DIR) / "data" / "zoo" / "base";
      for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
        fs::copy_file(zoo / f, model / f, fs::copy_options::overwrite_existing);
      }
      amalgam::core::write_text_file(model / ".complete", "");
    }
    std::vector<fs::path> shards;
    const amalgam::io::Checkpoint checkpoint(model);
    for (const auto& s : checkpoint.shards()) shards.push_back(s->path());
    uint64_t in_bytes = 0;
    for (const auto& f : shards) in_bytes += fs::file_size(f);
    const fs::path out = cache / "out.gguf";
    // export-gguf's rows run on OpenMP threads; the child inherits this.
    if (!threads.empty()) ::setenv("OMP_NUM_THREADS", threads.c_str(), 1);

    const std::string load_before = bench::load_average();
    std::vector<Measure> measures;
    for (const auto& type : split(types)) {
      Measure m{type};
      std::vector<std::string> args = {AMALGAM_BINARY, "export-gguf", model.string(), "-o",
                                       out.string(),   "--type",      type,           "--force"};
      for (int i = 0; i < repeat; ++i) {
        bench::read_files(shards);  // inputs in the page cache, as for the floor
        const auto r = bench::run(args);
        if (r.status != 0) amalgam::fail("amalgam export-gguf --type {} failed", type);
        m.out_bytes = fs::file_size(out);
        fs::remove(out);
        ::sync();
        if (r.seconds < m.best) {
          m.best = r.seconds;
          m.cpu = r.cpu_seconds;
        }
        m.rss_kb = std::max(m.rss_kb, r.max_rss_kb);
      }
      double read = 1e30, write = 1e30;
      for (int i = 0; i < repeat; ++i) {
        read = std::min(read, bench::read_files(shards));
        write = std::min(write, bench::write_and_sync(cache / "floor.bin", m.out_bytes, false));
        ::sync();
        write = std::min(write, bench::write_and_sync(cache / "floor.bin", m.out_bytes, true));
        ::sync();
      }
      m.floor = read + write;
      measures.push_back(m);
    }

    const unsigned cores = std::max(1u, static_cast<unsigned>(::sysconf(_SC_NPROCESSORS_ONLN)));
    fmt::print(
        "input: {:.2f} GB bf16 in {} shards, {} cores, threads {}, load average {} before "
        "/ {} after\n\n",
        static_cast<double>(in_bytes) / 1e9, shards.size(), cores,
        threads.empty() ? "all" : threads, load_before, bench::load_average());
    fmt::print(
        "| type | output GB | I/O floor s | wall s (best of {}) | x floor | CPU s (user+sys) | "
        "peak RSS MiB |\n|---|---:|---:|---:|---:|---:|---:|\n",
        repeat);
    for (const auto& m : measures) {
      fmt::print("| {} | {:.3f} | {:.2f} | {:.2f} | {:.1f} | {:.1f} | {:.0f} |\n", m.type,
                 static_cast<double>(m.out_bytes) / 1e9, m.floor, m.best, m.best / m.floor, m.cpu,
                 static_cast<double>(m.rss_kb) / 1024.0);
    }
  } catch (const amalgam::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
