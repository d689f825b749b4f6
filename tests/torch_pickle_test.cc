// pytorch_model.bin input: torch.save zip archives read through the restricted unpickler.
// Fixtures are written at test time by tests/data/make_torch_bin.py from the zoo's base model
// (with the opcodes and ZIP layout torch.save produces), so every tensor can be compared byte for
// byte with the safetensors file it came from; hostile variants must be refused.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "io/safetensors.h"
#include "io/torch_pickle.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::q;
using testing::run_amalgam;
using testing::TempDir;
using testing::zoo;

bool have_python() {
  static const bool found = std::system("command -v python3 >/dev/null 2>&1") == 0;
  return found;
}

// Fixture directories, written by one run of the generator per call for those not made yet in
// this test process.
std::vector<fs::path> fixtures(const std::vector<std::string>& variants) {
  static TempDir dir;
  static std::set<std::string> made;
  std::string missing;
  for (const auto& v : variants) {
    if (made.insert(v).second) missing += " " + v;
  }
  if (!missing.empty()) {
    const std::string cmd =
        fmt::format("python3 {} {} {}{}", q(testing::source_dir() / "tests/data/make_torch_bin.py"),
                    q(zoo("base")), q(dir.path()), missing);
    if (std::system(cmd.c_str()) != 0) ADD_FAILURE() << "fixture generation failed: " << cmd;
  }
  std::vector<fs::path> out;
  for (const auto& v : variants) out.push_back(dir / v);
  return out;
}
fs::path fixture(const std::string& variant) { return fixtures({variant})[0]; }

// The fixtures need python3: skip, saying so, where it is missing.
#define REQUIRE_PYTHON()                                                          \
  do {                                                                            \
    if (!have_python()) {                                                         \
      GTEST_SKIP() << "python3 is not installed: the pytorch_model.bin fixtures " \
                      "are written by tests/data/make_torch_bin.py";              \
    }                                                                             \
  } while (0)

// Every tensor of `ckpt` equals the zoo safetensors one: names, dtype, shape and bytes.
void expect_same_tensors(const io::Checkpoint& ckpt) {
  io::Checkpoint reference(zoo("base"));
  ASSERT_EQ(ckpt.names(), reference.names());
  for (const auto& name : reference.names()) {
    const tensor::TensorView a = ckpt.view(name);
    const tensor::TensorView b = reference.view(name);
    ASSERT_EQ(a.dtype, b.dtype) << name;
    ASSERT_EQ(a.shape, b.shape) << name;
    ASSERT_EQ(std::memcmp(a.data, b.data, b.nbytes()), 0) << name;
  }
}

TEST(TorchBin, SingleFileEqualsSafetensorsByteForByte) {
  REQUIRE_PYTHON();
  const fs::path dir = fixture("bin");
  io::Checkpoint ckpt(dir);
  ASSERT_EQ(ckpt.shards().size(), 1u);
  EXPECT_EQ(fs::path(ckpt.shards()[0]->path()).filename(), "pytorch_model.bin");
  expect_same_tensors(ckpt);
  // Zero-copy: views point into the mapped archive, at torch's 64-byte record alignment.
  const auto& info = ckpt.info("model.norm.weight");
  EXPECT_EQ(info.begin % 64, 0u);
  EXPECT_EQ(ckpt.load_f32("model.norm.weight").data,
            io::Checkpoint(zoo("base")).load_f32("model.norm.weight").data);
  // The .bin file itself, as a single-file checkpoint.
  expect_same_tensors(io::Checkpoint(dir / "pytorch_model.bin"));
}

TEST(TorchBin, OrderedDictWithMetadataAndSharedStorages) {
  REQUIRE_PYTHON();
  io::Checkpoint ckpt(fixture("bin-ordered"));
  expect_same_tensors(ckpt);
  // k, q and v of a layer are views into one storage, one after another.
  const auto& q_proj = ckpt.info("model.layers.1.self_attn.q_proj.weight");
  const auto& k_proj = ckpt.info("model.layers.1.self_attn.k_proj.weight");
  const auto& v_proj = ckpt.info("model.layers.1.self_attn.v_proj.weight");
  EXPECT_EQ(k_proj.end, q_proj.begin);
  EXPECT_EQ(q_proj.end, v_proj.begin);
}

TEST(TorchBin, ShardedWithIndex) {
  REQUIRE_PYTHON();
  io::Checkpoint ckpt(fixture("bin-sharded"));
  EXPECT_EQ(ckpt.shards().size(), 2u);
  expect_same_tensors(ckpt);
}

TEST(TorchBin, WrappedStateDictProtocol4) {
  REQUIRE_PYTHON();
  expect_same_tensors(io::Checkpoint(fixture("bin-wrapped")));
}

TEST(TorchBin, Float8ThroughRebuildTensorV3AndParameters) {
  REQUIRE_PYTHON();
  io::Checkpoint ckpt(fixture("extra"));
  ASSERT_EQ(ckpt.names(), (std::vector<std::string>{"f8", "param"}));
  const tensor::TensorView f8 = ckpt.view("f8");
  EXPECT_EQ(f8.dtype, tensor::DType::kF8E4M3);
  EXPECT_EQ(f8.shape, (tensor::Shape{4, 8}));
  // The storage holds bytes 0, 4, 8, ...; the tensor starts at element 16.
  for (int i = 0; i < 32; ++i) EXPECT_EQ(f8.data[i], (16 + i) * 4) << i;
  const tensor::TensorView param = ckpt.view("param");
  EXPECT_EQ(param.dtype, tensor::DType::kBF16);
  EXPECT_EQ(param.shape, (tensor::Shape{2, 4}));
  for (int i = 0; i < 16; ++i) EXPECT_EQ(param.data[i], i);
}

TEST(TorchBin, SafetensorsWinWhenBothExist) {
  REQUIRE_PYTHON();
  TempDir dir;
  const fs::path m = dir / "m";
  fs::create_directories(m);
  fs::copy_file(zoo("base") / "model.safetensors", m / "model.safetensors");
  // A hostile .bin beside it is never opened.
  fs::copy_file(fixture("evil-os-system") / "pytorch_model.bin", m / "pytorch_model.bin");
  io::Checkpoint ckpt(m);
  EXPECT_EQ(fs::path(ckpt.shards()[0]->path()).filename(), "model.safetensors");
}

struct Hostile {
  const char* variant;
  std::vector<std::string> message;  // parts the error must contain, beside the file name
};

const Hostile kHostile[] = {
    {"evil-os-system", {"os.system", "refused"}},
    {"evil-eval", {"builtins.eval", "refused"}},
    {"bad-opcode", {"EMPTY_SET", "not allowed"}},
    {"truncated", {"end-of-central-directory", "truncated"}},
    {"offset-past-end", {"model.norm.weight", "[1, 129)", "outside its storage"}},
    {"wrong-storage-size", {"model.norm.weight", "declared as 512 bytes", "holds 256"}},
    {"zip-offset", {"data/0", "no local header"}},
    {"noncontiguous", {"model.layers.0.mlp.down_proj.weight", "not contiguous"}},
    {"compressed", {"compressed"}},
    {"legacy", {"legacy torch.save format", "re-save"}},
};

TEST(TorchBin, HostileFilesAreRefusedNamingTheFileAndTheProblem) {
  REQUIRE_PYTHON();
  std::vector<std::string> variants;
  for (const auto& h : kHostile) variants.push_back(h.variant);
  fixtures(variants);
  for (const auto& h : kHostile) {
    const fs::path file = fixture(h.variant) / "pytorch_model.bin";
    try {
      io::Checkpoint ckpt(fixture(h.variant));
      ADD_FAILURE() << h.variant << " was accepted";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(file.string()), std::string::npos) << h.variant << ": " << what;
      for (const auto& part : h.message) {
        EXPECT_NE(what.find(part), std::string::npos) << h.variant << ": " << what;
      }
    }
  }
}

TEST(TorchBin, MaliciousPicklesRunNothing) {
  REQUIRE_PYTHON();
  for (const char* variant : {"evil-os-system", "evil-eval"}) {
    const fs::path dir = fixture(variant);
    // The fixture really carries the dangerous global (a naive unpickler would run it).
    const std::string bytes = core::read_text_file(dir / "pytorch_model.bin");
    EXPECT_TRUE(bytes.find("cos\nsystem\n") != std::string::npos ||
                bytes.find("cbuiltins\neval\n") != std::string::npos);
    auto r = run_amalgam("inspect " + q(dir));
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("pytorch_model.bin"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(dir / "PWNED"));
  }
}

// Hand-written pickles for the machine's own checks.
std::string unicode(const std::string& s) {  // BINUNICODE
  const uint32_t n = static_cast<uint32_t>(s.size());
  std::string out = "X";
  out.append(reinterpret_cast<const char*>(&n), 4);
  return out + s;
}

std::string run_pickle(const std::string& bytes) {
  try {
    io::unpickle_state_dict({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()},
                            "test.pkl");
    return "accepted";
  } catch (const Error& e) {
    return e.what();
  }
}

TEST(TorchPickle, RefusesMalformedStreams) {
  using std::string_literals::operator""s;
  const std::string head = "\x80\x02";
  EXPECT_EQ(run_pickle(head + "}q\x00."s), "accepted");
  EXPECT_NE(run_pickle(head + ".").find("stack underflow"), std::string::npos);
  EXPECT_NE(run_pickle(head + "}").find("ends in the middle"), std::string::npos);
  EXPECT_NE(run_pickle(head + "h\x07.").find("memo key missing"), std::string::npos);
  EXPECT_NE(run_pickle(head + ").").find("a tuple, not a state dict"), std::string::npos);
  EXPECT_NE(run_pickle("\x80\x01}.").find("protocol 1"), std::string::npos);
  EXPECT_NE(run_pickle(head + "cposix\nsystem\n.").find("'posix.system'"), std::string::npos);
  EXPECT_NE(run_pickle(head + "ctorch\nComplexFloatStorage\n.").find("not a tensor storage class"),
            std::string::npos);
  // INST imports and calls in one opcode.
  EXPECT_NE(run_pickle(head + "(ios\nsystem\n" + unicode("ls") + ".").find("INST"),
            std::string::npos);
  // A persistent id whose storage class is no storage class.
  const std::string pid =
      std::string("(") + unicode("storage") + "K\x01" + unicode("0") + unicode("cpu") + "K\x01tQ";
  EXPECT_NE(run_pickle(head + "}" + unicode("a") + pid + "s.").find("no torch storage class"),
            std::string::npos);
  // A state dict entry that is no tensor.
  EXPECT_NE(run_pickle(head + "}" + unicode("a") + "K\x01s.").find("'a' holds a int"),
            std::string::npos);
}

// --- the CLI ----------------------------------------------------------------------------------

std::string linear_recipe(const fs::path& a, const fs::path& b) {
  return fmt::format(
      "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 0.7}}\n  - model: "
      "{}\n    parameters: {{weight: 0.3}}\n",
      a.string(), b.string());
}

TEST(TorchBinCli, InspectReadsBinModels) {
  REQUIRE_PYTHON();
  auto bin = run_amalgam("inspect --summary " + q(fixture("bin-sharded")));
  ASSERT_EQ(bin.exit_code, 0) << bin.output;
  EXPECT_NE(bin.output.find("pytorch_model-00001-of-00002.bin"), std::string::npos) << bin.output;
  auto st = run_amalgam("inspect --summary " + q(zoo("base")));
  ASSERT_EQ(st.exit_code, 0) << st.output;
  auto line = [](const std::string& out, const std::string& key) {
    const size_t at = out.find(key);
    return at == std::string::npos ? "" : out.substr(at, out.find('\n', at) - at);
  };
  EXPECT_EQ(line(bin.output, "parameters"), line(st.output, "parameters"));
  EXPECT_EQ(line(bin.output, "tensors "), line(st.output, "tensors "));
}

TEST(TorchBinCli, LinearMergeOverBinModelsEqualsTheSafetensorsMerge) {
  REQUIRE_PYTHON();
  TempDir dir;
  testing::write_file(dir / "st.yaml", linear_recipe(zoo("base"), zoo("add-expert")));
  testing::write_file(dir / "bin.yaml", linear_recipe(fixture("bin-sharded"), zoo("add-expert")));
  for (const char* name : {"st", "bin"}) {
    auto r = run_amalgam(fmt::format("merge {} -o {} --quiet",
                                     q(dir / (std::string(name) + ".yaml")), q(dir / name)));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  EXPECT_EQ(core::read_text_file(dir / "bin" / "model.safetensors"),
            core::read_text_file(dir / "st" / "model.safetensors"));
}

TEST(TorchBinCli, GenerateRunsABinModel) {
  REQUIRE_PYTHON();
  const std::string args = " -p '589+276=' -n 8 --json -t 1";
  auto bin = run_amalgam("generate " + q(fixture("bin")) + args);
  auto st = run_amalgam("generate " + q(zoo("base")) + args);
  ASSERT_EQ(bin.exit_code, 0) << bin.output;
  EXPECT_EQ(bin.output, st.output);
}

TEST(TorchBinCli, HostileModelFailsTheMergeWithoutOutput) {
  REQUIRE_PYTHON();
  for (const char* variant : {"evil-os-system", "truncated", "wrong-storage-size"}) {
    TempDir dir;
    testing::write_file(dir / "r.yaml", linear_recipe(zoo("base"), fixture(variant)));
    auto r = run_amalgam(fmt::format("merge {} -o {} --quiet", q(dir / "r.yaml"), q(dir / "out")));
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find(variant + std::string("/pytorch_model.bin")), std::string::npos)
        << r.output;
    EXPECT_FALSE(fs::exists(dir / "out"));
    for (const auto& e : fs::directory_iterator(dir.path())) {
      EXPECT_EQ(e.path().filename().string().find(".out.tmp-"), std::string::npos) << e.path();
    }
    EXPECT_FALSE(fs::exists(fixture(variant) / "PWNED"));
  }
}

}  // namespace
}  // namespace amalgam
