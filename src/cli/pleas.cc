// amalgam pleas A B --data TEXT -o OUT --width R: merges two models that need not share a base
// (PLeaS: activation matching, partial merging, layer-wise least squares; src/align/pleas.h)
// into an ordinary Llama checkpoint R times as wide.
#include "align/pleas.h"

#include <fmt/format.h>

#include <chrono>

#include "align/activations.h"
#include "align/params.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"

namespace amalgam::cli {

namespace {

struct PleasCliOptions {
  std::string a, b, out, data;
  double width = 1.0, ridge = 1e-4;
  int64_t rows = 32, row_tokens = 128;
  bool force = false, match_scale = false, sequential = false;
};

void run_pleas(const PleasCliOptions& opt) {
  const auto start = std::chrono::steady_clock::now();
  if (!(opt.width >= 1.0 && opt.width <= 2.0)) {
    fail("pleas: --width must be in [1, 2], got {}", opt.width);
  }
  const align::LlamaParams a = align::load_llama(opt.a);
  const align::LlamaParams b = align::load_llama(opt.b);
  align::check_same_shape(a, b);
  const auto rows = align::calibration_rows(opt.data, a.dir, opt.rows, opt.row_tokens);
  align::PleasOptions po;
  po.width = opt.width;
  po.ridge = opt.ridge;
  po.match_scale = opt.match_scale;
  po.sequential = opt.sequential;
  align::PleasReport rep;
  const align::LlamaParams merged = align::pleas_merge(a, b, rows, po, &rep);
  align::save_llama(merged, opt.out, opt.force);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  core::info(
      "pleas: hidden {}, intermediate {}, {} heads / {} KV heads (from {}, {}, {} / {}); "
      "B's residual scaled by {:.3f}; {} tokens; matching {:.1f} s, statistics {:.1f} s, least "
      "squares {:.1f} s",
      rep.hidden, rep.intermediate, rep.heads, rep.kv_heads, a.hidden(), a.intermediate(),
      a.heads(), a.kv_heads(), rep.residual_scale, rep.tokens, rep.match_seconds,
      rep.accumulate_seconds, rep.solve_seconds);
  core::info("wrote {} ({:.1f} s)", opt.out, seconds);
}

}  // namespace

void register_pleas(CLI::App& app) {
  auto opt = std::make_shared<PleasCliOptions>();
  auto* cmd = app.add_subcommand(
      "pleas", "Merge two models that need not share a base (permutations + least squares)");
  cmd->add_option("a", opt->a, "First model directory")->required();
  cmd->add_option("b", opt->b, "Second model directory (same architecture and vocabulary)")
      ->required();
  cmd->add_option("-o,--out", opt->out, "Output model directory")->required();
  cmd->add_option("--data", opt->data, "Calibration text (documents separated by blank lines)")
      ->required();
  cmd->add_option("--width", opt->width,
                  "Size of the merge relative to one model, in [1, 2] (default 1)");
  cmd->add_option("--ridge", opt->ridge,
                  "Ridge, relative to the mean diagonal of each Gram matrix (default 1e-4)");
  cmd->add_option("--rows", opt->rows, "Calibration rows (default 32)");
  cmd->add_option("--row-tokens", opt->row_tokens, "Tokens per calibration row (default 128)");
  cmd->add_flag("--match-scale", opt->match_scale,
                "Scale B's residual stream to A's mean square before merging (exact for B)");
  cmd->add_flag("--sequential", opt->sequential,
                "Refit layer after layer on the merged model's own inputs (slower)");
  cmd->add_flag("-f,--force", opt->force, "Replace an existing output directory");
  cmd->callback([opt] { run_pleas(*opt); });
}

}  // namespace amalgam::cli
