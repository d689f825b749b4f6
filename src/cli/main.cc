// amalgam: merge, average, evolve and evaluate language-model checkpoints.
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <exception>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "core/fatal_signal.h"
#include "core/interrupt.h"
#include "core/log.h"
#include "infer/gemm.h"
#include "infer/kv_cache.h"

// 128 + SIGINT, as shells report a command stopped by Ctrl-C.
constexpr int kInterruptedExit = 130;

int main(int argc, char** argv) {
  // Past a file-size limit, writes should fail with EFBIG (reported, output cleaned up) rather
  // than kill the process and leave a half-written staging directory.
  std::signal(SIGXFSZ, SIG_IGN);
  amalgam::core::install_interrupt_handler();
  amalgam::core::install_fatal_signal_handler();
  CLI::App app{"amalgam: merge, average, evolve and evaluate language-model checkpoints"};
  app.require_subcommand(1);
  bool quiet = false;
  bool verbose = false;
  app.add_flag("-q,--quiet", quiet, "No progress bars or informational messages");
  app.add_flag("-v,--verbose", verbose, "More detail on stderr");
  bool fp32_products = false;
  app.add_flag("--fp32-products", fp32_products,
               "Engine: multiply BF16 and quantised weights with fp32 activations (exact fp32 "
               "arithmetic on the stored values) instead of activations rounded to BF16; about "
               "half the prefill speed where the CPU has native BF16 (docs/inference.md)");
  std::string kv_cache = "f32";
  app.add_option("--kv-cache", kv_cache,
                 "Engine: KV cache storage type, f32 (exact), bf16 or f16 (half the memory; logits "
                 "within about 2e-2 of f32, docs/inference.md)")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}));
  app.parse_complete_callback([&] {
    if (quiet) amalgam::core::set_verbosity(amalgam::core::Verbosity::kQuiet);
    if (verbose) amalgam::core::set_verbosity(amalgam::core::Verbosity::kVerbose);
    amalgam::infer::set_reduced_precision_products(!fp32_products);
    amalgam::infer::set_default_kv_type(amalgam::infer::parse_kv_type(kv_cache));
  });
  amalgam::cli::register_inspect(app);
  amalgam::cli::register_tokenize(app);
  amalgam::cli::register_merge(app);
  amalgam::cli::register_extract_lora(app);
  amalgam::cli::register_align(app);
  amalgam::cli::register_pleas(app);
  amalgam::cli::register_export_gguf(app);
  amalgam::cli::register_average(app);
  amalgam::cli::register_eval(app);
  amalgam::cli::register_soup(app);
  amalgam::cli::register_evolve(app);
  amalgam::cli::register_methods(app);
  amalgam::cli::register_moe(app);
  amalgam::cli::register_score(app);
  amalgam::cli::register_embed(app);
  amalgam::cli::register_probe(app);

  amalgam::cli::register_generate(app);
  amalgam::cli::register_logits(app);
  amalgam::cli::register_perplexity(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    // A usage error: one line in the same form as every other error, and the usual status 2.
    std::fprintf(stderr, "error: %s\nRun with --help for more information.\n", e.what());
    return 2;
  } catch (const amalgam::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return amalgam::core::interrupted() ? kInterruptedExit : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return amalgam::core::interrupted() ? kInterruptedExit : 2;
  }
  // A command that finished its work as the signal came still reports the interruption: its
  // caller asked it to stop and must not take the result as complete.
  if (amalgam::core::interrupted()) {
    std::fprintf(stderr, "error: interrupted\n");
    return kInterruptedExit;
  }
  return 0;
}
