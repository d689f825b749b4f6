// layer_swap recipes: the expansion, and the merged model checked tensor by tensor against the
// definition (donor layers in the swapped zones, base layers and non-layer tensors elsewhere,
// linear averages in the transition layers), computed here from the inputs.
#include "recipe/layer_swap.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <regex>

#include "io/safetensors.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::zoo;

// Expected source of output tensor `name`: (donor weight) for layer tensors, 0 for the rest.
double donor_weight(const std::string& name, int64_t bottom, int64_t top, int64_t transition,
                    double tw, int64_t layers) {
  std::smatch m;
  static const std::regex kLayer(R"(model\.layers\.(\d+)\.)");
  if (!std::regex_search(name, m, kLayer)) return 0.0;
  const int64_t l = std::stoll(m[1]);
  if (l < bottom || l >= layers - top) return 1.0;
  if (bottom > 0 && l < bottom + transition) return tw;
  if (top > 0 && l >= layers - top - transition) return tw;
  return 0.0;
}

void check_swap(int64_t bottom, int64_t top, int64_t transition, double tw) {
  testing::TempDir dir;
  const std::string recipe = fmt::format(
      "layer_swap:\n  base: {}\n  donor: {}\n  bottom: {}\n  top: {}\n  transition: {}\n"
      "  transition_weight: {}\ndtype: float32\n",
      zoo("sort-expert").string(), zoo("rev-expert").string(), bottom, top, transition, tw);
  testing::write_file(dir / "swap.yaml", recipe);
  const auto r = testing::run_amalgam("-q merge " + (dir / "swap.yaml").string() + " -o " +
                                      (dir / "out").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  io::Checkpoint out(dir / "out"), base(zoo("sort-expert")), donor(zoo("rev-expert"));
  ASSERT_EQ(out.names(), base.names());
  int swapped = 0;
  for (const std::string& name : out.names()) {
    const double w = donor_weight(name, bottom, top, transition, tw, 4);
    const tensor::Tensor got = out.load_f32(name), b = base.load_f32(name),
                         d = donor.load_f32(name);
    for (size_t i = 0; i < got.data.size(); ++i) {
      const double want = w * d.data[i] + (1.0 - w) * b.data[i];
      ASSERT_NEAR(got.data[i], want, 1e-6 * (1 + std::abs(want))) << name << " [" << i << "]";
    }
    swapped += w > 0;
  }
  EXPECT_GT(swapped, 0);
}

TEST(LayerSwapTest, BottomAndTopFromDonor) { check_swap(1, 1, 0, 0.5); }
TEST(LayerSwapTest, TransitionLayersAreAveraged) { check_swap(1, 0, 1, 0.25); }
TEST(LayerSwapTest, BothTransitions) { check_swap(1, 1, 1, 0.5); }

TEST(LayerSwapTest, PrintExpandedShowsSlices) {
  testing::TempDir dir;
  testing::write_file(dir / "swap.yaml", "layer_swap:\n  base: " + zoo("sort-expert").string() +
                                             "\n  donor: " + zoo("rev-expert").string() +
                                             "\n  bottom: 1\n  top: 1\n");
  const auto r =
      testing::run_amalgam("merge " + (dir / "swap.yaml").string() + " --print-expanded");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("merge_method: linear"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("layer_range: [1, 3]"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("layer_range: [3, 4]"), std::string::npos) << r.output;
}

TEST(LayerSwapTest, Errors) {
  const std::string models =
      "  base: " + zoo("sort-expert").string() + "\n  donor: " + zoo("rev-expert").string() + "\n";
  testing::expect_error(
      [&] { recipe::expand_layer_swap("layer_swap:\n" + models + "  bottom: 3\n  top: 2\n", "s"); },
      "exceed the model's 4 layers");
  testing::expect_error(
      [&] { recipe::expand_layer_swap("layer_swap:\n" + models + "  top: 2\n", "s"); },
      "layer_swap.bottom is required");
  testing::expect_error(
      [&] {
        recipe::expand_layer_swap("layer_swap:\n" + models + "  bottom: 1\n  top: 1\n  botom: 2\n",
                                  "s");
      },
      "botom");
  testing::expect_error(
      [&] {
        recipe::expand_layer_swap("layer_swap:\n  base: " + zoo("sort-expert").string() +
                                      "\n  donor: " + zoo("base-large").string() +
                                      "\n  bottom: 1\n  top: 1\n",
                                  "s");
      },
      "6 layers");
}

}  // namespace
}  // namespace amalgam
