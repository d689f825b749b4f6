// LoRA adapters: BASE+LORA model references applied while a merge reads the base, checked against
// W + scale * B A computed here in fp64; bad adapters refused; extract-lora on the zoo checked
// against the Eckart-Young optimum (an independent Jacobi SVD in fp64) and by merging BASE+OUT
// back into the fine-tune.
#include "io/lora.h"

#include <gtest/gtest.h>

// GCC 12 reports false maybe-uninitialized warnings inside Eigen's AVX-512 packet code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#include <Eigen/SVD>
#pragma GCC diagnostic pop

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "core/half.h"
#include "core/json.h"
#include "eval/model_source.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "merge/executor.h"
#include "merge/extract_lora.h"
#include "merge/sink.h"
#include "recipe/recipe.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using tensor::DType;
using testing::TempDir;
using testing::zoo;

// ---- helpers -------------------------------------------------------------------------------

struct NamedTensor {
  std::string name;
  DType dtype = DType::kF32;
  tensor::Shape shape;
  std::vector<float> values;
};

void write_safetensors(const fs::path& file, const std::vector<NamedTensor>& tensors) {
  const fs::path dir = file.parent_path() / ".st-tmp";
  fs::create_directories(dir);
  std::vector<io::OutputTensorSpec> specs;
  for (const auto& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  {
    io::SafetensorsWriter writer(dir, specs, UINT64_MAX);
    for (size_t i = 0; i < tensors.size(); ++i) {
      std::vector<uint8_t> bytes(tensors[i].values.size() * tensor::dtype_size(tensors[i].dtype));
      tensor::from_f32(tensors[i].values.data(), tensors[i].dtype, bytes.data(),
                       tensors[i].values.size());
      writer.write(i, bytes.data(), bytes.size());
    }
    writer.finish();
  }
  fs::rename(dir / "model.safetensors", file);
  fs::remove_all(dir);
}

std::vector<float> random_values(size_t n, double stddev, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, static_cast<float>(stddev));
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// One adapted module, as the test builds it.
struct Module {
  std::string module;  // e.g. model.layers.0.self_attn.q_proj
  int64_t rows = 0;    // of the base weight
  int64_t cols = 0;
  int64_t rank = 4;
  bool embedding = false;   // lora_embedding_A (r, rows), lora_embedding_B (cols, r)
  bool transposed = false;  // fan_in_fan_out: A (r, rows), B (cols, r), update (B A)^T
  double scale = 1;         // what PEFT would use, computed by the test from r and alpha
  std::vector<float> a, b;  // as stored: A (r, a_cols), B (b_rows, r)
  int64_t a_cols() const { return embedding || transposed ? rows : cols; }
  int64_t b_rows() const { return embedding || transposed ? cols : rows; }
  // The update of base element (i, j), in fp64, from the maths: (B A)[i, j], or (B A)[j, i].
  double update(int64_t i, int64_t j) const {
    const int64_t p = embedding || transposed ? j : i, q = embedding || transposed ? i : j;
    double sum = 0;
    for (int64_t k = 0; k < rank; ++k) {
      sum += static_cast<double>(b[p * rank + k]) * static_cast<double>(a[k * a_cols() + q]);
    }
    return scale * sum;
  }
};

struct Adapter {
  nlohmann::json config;
  std::vector<Module> modules;
  std::vector<NamedTensor> extra;  // modules_to_save replacements, broken tensors, ...
};

void write_adapter(const fs::path& dir, const Adapter& adapter) {
  fs::create_directories(dir);
  testing::write_file(dir / "adapter_config.json", adapter.config.dump(2));
  std::vector<NamedTensor> tensors = adapter.extra;
  for (const auto& m : adapter.modules) {
    const std::string p = "base_model.model." + m.module;
    tensors.push_back({p + (m.embedding ? ".lora_embedding_A" : ".lora_A.weight"),
                       DType::kF32,
                       {m.rank, m.a_cols()},
                       m.a});
    tensors.push_back({p + (m.embedding ? ".lora_embedding_B" : ".lora_B.weight"),
                       DType::kF32,
                       {m.b_rows(), m.rank},
                       m.b});
  }
  write_safetensors(dir / "adapter_model.safetensors", tensors);
}

Module random_module(const std::string& module, int64_t rows, int64_t cols, int64_t rank,
                     std::mt19937& rng, bool embedding = false, bool transposed = false) {
  Module m{module, rows, cols, rank, embedding, transposed, 1.0, {}, {}};
  m.a = random_values(static_cast<size_t>(rank * m.a_cols()), 0.05, rng);
  m.b = random_values(static_cast<size_t>(m.b_rows() * rank), 0.05, rng);
  return m;
}

nlohmann::json lora_config(int64_t r, double alpha, bool rslora,
                           std::vector<std::string> targets = {"q_proj", "k_proj", "down_proj"}) {
  return {{"peft_type", "LORA"},
          {"task_type", "CAUSAL_LM"},
          {"r", r},
          {"lora_alpha", alpha},
          {"use_rslora", rslora},
          {"target_modules", targets},
          {"lora_dropout", 0.05},
          {"fan_in_fan_out", false},
          {"bias", "none"},
          {"base_model_name_or_path", zoo("base").string()}};
}

std::vector<float> decode(const tensor::TensorView& v) {
  std::vector<float> out(static_cast<size_t>(v.numel()));
  tensor::to_f32(v.dtype, v.data, out.data(), out.size());
  return out;
}

// Distance in representable bf16 steps (sign-magnitude mapped to a monotonic integer line).
int bf16_ulps(uint16_t a, uint16_t b) {
  auto line = [](uint16_t h) {
    return (h & 0x8000) ? -static_cast<int>(h & 0x7fff) : static_cast<int>(h);
  };
  return std::abs(line(a) - line(b));
}

uint16_t bf16_of(double v) { return core::f32_to_bf16(static_cast<float>(v)); }

merge::MemorySink run_recipe(const std::string& yaml) {
  merge::Plan plan = recipe::plan_from_yaml(yaml, "test.yaml", {});
  merge::InputSet inputs;
  merge::MemorySink sink;
  merge::ExecuteOptions options;
  options.progress = false;
  options.threads = 2;
  merge::execute(plan, inputs, sink, options);
  return sink;
}

std::string passthrough_recipe(const std::string& model) {
  return "merge_method: passthrough\nmodels:\n  - model: " + nlohmann::json(model).dump() + "\n";
}

// Every output tensor equals the base's, except adapted ones, which equal bf16(W + update) to
// within `max_ulps` (1: the fp32 sum may round the other way near a tie).
void expect_adapted(const merge::MemorySink& sink, const std::vector<Module>& modules,
                    double weight = 1.0, const std::set<std::string>& skip = {}) {
  const int max_ulps = 1;
  io::Checkpoint base(zoo("base"));
  for (const auto& name : base.names()) {
    if (skip.count(name)) continue;
    const merge::MemoryTensor& out = sink.at(name);
    ASSERT_EQ(out.dtype, DType::kBF16) << name;
    const tensor::TensorView in = base.view(name);
    const Module* m = nullptr;
    for (const auto& x : modules) {
      if (x.module + ".weight" == name) m = &x;
    }
    if (!m) {
      EXPECT_EQ(std::memcmp(out.bytes.data(), in.data, in.nbytes()), 0) << name << " changed";
      continue;
    }
    const std::vector<float> w = decode(in);
    const int64_t cols = in.shape[1];
    int worst = 0, changed = 0;
    for (int64_t i = 0; i < in.shape[0]; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        const double want = w[i * cols + j] + weight * m->update(i, j);
        uint16_t got;
        std::memcpy(&got, out.bytes.data() + 2 * (i * cols + j), 2);
        worst = std::max(worst, bf16_ulps(got, bf16_of(want)));
        changed += core::f32_to_bf16(w[i * cols + j]) != got;
      }
    }
    EXPECT_LE(worst, max_ulps) << name;
    EXPECT_GT(changed, in.numel() / 2) << name << ": the update barely shows";
  }
}

// ---- applying adapters ---------------------------------------------------------------------

class ApplyTest : public ::testing::TestWithParam<bool> {};

TEST_P(ApplyTest, PassthroughOfBasePlusLoraEqualsFp64Reference) {
  const bool rslora = GetParam();
  TempDir tmp;
  std::mt19937 rng(rslora ? 7 : 3);
  Adapter adapter;
  adapter.config = lora_config(4, 8, rslora);
  adapter.modules = {random_module("model.layers.0.self_attn.q_proj", 128, 128, 4, rng),
                     random_module("model.layers.1.mlp.down_proj", 128, 384, 4, rng),
                     random_module("model.layers.3.self_attn.k_proj", 64, 128, 4, rng)};
  for (auto& m : adapter.modules) m.scale = rslora ? 8.0 / 2.0 : 8.0 / 4.0;
  write_adapter(tmp / "lora", adapter);
  const std::string ref = zoo("base").string() + "+" + (tmp / "lora").string();

  expect_adapted(run_recipe(passthrough_recipe(ref)), adapter.modules);
  // linear with weight 1 of the single model: the same tensors through the merge arithmetic.
  expect_adapted(run_recipe("merge_method: linear\nmodels:\n  - model: " + ref +
                            "\n    parameters:\n      weight: 1.0\n"),
                 adapter.modules);
  // mergekit's dict form.
  expect_adapted(
      run_recipe("merge_method: passthrough\nmodels:\n  - model:\n      model: " +
                 zoo("base").string() + "\n      lora: " + (tmp / "lora").string() + "\n"),
      adapter.modules);
}

INSTANTIATE_TEST_SUITE_P(Rslora, ApplyTest, ::testing::Values(false, true));

TEST(Lora, UpdateIsComputedInFp32AndRoundedToTheRecipeDtype) {
  TempDir tmp;
  std::mt19937 rng(9);
  Adapter adapter;
  adapter.config = lora_config(4, 8, false);
  adapter.modules = {random_module("model.layers.1.mlp.down_proj", 128, 384, 4, rng)};
  adapter.modules[0].scale = 2.0;
  write_adapter(tmp / "lora", adapter);
  const Module& m = adapter.modules[0];
  const std::string name = m.module + ".weight";
  const std::vector<float> w = decode(io::Checkpoint(zoo("base")).view(name));
  const std::string models =
      "models:\n  - model: " + zoo("base").string() + "+" + (tmp / "lora").string() + "\n";
  // float32 out, no dtype: W + scale B A to fp32 precision.
  const merge::MemorySink f32 =
      run_recipe("merge_method: passthrough\nout_dtype: float32\n" + models);
  const std::vector<float> got = decode(f32.at(name).view());
  // dtype bfloat16: the adapted input is rounded to bf16 before the (fp32) arithmetic.
  const merge::MemorySink bf16 =
      run_recipe("merge_method: passthrough\ndtype: bfloat16\nout_dtype: float32\n" + models);
  const std::vector<float> rounded = decode(bf16.at(name).view());
  double worst = 0;
  int worst_ulps = 0;
  for (int64_t i = 0; i < m.rows; ++i) {
    for (int64_t j = 0; j < m.cols; ++j) {
      const size_t k = static_cast<size_t>(i * m.cols + j);
      const double want = w[k] + m.update(i, j);
      worst = std::max(worst, std::fabs(got[k] - want) / std::max(std::fabs(want), 1e-3));
      worst_ulps = std::max(worst_ulps, bf16_ulps(core::f32_to_bf16(rounded[k]), bf16_of(want)));
      ASSERT_EQ(rounded[k], core::bf16_to_f32(core::f32_to_bf16(rounded[k]))) << k;
    }
  }
  EXPECT_LT(worst, 1e-5);
  EXPECT_LE(worst_ulps, 1);
}

TEST(Lora, BaseAndBasePlusLoraAreTwoModelsOfOneMerge) {
  TempDir tmp;
  std::mt19937 rng(11);
  Adapter adapter;
  adapter.config = lora_config(4, 4, false);
  adapter.modules = {random_module("model.layers.2.mlp.down_proj", 128, 384, 4, rng)};
  write_adapter(tmp / "lora", adapter);
  const std::string base = zoo("base").string();
  // 0.5 W + 0.5 (W + BA) = W + 0.5 BA.
  const merge::MemorySink sink = run_recipe(
      "merge_method: linear\nmodels:\n  - model: " + base + "\n    parameters: {weight: 0.5}\n" +
      "  - model: " + base + "+" + (tmp / "lora").string() + "\n    parameters: {weight: 0.5}\n");
  expect_adapted(sink, adapter.modules, 0.5);
}

TEST(Lora, EmbeddingFanInFanOutPatternsAndModulesToSave) {
  TempDir tmp;
  std::mt19937 rng(5);
  // Embedding LoRA (lora_embedding_A (r, vocab), B (dim, r)), rank and alpha from patterns, and a
  // replaced norm (modules_to_save), in one adapter.
  Adapter adapter;
  adapter.config = lora_config(4, 8, false, {"embed_tokens", "o_proj"});
  adapter.config["rank_pattern"] = {{"model.layers.1.self_attn.o_proj", 2}};
  adapter.config["alpha_pattern"] = {{"o_proj", 6}};
  adapter.config["modules_to_save"] = {"norm"};
  adapter.modules = {random_module("model.embed_tokens", 1024, 128, 4, rng, true),
                     random_module("model.layers.1.self_attn.o_proj", 128, 128, 2, rng),
                     random_module("model.layers.2.self_attn.o_proj", 128, 128, 4, rng)};
  adapter.modules[0].scale = 2.0;
  adapter.modules[1].scale = 6.0 / 2.0;
  adapter.modules[2].scale = 6.0 / 4.0;
  const std::vector<float> norm = random_values(128, 1.0, rng);
  adapter.extra = {{"base_model.model.model.norm.weight", DType::kF32, {128}, norm}};
  write_adapter(tmp / "lora", adapter);
  const merge::MemorySink sink =
      run_recipe(passthrough_recipe(zoo("base").string() + "+" + (tmp / "lora").string()));
  // The norm is replaced, not updated.
  const merge::MemoryTensor& out = sink.at("model.norm.weight");
  for (size_t i = 0; i < norm.size(); ++i) {
    uint16_t got;
    std::memcpy(&got, out.bytes.data() + 2 * i, 2);
    ASSERT_EQ(got, core::f32_to_bf16(norm[i])) << i;
  }
  expect_adapted(sink, adapter.modules, 1.0, {"model.norm.weight"});

  // fan_in_fan_out: the base stores (in, out), the update is (B A)^T.
  Adapter fifo;
  fifo.config = lora_config(3, 3, false, {"q_proj"});
  fifo.config["fan_in_fan_out"] = true;
  fifo.modules = {random_module("model.layers.0.self_attn.q_proj", 128, 128, 3, rng, false, true)};
  write_adapter(tmp / "fifo", fifo);
  expect_adapted(
      run_recipe(passthrough_recipe(zoo("base").string() + "+" + (tmp / "fifo").string())),
      fifo.modules);
}

// ---- refusing bad adapters -----------------------------------------------------------------

struct BadCase {
  const char* name;
  std::function<void(Adapter&, const fs::path&)> spoil;
  const char* message;  // expected in the error
};

TEST(Lora, BadAdaptersAreRefusedWithClearMessages) {
  const BadCase cases[] = {
      {"no config", [](Adapter&, const fs::path& d) { fs::remove(d / "adapter_config.json"); },
       "no adapter_config.json"},
      {"no weights",
       [](Adapter&, const fs::path& d) { fs::remove(d / "adapter_model.safetensors"); },
       "no adapter_model.safetensors"},
      {"missing target",
       [](Adapter& a, const fs::path&) { a.modules[0].module = "model.layers.9.self_attn.q_proj"; },
       "'model.layers.9.self_attn.q_proj.weight', which the base model"},
      {"shape",
       [](Adapter& a, const fs::path&) {
         a.modules[0].cols = 384;
         a.modules[0].a.resize(4 * 384);
       },
       "makes a [128, 384] update of 'model.layers.0.self_attn.q_proj.weight' but the base"},
      {"rank", [](Adapter& a, const fs::path&) { a.config["r"] = 8; },
       "has rank 4 but adapter_config.json gives r = 8"},
      {"dora", [](Adapter& a, const fs::path&) { a.config["use_dora"] = true; }, "DoRA"},
      {"dora tensor",
       [](Adapter& a, const fs::path&) {
         a.extra.push_back(
             {"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
              DType::kF32,
              {128},
              std::vector<float>(128, 1.0f)});
       },
       "DoRA magnitude vector"},
      {"peft type", [](Adapter& a, const fs::path&) { a.config["peft_type"] = "IA3"; },
       "LoRA adapters only"},
      {"not targeted", [](Adapter& a, const fs::path&) { a.config["target_modules"] = {"v_proj"}; },
       "which target_modules"},
      {"A without B",
       [](Adapter& a, const fs::path&) {
         a.extra.push_back({"base_model.model.model.layers.1.mlp.up_proj.lora_A.weight",
                            DType::kF32,
                            {4, 128},
                            std::vector<float>(512, 0.0f)});
       },
       "has no matching lora_B.weight"},
      {"foreign name",
       [](Adapter& a, const fs::path&) {
         a.extra.push_back({"model.layers.0.self_attn.q_proj.weight",
                            DType::kF32,
                            {1},
                            std::vector<float>(1, 0.0f)});
       },
       "is not a PEFT adapter tensor"},
      {"resized vocab",
       [](Adapter& a, const fs::path&) {
         a.extra.push_back({"base_model.model.lm_head.weight",
                            DType::kF32,
                            {1030, 128},
                            std::vector<float>(1030 * 128, 0.0f)});
       },
       "resize the vocabulary"},
      {"layer replication",
       [](Adapter& a, const fs::path&) {
         a.config["layer_replication"] = {{0, 2}, {1, 3}};
       },
       "'layer_replication' is set"},
      {"bad json",
       [](Adapter&, const fs::path& d) {
         testing::write_file(d / "adapter_config.json", "{\"r\": 4,");
       },
       "adapter_config.json"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    TempDir tmp;
    std::mt19937 rng(1);
    Adapter adapter;
    adapter.config = lora_config(4, 8, false);
    adapter.modules = {random_module("model.layers.0.self_attn.q_proj", 128, 128, 4, rng)};
    const fs::path dir = tmp / "lora";
    c.spoil(adapter, dir);  // changes to the description
    write_adapter(dir, adapter);
    c.spoil(adapter, dir);  // changes to the files
    try {
      recipe::plan_from_yaml(passthrough_recipe(zoo("base").string() + "+" + dir.string()),
                             "bad.yaml", {});
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("bad.yaml"), std::string::npos) << e.what();
    }
  }
}

TEST(Lora, MissingSidesOfBasePlusLoraAreNamed) {
  TempDir tmp;
  auto message = [](const std::string& model) {
    try {
      recipe::plan_from_yaml(passthrough_recipe(model), "r.yaml", {});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(message(zoo("base").string() + "+" + (tmp / "nope").string())
                .find("the LoRA adapter directory"),
            std::string::npos);
  EXPECT_NE(message((tmp / "nobase").string() + "+" + tmp.path().string()).find("the base model"),
            std::string::npos);
}

TEST(Lora, CliRefusesBrokenAdapterAndWritesNothing) {
  TempDir tmp;
  std::mt19937 rng(2);
  Adapter adapter;
  adapter.config = lora_config(4, 8, false);
  adapter.modules = {random_module("model.layers.0.self_attn.q_proj", 128, 128, 4, rng)};
  adapter.modules[0].a[17] = NAN;  // headers are fine; the weights are not
  write_adapter(tmp / "lora", adapter);
  testing::write_file(tmp / "r.yaml",
                      passthrough_recipe(zoo("base").string() + "+" + (tmp / "lora").string()));
  const auto r = testing::run_amalgam("merge " + (tmp / "r.yaml").string() + " -o " +
                                      (tmp / "out").string() + " -q");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("lora_A.weight' holds NaN"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(tmp / "out"));
  for (const auto& e : fs::directory_iterator(tmp.path())) {
    EXPECT_EQ(e.path().filename().string().find(".out.tmp"), std::string::npos);
  }
}

TEST(Lora, CliMergeAndGenerateAcceptBasePlusLora) {
  TempDir tmp;
  std::mt19937 rng(4);
  Adapter adapter;
  adapter.config = lora_config(8, 16, false, {"q_proj", "down_proj"});
  for (int l = 0; l < 4; ++l) {
    adapter.modules.push_back(
        random_module(fmt::format("model.layers.{}.self_attn.q_proj", l), 128, 128, 8, rng));
    adapter.modules.push_back(
        random_module(fmt::format("model.layers.{}.mlp.down_proj", l), 128, 384, 8, rng));
  }
  write_adapter(tmp / "lora", adapter);
  const std::string ref = zoo("add-expert").string() + "+" + (tmp / "lora").string();
  testing::write_file(tmp / "r.yaml", passthrough_recipe(ref));
  const auto merged = testing::run_amalgam("merge " + (tmp / "r.yaml").string() + " -o " +
                                           (tmp / "out").string() + " -q");
  ASSERT_EQ(merged.exit_code, 0) << merged.output;
  // The model card names the adapter and hashes its file.
  const std::string card = core::read_text_file(tmp / "out" / "README.md");
  EXPECT_NE(card.find(ref), std::string::npos);
  EXPECT_NE(card.find("adapter_model.safetensors"), std::string::npos);
  // generate on BASE+LORA (applied in RAM) continues exactly as the merged directory.
  const std::string args = " -p '123+456=' -n 8 --json -t 1";
  const auto a = testing::run_amalgam("generate " + ref + args);
  const auto b = testing::run_amalgam("generate " + (tmp / "out").string() + args);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_EQ(a.output, b.output);
  // eval's loader takes it too.
  eval::ModelLoader loader(1);
  EXPECT_NO_THROW(loader.load(ref));
}

// ---- extract-lora --------------------------------------------------------------------------

struct Factored {
  std::vector<double> d;  // W_ft - W_base, (rows, cols)
  int64_t rows = 0, cols = 0;
};

// Differences of the factored linear weights of add-expert vs base, in fp64.
std::map<std::string, Factored> zoo_differences() {
  io::Checkpoint ft(zoo("add-expert")), base(zoo("base"));
  std::map<std::string, Factored> out;
  for (const auto& name : ft.names()) {
    const auto& shape = ft.info(name).shape;
    if (shape.size() != 2 || name.find("layers.") == std::string::npos) continue;
    const std::vector<float> a = decode(ft.view(name)), b = decode(base.view(name));
    Factored f{std::vector<double>(a.size()), shape[0], shape[1]};
    for (size_t i = 0; i < a.size(); ++i) f.d[i] = static_cast<double>(a[i]) - b[i];
    out[name.substr(0, name.size() - 7)] = std::move(f);
  }
  return out;
}

// ||D - B A||_F / ||D||_F per module, B A from the adapter in fp64.
std::map<std::string, double> relative_errors(const fs::path& adapter_dir,
                                              const std::map<std::string, Factored>& diffs) {
  io::SafetensorsFile file((adapter_dir / "adapter_model.safetensors").string());
  std::map<std::string, double> out;
  for (const auto& [module, f] : diffs) {
    const io::TensorInfo* a = file.find("base_model.model." + module + ".lora_A.weight");
    const io::TensorInfo* b = file.find("base_model.model." + module + ".lora_B.weight");
    if (!a || !b) {
      ADD_FAILURE() << module << " missing from the adapter";
      continue;
    }
    const int64_t r = a->shape[0];
    EXPECT_EQ(a->shape, (tensor::Shape{r, f.cols}));
    EXPECT_EQ(b->shape, (tensor::Shape{f.rows, r}));
    const std::vector<float> av = decode(file.view(*a)), bv = decode(file.view(*b));
    double err = 0, norm = 0;
    for (int64_t i = 0; i < f.rows; ++i) {
      for (int64_t j = 0; j < f.cols; ++j) {
        double ba = 0;
        for (int64_t k = 0; k < r; ++k)
          ba += static_cast<double>(bv[i * r + k]) * av[k * f.cols + j];
        const double d = f.d[i * f.cols + j];
        err += (d - ba) * (d - ba);
        norm += d * d;
      }
    }
    out[module] = std::sqrt(err / norm);
  }
  return out;
}

// Singular values of D by an fp64 Jacobi SVD (not the BDCSVD the extractor uses).
Eigen::VectorXd singular_values(const Factored& f) {
  Eigen::MatrixXd m(f.rows, f.cols);
  for (int64_t i = 0; i < f.rows; ++i) {
    for (int64_t j = 0; j < f.cols; ++j) m(i, j) = f.d[i * f.cols + j];
  }
  return Eigen::JacobiSVD<Eigen::MatrixXd>(m).singularValues();
}

merge::ExtractLoraOptions quiet_options() {
  merge::ExtractLoraOptions o;
  o.progress = false;
  o.threads = 2;
  return o;
}

TEST(ExtractLora, ErrorFollowsEckartYoungAndVanishesAtFullRank) {
  TempDir tmp;
  const auto diffs = zoo_differences();
  ASSERT_EQ(diffs.size(), 28u);
  std::map<std::string, Eigen::VectorXd> sv;
  for (const auto& [m, f] : diffs) sv[m] = singular_values(f);
  std::map<std::string, double> previous;
  int64_t previous_rank = 0;
  for (int64_t rank : {4, 16, 64, 128}) {
    SCOPED_TRACE(rank);
    merge::ExtractLoraOptions o = quiet_options();
    o.max_rank = rank;
    o.dtype = DType::kF32;
    const fs::path out = tmp / fmt::format("r{}", rank);
    const auto stats = merge::extract_lora(zoo("add-expert"), zoo("base"), out, o);
    EXPECT_EQ(stats.modules.size(), 28u);
    EXPECT_EQ(stats.max_rank, rank);
    const auto errors = relative_errors(out, diffs);
    for (const auto& [module, err] : errors) {
      const Eigen::VectorXd& s = sv[module];
      double tail = 0, total = s.squaredNorm();
      for (Eigen::Index k = rank; k < s.size(); ++k) tail += s[k] * s[k];
      const double optimum = std::sqrt(tail / total);
      if (rank >= std::min(diffs.at(module).rows, diffs.at(module).cols)) {
        EXPECT_LT(err, 1e-5) << module;  // full rank: D itself, up to fp32 SVD rounding
      } else {
        EXPECT_NEAR(err, optimum, 1e-4 + 1e-3 * optimum) << module;
      }
      const bool was_full = previous_rank >= std::min(diffs.at(module).rows, diffs.at(module).cols);
      if (previous.count(module) && !was_full) {
        EXPECT_LT(err, previous[module]) << module;
      }
      previous[module] = err;
    }
    previous_rank = rank;
  }
  // The PEFT files.
  const nlohmann::json config = core::read_json_file(tmp / "r16" / "adapter_config.json");
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["task_type"], "CAUSAL_LM");
  EXPECT_EQ(config["r"], 16);
  EXPECT_EQ(config["lora_alpha"], 16);
  EXPECT_EQ(config["base_model_name_or_path"], zoo("base").string());
  EXPECT_EQ(config["target_modules"], nlohmann::json({"down_proj", "gate_proj", "k_proj", "o_proj",
                                                      "q_proj", "up_proj", "v_proj"}));
  for (const char* saved : {"embed_tokens", "lm_head", "input_layernorm", "norm"}) {
    EXPECT_NE(std::find(config["modules_to_save"].begin(), config["modules_to_save"].end(), saved),
              config["modules_to_save"].end())
        << saved;
  }
  // k_proj / v_proj are 64 x 128: at rank 128 they keep their full rank 64 (rank_pattern).
  const nlohmann::json full = core::read_json_file(tmp / "r128" / "adapter_config.json");
  EXPECT_EQ(full["rank_pattern"]["model.layers.0.self_attn.k_proj"], 64);
  EXPECT_EQ(full["alpha_pattern"]["model.layers.0.self_attn.k_proj"], 64);
  EXPECT_FALSE(full["rank_pattern"].contains("model.layers.0.self_attn.q_proj"));
}

TEST(ExtractLora, RankByEnergyKeepsTheSmallestSufficientRank) {
  TempDir tmp;
  const auto diffs = zoo_differences();
  merge::ExtractLoraOptions o = quiet_options();
  o.energy = 0.9;
  const auto stats = merge::extract_lora(zoo("add-expert"), zoo("base"), tmp / "out", o);
  ASSERT_EQ(stats.modules.size(), 28u);
  for (const auto& m : stats.modules) {
    const Eigen::VectorXd s = singular_values(diffs.at(m.module));
    const double total = s.squaredNorm();
    int64_t want = 0;
    double kept = 0;
    while (kept < 0.9 * total) kept += s[want] * s[want], ++want;
    EXPECT_EQ(m.rank, want) << m.module;
    EXPECT_GE(m.kept_energy, 0.9);
  }
  // The adapter loads back: rank_pattern gives each module its own rank.
  io::LoraAdapter adapter(tmp / "out");
  adapter.check_base(io::Checkpoint(zoo("base")));
  for (const auto& m : stats.modules) {
    const io::LoraTensor* t = adapter.find(m.module + ".weight");
    ASSERT_NE(t, nullptr) << m.module;
    EXPECT_EQ(t->rank, m.rank);
    EXPECT_DOUBLE_EQ(t->scale, 1.0);
  }
}

TEST(ExtractLora, BasePlusFullRankAdapterIsTheFineTune) {
  TempDir tmp;
  io::Checkpoint ft(zoo("add-expert")), base(zoo("base"));
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(tensor::dtype_name(dtype));
    merge::ExtractLoraOptions o = quiet_options();
    o.max_rank = 128;
    o.dtype = dtype;
    const fs::path out = tmp / std::string(tensor::dtype_name(dtype));
    merge::extract_lora(zoo("add-expert"), zoo("base"), out, o);
    const merge::MemorySink sink =
        run_recipe(passthrough_recipe(zoo("base").string() + "+" + out.string()));
    size_t differ = 0, total = 0;
    double worst = 0;  // largest |got - want| / max|D| over a tensor
    double err2 = 0, diff2 = 0;
    for (const auto& name : ft.names()) {
      const merge::MemoryTensor& got = sink.at(name);
      ASSERT_EQ(got.bytes.size(), ft.view(name).nbytes()) << name;
      const std::vector<float> g = decode(got.view()), w = decode(ft.view(name)),
                               b = decode(base.view(name));
      double max_d = 0;
      for (size_t i = 0; i < w.size(); ++i) max_d = std::max(max_d, std::fabs(double(w[i]) - b[i]));
      for (size_t i = 0; i < w.size(); ++i) {
        const double e = double(g[i]) - w[i], d = double(w[i]) - b[i];
        differ += g[i] != w[i];
        if (max_d > 0) worst = std::max(worst, std::fabs(e) / max_d);
        err2 += e * e;
        diff2 += d * d;
        ++total;
      }
    }
    const double relative = std::sqrt(err2 / diff2);
    std::printf(
        "[ figures  ] %s factors, full rank: %zu of %zu weights differ from add-expert; "
        "|error| <= %.2e max|D|; ||error|| / ||D|| = %.2e\n",
        std::string(tensor::dtype_name(dtype)).c_str(), differ, total, worst, relative);
    if (dtype == DType::kF32) {
      // fp32 factors: the fine-tune's bf16 weights come back, but for a few weights near zero,
      // where the SVD's fp32 rounding is larger than the bf16 spacing.
      EXPECT_LT(differ, total / 1000);
      EXPECT_LT(worst, 1e-5);
    } else {
      // bf16 factors (the default, as mergekit): each factor carries bf16's 8 bits.
      EXPECT_LT(relative, 3e-3);
      EXPECT_LT(worst, 3e-2);
    }
  }
}

TEST(ExtractLora, CliWritesPeftFilesAtomically) {
  TempDir tmp;
  const auto ok =
      testing::run_amalgam("-q extract-lora --model " + zoo("add-expert").string() + " --base " +
                           zoo("base").string() + " -o " + (tmp / "out").string() + " --rank 8");
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors", "README.md"}) {
    EXPECT_TRUE(fs::exists(tmp / "out" / f)) << f;
  }
  io::SafetensorsFile file((tmp / "out" / "adapter_model.safetensors").string());
  const io::TensorInfo* a =
      file.find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::kBF16);  // the fine-tune's
  EXPECT_EQ(a->shape, (tensor::Shape{8, 128}));
  EXPECT_NE(file.find("base_model.model.lm_head.weight"), nullptr);
  // mergekit's option names; an existing output is kept without --force.
  const auto again = testing::run_amalgam("-q extract-lora --model " + zoo("add-expert").string() +
                                          " --base-model " + zoo("base").string() + " --out-path " +
                                          (tmp / "out").string() + " --max-rank 4");
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.output.find("--force"), std::string::npos) << again.output;
  const auto bad =
      testing::run_amalgam("-q extract-lora --model " + zoo("add-expert").string() + " --base " +
                           zoo("base-large").string() + " -o " + (tmp / "bad").string());
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("not the same architecture"), std::string::npos) << bad.output;
  EXPECT_FALSE(fs::exists(tmp / "bad"));
}

}  // namespace
}  // namespace amalgam
