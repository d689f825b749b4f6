// The streaming executor and its conversions, on hand-built plans over zoo checkpoints.
#include "merge/executor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/error.h"
#include "core/half.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "merge/finalize.h"
#include "tensor/convert.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using merge::Plan;
using merge::PlanEntry;
using tensor::DType;
using testing::TempDir;
using testing::zoo;

TEST(Convert, Bf16DecodeMatchesScalarForEveryPattern) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> out(65536);
  const size_t bad = tensor::decode_checked(DType::kBF16, reinterpret_cast<uint8_t*>(all.data()),
                                            out.data(), all.size());
  EXPECT_EQ(bad, 0x7f80u);  // +Inf is the first non-finite pattern
  for (uint32_t i = 0; i < 65536; ++i) {
    const float want = core::bf16_to_f32(static_cast<uint16_t>(i));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(out[i]));
    } else {
      EXPECT_EQ(core::f32_to_bits(out[i]), core::f32_to_bits(want)) << i;
    }
  }
  // Unaligned input (a header length that is not a multiple of 2).
  std::vector<uint8_t> shifted(2 * 4 + 1);
  const uint16_t vals[4] = {0x3f80, 0xc000, 0x0001, 0x7f7f};
  std::memcpy(shifted.data() + 1, vals, 8);
  float four[4];
  EXPECT_EQ(tensor::decode_checked(DType::kBF16, shifted.data() + 1, four, 4), 4u);
  EXPECT_EQ(four[0], 1.0f);
  EXPECT_EQ(four[1], -2.0f);
}

TEST(Convert, EncodeRoundsToNearestEvenAndFlagsNonFinite) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<uint32_t> bits(0, 0xffffffffu);
  std::vector<float> v;
  while (v.size() < 100000) {
    float f = core::bits_to_f32(bits(rng));
    if (std::isfinite(f) && std::fabs(f) < 3e38f) v.push_back(f);
  }
  v.push_back(1.00390625f);  // halfway cases
  v.push_back(1.01171875f);
  std::vector<uint8_t> out(v.size() * 2);
  ASSERT_EQ(tensor::encode_checked(v.data(), DType::kBF16, out.data(), v.size()), v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    uint16_t h;
    std::memcpy(&h, out.data() + 2 * i, 2);
    ASSERT_EQ(h, core::f32_to_bf16(v[i])) << v[i];
  }
  std::vector<float> with_nan = {1.0f, 2.0f, NAN, 3.0f};
  EXPECT_EQ(tensor::encode_checked(with_nan.data(), DType::kBF16, out.data(), 4), 2u);
  std::vector<float> overflow = {1.0f, 70000.0f};
  EXPECT_EQ(tensor::encode_checked(overflow.data(), DType::kF16, out.data(), 2), 1u);
  EXPECT_EQ(tensor::encode_checked(overflow.data(), DType::kBF16, out.data(), 2), 2u);
  std::vector<float> huge = {3.4e38f};  // rounds up past the largest bf16
  EXPECT_EQ(tensor::encode_checked(huge.data(), DType::kBF16, out.data(), 1), 0u);
  std::vector<float> r = {1.0009765625f, 70000.0f};
  tensor::round_through(DType::kBF16, r.data(), 2);
  EXPECT_EQ(r[0], 1.0f);
}

// A linear plan over every tensor of the given zoo models, built by hand.
Plan linear_plan(const std::vector<std::string>& models, const std::vector<double>& weights) {
  Plan plan;
  plan.method = "linear";
  for (const auto& m : models) plan.models.push_back(zoo(m));
  io::Checkpoint first(plan.models[0]);
  for (const auto& name : first.names()) {
    PlanEntry e;
    e.name = name;
    e.out_dtype = DType::kBF16;
    e.shape = first.info(name).shape;
    for (size_t i = 0; i < models.size(); ++i)
      e.sources.push_back({i, name, {{"weight", weights[i]}}});
    e.is_embed =
        name.find("embed_tokens") != std::string::npos || name.find("lm_head") != std::string::npos;
    plan.entries.push_back(e);
  }
  plan.num_layers = 4;
  return plan;
}

TEST(Executor, SameBytesWhateverTheSinkThreadsOrChunking) {
  Plan plan = linear_plan({"base", "add-expert", "rev-expert"}, {1.0, 2.0, 0.5});
  merge::InputSet inputs;
  merge::MemorySink reference;
  merge::ExecuteOptions one;
  one.threads = 1;
  one.progress = false;
  auto stats = merge::execute(plan, inputs, reference, one);
  EXPECT_EQ(stats.tensors, plan.entries.size());
  EXPECT_EQ(inputs.size(), 3u);

  TempDir dir;
  merge::CheckpointSink disk(dir.path(), 300'000);  // several shards
  merge::ExecuteOptions many = one;
  many.threads = 4;
  many.chunk_elements = 1000;  // many chunks per tensor
  merge::execute(plan, inputs, disk, many);
  EXPECT_GT(disk.writer().shard_count(), 1u);
  EXPECT_EQ(inputs.size(), 3u);  // reused, not reopened
  io::Checkpoint written(dir.path());
  for (const auto& e : plan.entries) {
    const auto& mem = reference.at(e.name);
    tensor::TensorView v = written.view(e.name);
    ASSERT_EQ(v.shape, mem.shape);
    EXPECT_EQ(std::memcmp(v.data, mem.bytes.data(), mem.bytes.size()), 0) << e.name;
  }
  // Executing again into the same memory sink reuses it and gives the same bytes.
  auto before = reference.at("model.norm.weight").bytes;
  merge::execute(plan, inputs, reference, many);
  EXPECT_EQ(reference.at("model.norm.weight").bytes, before);
  EXPECT_EQ(reference.views().size(), plan.entries.size());
}

// Random methods draw per element from a counter-based generator: the same bytes whatever the
// thread count and chunk size, and another seed gives other bytes.
TEST(Executor, RandomMethodsAreIndependentOfThreadsAndChunking) {
  for (const std::string method : {"dare_ties", "della"}) {
    Plan plan = linear_plan({"base", "add-expert", "rev-expert"}, {1.0, 0.6, 0.7});
    plan.method = method;
    plan.base_model = 0;
    for (auto& e : plan.entries) {
      e.base = 0;
      e.sources[0].params.clear();
      for (size_t i = 1; i < e.sources.size(); ++i) {
        e.sources[i].params["density"] = 0.4;
        if (method == "della") e.sources[i].params["epsilon"] = 0.1;
      }
    }
    merge::InputSet inputs;
    merge::ExecuteOptions one;
    one.threads = 1;
    one.progress = false;
    one.seed = 7;
    merge::MemorySink a, b, c;
    merge::execute(plan, inputs, a, one);
    merge::ExecuteOptions many = one;
    many.threads = 3;
    many.chunk_elements = 777;  // chunk edges fall mid-matrix, never at the same places
    merge::execute(plan, inputs, b, many);
    merge::ExecuteOptions other = one;
    other.seed = 8;
    merge::execute(plan, inputs, c, other);
    size_t differs = 0;
    for (const auto& e : plan.entries) {
      EXPECT_EQ(a.at(e.name).bytes, b.at(e.name).bytes) << method << " " << e.name;
      differs += a.at(e.name).bytes != c.at(e.name).bytes;
    }
    EXPECT_GT(differs, plan.entries.size() / 2) << method;
  }
}

TEST(Executor, CropsEmbeddingsAndRoundsToTheComputeDtype) {
  Plan plan;
  plan.method = "linear";
  plan.models = {zoo("base"), zoo("add-expert")};
  PlanEntry e;
  e.name = "model.embed_tokens.weight";
  e.out_dtype = DType::kF32;
  e.shape = {1000, 100};  // the inputs are [1024, 128]
  e.is_embed = true;
  e.sources = {{0, e.name, {{"weight", 1.0}}}, {1, e.name, {{"weight", 1.0}}}};
  plan.entries.push_back(e);
  plan.compute_dtype = DType::kF16;
  merge::InputSet inputs;
  merge::MemorySink sink;
  merge::ExecuteOptions opt;
  opt.progress = false;
  opt.chunk_elements = 300;
  merge::execute(plan, inputs, sink, opt);
  io::Checkpoint a(zoo("base")), b(zoo("add-expert"));
  auto ta = a.load_f32(e.name), tb = b.load_f32(e.name);
  const auto& out = sink.at(e.name);
  ASSERT_EQ(out.shape, (tensor::Shape{1000, 100}));
  const float* got = reinterpret_cast<const float*>(out.bytes.data());
  auto f16 = [](float v) { return core::f16_to_f32(core::f32_to_f16(v)); };
  for (size_t r = 0; r < 1000; ++r) {
    for (size_t c = 0; c < 100; ++c) {
      const float want = 0.5f * f16(ta.data[r * 128 + c]) + 0.5f * f16(tb.data[r * 128 + c]);
      ASSERT_EQ(got[r * 100 + c], want) << r << "," << c;
    }
  }
  // A non-embedding cannot be cropped; an embedding cannot be padded.
  plan.entries[0].is_embed = false;
  merge::MemorySink s2;
  try {
    merge::execute(plan, inputs, s2, opt);
    ADD_FAILURE() << "cropped a non-embedding";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("shape mismatch"), std::string::npos) << err.what();
  }
  plan.entries[0].is_embed = true;
  plan.entries[0].shape = {1100, 128};
  try {
    merge::execute(plan, inputs, s2, opt);
    ADD_FAILURE() << "padded an embedding";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("never padded"), std::string::npos) << err.what();
  }
}

// Copies a zoo model with one value of one tensor replaced.
fs::path poisoned_copy(const TempDir& dir, const std::string& tensor_name, float value) {
  fs::path out = dir / "poisoned";
  fs::create_directories(out);
  fs::copy(zoo("add-expert") / "config.json", out / "config.json");
  io::Checkpoint src(zoo("add-expert"));
  std::vector<io::OutputTensorSpec> specs;
  for (const auto& n : src.names()) specs.push_back({n, src.info(n).dtype, src.info(n).shape});
  io::SafetensorsWriter w(out, specs, 1ull << 40);
  for (size_t i = 0; i < specs.size(); ++i) {
    tensor::TensorView v = src.view(specs[i].name);
    std::vector<uint8_t> bytes(v.data, v.data + v.nbytes());
    if (specs[i].name == tensor_name) {
      const uint16_t h = core::f32_to_bf16(value);
      std::memcpy(bytes.data() + 2 * 7, &h, 2);
    }
    w.write(i, bytes.data(), bytes.size());
  }
  w.finish();
  return out;
}

TEST(Executor, ReportsNaNInputsAndNonFiniteResults) {
  TempDir dir;
  const std::string name = "model.layers.1.mlp.up_proj.weight";
  fs::path bad = poisoned_copy(dir, name, NAN);
  Plan plan = linear_plan({"base", "add-expert"}, {1.0, 1.0});
  plan.models[1] = bad;
  merge::InputSet inputs;
  merge::MemorySink sink;
  merge::ExecuteOptions opt;
  opt.progress = false;
  try {
    merge::execute(plan, inputs, sink, opt);
    ADD_FAILURE() << "merged a NaN";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("poisoned"), std::string::npos) << msg;
    EXPECT_NE(msg.find(name), std::string::npos) << msg;
    EXPECT_NE(msg.find("NaN at element 7"), std::string::npos) << msg;
  }
  // The byte-copy path of passthrough checks too.
  Plan copy;
  copy.method = "passthrough";
  copy.models = {bad};
  PlanEntry pe;
  pe.name = name;
  pe.out_dtype = DType::kBF16;
  pe.shape = io::Checkpoint(bad).info(name).shape;
  pe.sources = {{0, name, {}}};
  copy.entries = {pe};
  try {
    merge::execute(copy, inputs, sink, opt);
    ADD_FAILURE() << "copied a NaN";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("NaN at element 7"), std::string::npos) << e.what();
  }
  // Finite inputs whose weighted sum overflows: the result check names tensor and inputs.
  Plan huge = linear_plan({"base", "add-expert"}, {1e38, 1e38});
  for (auto& e : huge.entries) e.global["normalize"] = 0.0;
  try {
    merge::execute(huge, inputs, sink, opt);
    ADD_FAILURE() << "wrote an Inf";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("merged value"), std::string::npos) << msg;
    EXPECT_NE(msg.find("add-expert"), std::string::npos) << msg;
  }
}

TEST(Executor, ValidatesBeforeReadingAndLeavesNoOutputOnFailure) {
  merge::InputSet inputs;
  Plan plan = linear_plan({"base", "add-expert"}, {1.0, 1.0});
  plan.entries[3].sources[1].tensor = "model.no_such.weight";
  auto checkpoints = inputs.open_all(plan);
  try {
    merge::validate_plan(plan, checkpoints);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'model.no_such.weight' not found"), std::string::npos)
        << e.what();
  }
  TempDir dir;
  merge::OutputOptions opt;
  opt.execute.progress = false;
  EXPECT_THROW(merge::write_model(plan, inputs, dir / "out", opt), Error);
  EXPECT_TRUE(fs::is_empty(dir.path()));  // neither output nor staging directory

  // A failure in the middle of the merge (a NaN) also leaves nothing.
  Plan poisoned = linear_plan({"base", "add-expert"}, {1.0, 1.0});
  TempDir src;
  poisoned.models[1] = poisoned_copy(src, "model.layers.3.self_attn.o_proj.weight", INFINITY);
  EXPECT_THROW(merge::write_model(poisoned, inputs, dir / "out", opt), Error);
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(Finalize, ConfigKeepsTheDonorsKeysAndStyle) {
  Plan plan;
  plan.num_layers = 7;
  plan.out_dtype = DType::kF16;
  auto v5 = merge::output_config_json(
      plan, R"({"b": 1, "num_hidden_layers": 4, "dtype": "bfloat16", "a": [1, 2]})", "x");
  EXPECT_EQ(v5,
            "{\n  \"b\": 1,\n  \"num_hidden_layers\": 7,\n  \"dtype\": \"float16\",\n  "
            "\"a\": [\n    1,\n    2\n  ]\n}\n");
  auto v4 =
      merge::output_config_json(plan, R"({"num_hidden_layers": 4, "torch_dtype": "float32"})", "x");
  EXPECT_NE(v4.find("\"torch_dtype\": \"float16\""), std::string::npos);
  EXPECT_EQ(v4.find("\"dtype\""), std::string::npos);
  EXPECT_THROW(merge::output_config_json(plan, "{", "x"), Error);
}

}  // namespace
}  // namespace amalgam
