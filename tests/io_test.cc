#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "core/error.h"
#include "core/half.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "test_util.h"

namespace amalgam {
namespace {

using testing::TempDir;
using testing::zoo;

TEST(Half, Bf16RoundsToNearestEven) {
  EXPECT_EQ(core::f32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (down).
  EXPECT_EQ(core::f32_to_bf16(1.00390625f), 0x3f80);
  // 1 + 3*2^-8 is halfway, rounds up to the even mantissa.
  EXPECT_EQ(core::f32_to_bf16(1.01171875f), 0x3f82);
  EXPECT_TRUE(std::isnan(core::bf16_to_f32(core::f32_to_bf16(NAN))));
  EXPECT_EQ(core::bf16_to_f32(core::f32_to_bf16(-2.5f)), -2.5f);
}

TEST(Half, F16RoundTripsAndRounds) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    uint16_t v = static_cast<uint16_t>(h);
    float f = core::f16_to_f32(v);
    if (std::isnan(f)) continue;
    EXPECT_EQ(core::f32_to_f16(f), v) << h;
  }
  EXPECT_EQ(core::f32_to_f16(65520.0f), 0x7c00);  // rounds to inf
  EXPECT_EQ(core::f32_to_f16(1e-8f), 0x0000);
  EXPECT_EQ(core::f16_to_f32(0x0001), 5.9604644775390625e-08f);
}

TEST(Safetensors, ReadsZooCheckpoint) {
  io::Checkpoint ckpt(zoo("base"));
  EXPECT_TRUE(ckpt.has("model.embed_tokens.weight"));
  auto info = ckpt.info("model.layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(info.dtype, tensor::DType::kBF16);
  EXPECT_EQ(info.shape, (tensor::Shape{64, 128}));
  auto t = ckpt.load_f32("model.norm.weight");
  EXPECT_EQ(t.numel(), 128);
}

TEST(Safetensors, WriterRoundTripsShardedOutput) {
  TempDir dir;
  std::vector<io::OutputTensorSpec> specs = {{"a", tensor::DType::kF32, {2, 3}},
                                             {"b", tensor::DType::kBF16, {4}},
                                             {"c", tensor::DType::kF16, {5}}};
  {
    io::SafetensorsWriter writer(dir.path(), specs, 10);  // forces one tensor per shard
    EXPECT_EQ(writer.shard_count(), 3u);
    tensor::Tensor a({2, 3});
    for (int i = 0; i < 6; ++i) a.data[i] = static_cast<float>(i) * 0.5f;
    tensor::Tensor b({4});
    b.data = {1, -2, 3.5, 1e-3f};
    tensor::Tensor c({5});
    c.data = {0, 1, 2, 3, 65504};
    auto eb = tensor::encode(b, tensor::DType::kBF16);
    auto ec = tensor::encode(c, tensor::DType::kF16);
    auto ea = tensor::encode(a, tensor::DType::kF32);
    writer.write(1, eb.data(), eb.size());
    writer.write(2, ec.data(), ec.size());
    writer.write(0, ea.data(), ea.size());
    writer.finish();
  }
  EXPECT_TRUE(std::filesystem::exists(dir / "model-00001-of-00003.safetensors"));
  io::Checkpoint ckpt(dir.path());
  EXPECT_EQ(ckpt.load_f32("a").data[5], 2.5f);
  EXPECT_EQ(ckpt.load_f32("b").data[2], 3.5f);
  EXPECT_EQ(ckpt.load_f32("c").data[4], 65504.0f);
}

std::string header_file(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(data_bytes, '\0');
}

void expect_bad(const std::string& content, const std::string& message_part) {
  TempDir dir;
  auto path = dir / "bad.safetensors";
  testing::write_file(path, content);
  try {
    io::SafetensorsFile f(path.string());
    FAIL() << "accepted a bad file, expected: " << message_part;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(message_part), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad.safetensors"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, RejectsBadHeaders) {
  expect_bad("abc", "not a safetensors file");
  expect_bad(header_file("{", 0), "malformed JSON");
  expect_bad(std::string("\xff\xff\xff\xff\0\0\0\0", 8), "header length of 4294967295");
  expect_bad(header_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4),
             "truncated");
  expect_bad(header_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
             "needs 12");
  expect_bad(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                         12),
             "overlaps");
  expect_bad(header_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                         R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                         8),
             "duplicate key 'a'");
  expect_bad(header_file(R"({"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", 1),
             "unknown dtype");
}

TEST(HfConfig, ReadsBothStyles) {
  auto v5 = io::read_model_config(zoo("base"));
  EXPECT_EQ(v5.num_layers, 4);
  EXPECT_EQ(v5.num_kv_heads, 2);
  EXPECT_EQ(v5.rope.theta, 10000.0);
  EXPECT_EQ(v5.dtype, "bfloat16");
  auto v4 = io::parse_model_config(nlohmann::ordered_json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "num_attention_heads": 4, "num_hidden_layers": 2, "torch_dtype": "float16",
    "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
    "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})"),
                                   "test");
  EXPECT_EQ(v4.dtype, "float16");
  EXPECT_EQ(v4.rope.theta, 500000.0);
  EXPECT_EQ(v4.rope.type, "llama3");
  EXPECT_EQ(v4.rope.factor, 8.0);
  EXPECT_EQ(v4.head_dim, 16);
  EXPECT_EQ(v4.num_kv_heads, 4);
}

}  // namespace
}  // namespace amalgam
