// Tokenizer tests. References are independent of src/tokenizer:
//  - hand-written fixtures (tests/data/tokenizers) with tiny vocabs whose expected ids are derived
//    by hand from the merges (byte-level fixtures give byte b the id b, so unmerged bytes read
//    off);
//  - split expectations produced by Hugging Face tokenizers itself (its Rust unit tests, and the
//    regex-split oracle that tokenizers.js generated with tokenizers 0.21.1);
//  - for the zoo tokenizer over all of heldout.txt, scripts/reference_tokenize.py, a separate
//    implementation (hand-written GPT-2 pattern scanner + GPT-2's original bpe() loop).
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "core/interrupt.h"
#include "core/sha256.h"
#include "test_util.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace amalgam::tokenizer {
namespace {

using Ids = std::vector<int32_t>;
using testing::source_dir;
using testing::TempDir;
using testing::zoo;

std::string fixture_text(const std::string& name) {
  return core::read_text_file(source_dir() / "tests" / "data" / "tokenizers" / name);
}

Tokenizer fixture(const std::string& name) {
  return Tokenizer::from_json(fixture_text(name), name);
}

// The fixture with some top-level fields replaced.
Tokenizer patched(const std::string& name, const std::function<void(nlohmann::json&)>& patch) {
  auto j = nlohmann::json::parse(fixture_text(name));
  patch(j);
  return Tokenizer::from_json(j.dump(), name + " (patched)");
}

std::vector<std::string> split_with(const nlohmann::json& pre_tokenizer, const std::string& text) {
  auto pre = parse_pre_tokenizer(pre_tokenizer, "test");
  std::vector<Piece> pieces{{text, true}};
  pre->pre_tokenize(pieces);
  std::vector<std::string> out;
  for (const auto& p : pieces) out.push_back(p.text);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Zoo tokenizer: byte-level BPE, Sequence[Digits(individual), ByteLevel(use_regex)], "<s>" first.

class ZooTokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { tok_ = new Tokenizer(Tokenizer::from_directory(zoo("base"))); }
  static void TearDownTestSuite() { delete tok_; }
  static Tokenizer* tok_;
};
Tokenizer* ZooTokenizer::tok_ = nullptr;

TEST_F(ZooTokenizer, VocabAndSpecialTokens) {
  const Tokenizer& t = *tok_;
  EXPECT_EQ(t.vocab_size(), 1024);
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_TRUE(t.add_bos());
  EXPECT_EQ(t.piece(0), "<s>");
  EXPECT_EQ(t.piece(223), "Ġ");
  EXPECT_EQ(t.token_id("</s>"), 1);
  EXPECT_EQ(t.token_id("no such token"), std::nullopt);
  EXPECT_TRUE(t.is_special(2));
  EXPECT_FALSE(t.is_special(223));
  EXPECT_THROW(t.piece(1024), Error);
}

TEST_F(ZooTokenizer, HandDerivedCases) {
  const Tokenizer& t = *tok_;
  auto id = [&](const char* piece) { return *t.token_id(piece); };
  // Digits are split off one by one before the byte-level regex, so " 12" is "Ġ", "1", "2".
  EXPECT_EQ(t.encode("x 12", false), (Ids{id("x"), id("Ġ"), id("1"), id("2")}));
  // BOS from the post-processor; "<s>" and "</s>" in the text are special tokens, split out.
  EXPECT_EQ(t.encode("<s>x</s>"), (Ids{0, 0, id("x"), 1}));
  EXPECT_EQ(t.encode(""), (Ids{0}));
  EXPECT_EQ(t.encode("", false), Ids{});
  // " x" is one pre-token, and the merge (Ġ, x) exists.
  EXPECT_EQ(t.encode(" x", false), (Ids{id("Ġx")}));
  // "é" is C3 A9; there is no merge of "Ã" and "©".
  EXPECT_EQ(t.encode("é", false), (Ids{id("Ã"), id("©")}));
  // Two spaces before a word: \s+(?!\S) keeps one space apart.
  EXPECT_EQ(t.encode("  x", false), (Ids{id("Ġ"), id("Ġx")}));
}

TEST_F(ZooTokenizer, RoundTrips) {
  const Tokenizer& t = *tok_;
  for (std::string text :
       {"Hello, world!", "  leading and trailing  ", "tabs\tand\nnew\n\nlines\r\n",
        "digits 0123456789 and 3.14159", "accents: café, naïve, Ångström", "CJK: 中文字符, 日本語",
        "emoji: 🙂👍🏽", "mixed <s> special </s> <pad>", "don't can't I'm we'll", "   ", "\n",
        "x", "def f(x):\n    return x**2\n"}) {
    EXPECT_EQ(t.decode(t.encode(text, false), false), text) << text;
    EXPECT_EQ(t.decode(t.encode(text), false), "<s>" + text) << text;
  }
  // Special tokens are dropped by default.
  EXPECT_EQ(t.decode(t.encode("a<s>b</s> c")), "ab c");
}

TEST_F(ZooTokenizer, HeldoutMatchesIndependentReference) {
  const Tokenizer& t = *tok_;
  std::string text = core::read_text_file(zoo("eval") / "heldout.txt");
  Ids ids = t.encode(text);
  // From: scripts/reference_tokenize.py data/zoo/base/tokenizer.json data/zoo/eval/heldout.txt
  EXPECT_EQ(ids.size(), 71882u);
  std::string joined;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) joined += ',';
    joined += std::to_string(ids[i]);
  }
  EXPECT_EQ(core::sha256_hex(reinterpret_cast<const uint8_t*>(joined.data()), joined.size()),
            "0d62ca1a593c06fd7ebe7892a0c2b7393117d3d38878917bf4a693e933f3e14d");
  EXPECT_EQ(t.decode(ids), text);
}

TEST_F(ZooTokenizer, RejectsInvalidUtf8) {
  EXPECT_THROW(tok_->encode("ab\xC3(", false), Error);
  // Decoding a lone continuation byte gives U+FFFD, as Hugging Face does.
  EXPECT_EQ(tok_->decode(Ids{*tok_->token_id("©")}), "\xEF\xBF\xBD");
}

// Ctrl-C while a long text is encoded: the encoder stops with "interrupted" instead of finishing
// (perplexity on a large corpus spends minutes here). In a child process, whose interrupt flag
// stays set.
TEST_F(ZooTokenizer, EncodingStopsWhenInterrupted) {
  std::string text;
  for (int i = 0; i < 20000; ++i) text += "word" + std::to_string(i) + " ";
  ASSERT_GT(tok_->encode(text, false).size(), 4096u);
  EXPECT_EXIT(
      {
        core::install_interrupt_handler();
        std::raise(SIGINT);
        try {
          tok_->encode(text, false);
        } catch (const Error& e) {
          std::_Exit(std::string(e.what()).find("interrupted") != std::string::npos ? 7 : 8);
        }
        std::_Exit(9);
      },
      ::testing::ExitedWithCode(7), "");
}

// ---------------------------------------------------------------------------------------------
// Llama-3 kind: Split(Llama-3 regex) + ByteLevel(no regex), ignore_merges, BOS 270.
// Vocab: byte b has id b; 256 Ġt, 257 he, 258 Ġthe, 259 's, 260 in, 261 ĠĠ, 262 ca, 263 cat,
// 264 Ġcat, 265 ĊĊ, 266 "20", 267 Ġdog (no merge makes it); added 270-272 special, 273 <mask>.

TEST(Llama3Like, HandDerivedIds) {
  auto t = fixture("llama3_like.json");
  // "the" -> t + he (no merge "t he"); " cat" is in the vocab; "'s" is split off.
  EXPECT_EQ(t.encode("the cat's"), (Ids{270, 't', 257, 264, 259}));
  // Two spaces before a word: " " then " the" (\s+(?!\S)).
  EXPECT_EQ(t.encode("  the", false), (Ids{' ', 258}));
  EXPECT_EQ(t.encode("a  the", false), (Ids{'a', ' ', 258}));
  // Spaces then a newline are one pre-token: ĠĠ (leftmost of two equal-rank pairs), Ġ, Ċ.
  EXPECT_EQ(t.encode("the   \n", false), (Ids{'t', 257, 261, ' ', '\n'}));
  // Contractions are case-insensitive: "'S" is its own pre-token (but not in the vocab).
  EXPECT_EQ(t.encode("THE'S", false), (Ids{'T', 'H', 'E', '\'', 'S'}));
  EXPECT_EQ(t.encode("don't", false), (Ids{'d', 'o', 'n', '\'', 't'}));
  // Numbers in runs of at most three digits: "202" + "4", and "20" merges inside "202".
  EXPECT_EQ(t.encode("2024", false), (Ids{266, '2', '4'}));
  EXPECT_EQ(t.encode("12345", false), (Ids{'1', '2', '3', '4', '5'}));
  // Newlines: "\n\n" is one pre-token that merges.
  EXPECT_EQ(t.encode("a\n\nb", false), (Ids{'a', 265, 'b'}));
  // Non-ASCII falls back to its bytes (é = C3 A9).
  EXPECT_EQ(t.encode("é", false), (Ids{0xC3, 0xA9}));
  // ignore_merges: " dog" is a vocab entry, emitted whole although no merge makes it.
  EXPECT_EQ(t.encode(" dog", false), (Ids{267}));
}

TEST(Llama3Like, WithoutIgnoreMergesTheWordIsMerged) {
  auto t = patched("llama3_like.json", [](auto& j) { j["model"]["ignore_merges"] = false; });
  EXPECT_EQ(t.encode(" dog", false), (Ids{' ', 'd', 'o', 'g'}));
  EXPECT_EQ(t.encode(" cat", false), (Ids{264}));  // reached through the merges
}

TEST(Llama3Like, SpecialAndAddedTokens) {
  auto t = fixture("llama3_like.json");
  EXPECT_EQ(t.encode("<|begin_of_text|>the<|eot_id|>", false), (Ids{270, 't', 257, 272}));
  // <mask> has lstrip and rstrip: it swallows the spaces on both sides.
  EXPECT_EQ(t.encode("a <mask> b", false), (Ids{'a', 273, 'b'}));
  EXPECT_EQ(t.encode("a<mask>\t\tb", false), (Ids{'a', 273, 'b'}));
  // A special token inside a word is still split out.
  EXPECT_EQ(t.encode("in<|eot_id|>in", false), (Ids{260, 272, 260}));
  EXPECT_EQ(t.bos_id(), 270);
  EXPECT_EQ(t.eos_id(), 271);
  EXPECT_TRUE(t.add_bos());
  EXPECT_EQ(t.vocab_size(), 274);
  EXPECT_EQ(t.decode(Ids{270, 't', 257, 272}), "the");
  EXPECT_EQ(t.decode(Ids{270, 't', 257, 272}, false), "<|begin_of_text|>the<|eot_id|>");
  EXPECT_EQ(t.decode(Ids{'a', 273, 'b'}), "a<mask>b");  // stripped spaces are gone
}

TEST(Llama3Like, RoundTrips) {
  auto t = fixture("llama3_like.json");
  for (std::string text : {"the cat's hat", "  two  spaces  ", "line\r\nbreaks\n\n\n", "I'M HERE",
                           "numbers 1234567 and 3.5", "中文 and emoji 🙂", "tab\there"}) {
    EXPECT_EQ(t.decode(t.encode(text)), text) << text;
  }
}

// ---------------------------------------------------------------------------------------------
// Qwen2 kind: NFC + Split(Qwen2 regex, single digits) + ByteLevel; no BOS. Merges in the legacy
// "a b" form: 256 Ã©, 257 ca, 258 caf, 259 cafÃ© (café), 260 ĠĠ, 261 Ġw. Added 300-302.

TEST(Qwen2Like, HandDerivedIds) {
  auto t = fixture("qwen2_like.json");
  // Single digits (\p{N}, not \p{N}{1,3}).
  EXPECT_EQ(t.encode("2024"), (Ids{'2', '0', '2', '4'}));
  // "é" (C3 A9) merges first (rank 0), then c+a, ca+f, caf+é.
  EXPECT_EQ(t.encode("café"), (Ids{259}));
  // NFC: e + U+0301 COMBINING ACUTE composes to é before splitting.
  EXPECT_EQ(t.encode("cafe\xCC\x81"), (Ids{259}));
  EXPECT_EQ(t.encode("Hello  world"), (Ids{'H', 'e', 'l', 'l', 'o', ' ', 261, 'o', 'r', 'l', 'd'}));
  EXPECT_EQ(t.encode("<|im_start|>user\nhi<|im_end|>"),
            (Ids{301, 'u', 's', 'e', 'r', '\n', 'h', 'i', 302}));
  // Three spaces before a word: "ĠĠ" then "Ġw".
  EXPECT_EQ(t.encode("   w"), (Ids{260, 261}));
  EXPECT_FALSE(t.add_bos());
  EXPECT_EQ(t.bos_id(), std::nullopt);
  EXPECT_EQ(t.eos_id(), 300);
  EXPECT_EQ(t.decode(t.encode("cafe\xCC\x81 2024")), "café 2024");  // NFC form comes back
}

TEST(Qwen2Like, TokenizerConfigGivesBosAndEos) {
  TempDir dir;
  testing::write_file(dir / "tokenizer.json", fixture_text("qwen2_like.json"));
  testing::write_file(dir / "tokenizer_config.json",
                      R"({"bos_token": null, "eos_token": "<|im_end|>", "pad_token": null})");
  auto t = Tokenizer::from_directory(dir.path());
  EXPECT_EQ(t.bos_id(), std::nullopt);
  EXPECT_EQ(t.eos_id(), 302);
  testing::write_file(dir / "tokenizer_config.json",
                      R"({"eos_token": {"content": "<|nope|>", "lstrip": false}})");
  EXPECT_THROW(Tokenizer::from_directory(dir.path()), Error);
}

// ---------------------------------------------------------------------------------------------
// Llama-2 kind: normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, byte_fallback,
// <unk> fused, Llama-2 decoder. Ids as in Llama-2: 0 <unk>, 1 <s>, 2 </s>, <0xXX> = 3 + XX;
// 259 ▁, 260 h, 261 e, 262 l, 263 o, 264 w, 265 r, 266 d, 267 ▁h, 268 ll, 269 ell, 270 ▁hell,
// 271 ▁hello, 272 ▁w, 273 or, 274 ▁wor, 275 ld, 276 ▁world.

TEST(Llama2Like, HandDerivedIds) {
  auto t = fixture("llama2_like.json");
  // "▁hello▁world" is one word: merges by rank give ▁hello and ▁world.
  EXPECT_EQ(t.encode("hello world"), (Ids{1, 271, 276}));
  // Two spaces: the second ▁ has no merge with ▁ and stays alone.
  EXPECT_EQ(t.encode("hello  world", false), (Ids{271, 259, 276}));
  // Newline: not in the vocab, so byte fallback <0x0A> = 13; "world" without ▁: w, or, ld.
  EXPECT_EQ(t.encode("hello\nworld", false), (Ids{271, 13, 264, 273, 275}));
  // 中 = E4 B8 AD -> <0xE4> <0xB8> <0xAD>.
  EXPECT_EQ(t.encode("中", false), (Ids{259, 3 + 0xE4, 3 + 0xB8, 3 + 0xAD}));
  // The normalizer runs on each stretch between special tokens, so "▁" comes back after <s>
  // (what Hugging Face's legacy Llama tokenizer gives: "<s>\n" -> 1, 29871, 13).
  EXPECT_EQ(t.encode("<s>\n", false), (Ids{1, 259, 13}));
  EXPECT_EQ(t.encode("<s>hello", false), (Ids{1, 271}));
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
}

TEST(Llama2Like, NormalizedSpecialTokenIsMatchedOnNormalizedText) {
  // With normalized=true, "<s>" is looked for as its normalized form "▁<s>" in the normalized
  // text "▁▁<s>"; the first "▁" stays text. Hugging Face gives " <s>" -> 29871, 1 for Llama-2.
  auto t = patched("llama2_like.json", [](auto& j) { j["added_tokens"][1]["normalized"] = true; });
  EXPECT_EQ(t.encode(" <s>", false), (Ids{259, 1}));
}

TEST(Llama2Like, UnknownCharactersFuseIntoOneUnkWithoutByteFallback) {
  auto t = patched("llama2_like.json", [](auto& j) { j["model"]["byte_fallback"] = false; });
  EXPECT_EQ(t.encode("中文", false), (Ids{259, 0}));
  EXPECT_EQ(t.encode("中h文", false), (Ids{259, 0, 260, 0}));
}

TEST(Llama2Like, Decodes) {
  auto t = fixture("llama2_like.json");
  EXPECT_EQ(t.decode(Ids{1, 271, 276}), "hello world");
  EXPECT_EQ(t.decode(Ids{1, 271, 276}, false), "<s> hello world");
  EXPECT_EQ(t.decode(Ids{3 + 0xE4, 3 + 0xB8}),
            "\xEF\xBF\xBD\xEF\xBF\xBD");  // incomplete: one per byte
  for (std::string text : {"hello world", "hello\n\nworld", "中文 text", "  two", "tab\tend  "}) {
    EXPECT_EQ(t.decode(t.encode(text)), text) << text;
  }
}

TEST(MistralLike, MetaspacePrependFirstSkipsTextAfterSpecialTokens) {
  // The newer conversion of the same vocab: no normalizer, Metaspace(prepend_scheme "first").
  auto t = patched("llama2_like.json", [](auto& j) {
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = {
        {"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "first"}, {"split", false}};
    j["decoder"] = {
        {"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "first"}, {"split", false}};
  });
  EXPECT_EQ(t.encode("hello world", false), (Ids{271, 276}));
  // Not at the start of the input: no ▁ is prepended, so h + ell + o.
  EXPECT_EQ(t.encode("<s>hello", false), (Ids{1, 260, 269, 263}));
  EXPECT_EQ(t.decode(Ids{271, 276}), "hello world");
}

TEST(MistralLike, MetaspaceSplitAlways) {
  auto t = patched("llama2_like.json", [](auto& j) {
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = {
        {"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "always"}, {"split", true}};
  });
  EXPECT_EQ(t.encode("<s>hello world", false), (Ids{1, 271, 276}));
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer splits checked against Hugging Face's own expectations.

TEST(PreTokenizer, ByteLevelSplitsAsHuggingFace) {
  // From the unit tests of tokenizers/src/pre_tokenizers/byte_level.rs.
  nlohmann::json bl = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  EXPECT_EQ(split_with(bl, "Hello my friend, how is your day going?"),
            (std::vector<std::string>{"Hello", "Ġmy", "Ġfriend", ",", "Ġhow", "Ġis", "Ġyour",
                                      "Ġday", "Ġgoing", "?"}));
  EXPECT_EQ(split_with(bl, "Hello there\nHello there"),
            (std::vector<std::string>{"Hello", "Ġthere", "Ċ", "Hello", "Ġthere"}));
  EXPECT_EQ(split_with(bl, "Hello there       dear"),
            (std::vector<std::string>{"Hello", "Ġthere", "ĠĠĠĠĠĠ", "Ġdear"}));
  EXPECT_EQ(split_with(bl, "i⭢j"), (std::vector<std::string>{"i", "âŃ¢", "j"}));
  bl["add_prefix_space"] = true;
  for (std::string text : {" Hello my friend,", "Hello my friend,"}) {
    EXPECT_EQ(split_with(bl, text), (std::vector<std::string>{"ĠHello", "Ġmy", "Ġfriend", ","}));
  }
  bl["use_regex"] = false;
  EXPECT_EQ(split_with(bl, "Hello my friend, how is your day going?"),
            (std::vector<std::string>{"ĠHelloĠmyĠfriend,ĠhowĠisĠyourĠdayĠgoing?"}));
}

struct OracleCase {
  const char* pattern;
  const char* behavior;
  bool invert;
  std::string input;
  std::vector<std::string> expected;
};

TEST(PreTokenizer, RegexSplitsMatchTokenizersOracle) {
  // Cases from tokenizers.js tests/fixtures/splitRegexOracle.json, whose expected pieces were
  // produced by Hugging Face tokenizers 0.21.1 (Oniguruma). Removed + invert keeps the matches.
  const char* kLlama3 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  const char* kGpt2NoLookahead =
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+)";
  const char* kOpenAi =
      R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+)";
  const char* kHorizontal =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)| (?!\h?\p{N})\h?(?:\p{L}\p{M}*)+|\p{N}| ?[^\s\p{L}\p{N}\p{M}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  const char* kCaseAware =
      R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  const char* kFrench =
      R"((?i: ?(?:[jtmslndcy]['’]|qu['’]|jusqu['’]|lorsqu['’]|puisqu['’]|quoiqu['’]|aujourd['’]hui)|['’][stmd]|['’][rv]e|['’]ll)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  const char* kDigitChunks = R"(\p{Nd}{1,510}(?=(?>\p{Nd}{510})*(?:\P{Nd}|$))|\G\p{Nd}{510})";
  const char* kAnchors = R"(\A\p{Nd}{1,2}(?=\p{Nd}{3}+\z))";
  std::vector<OracleCase> cases = {
      {R"(\s+)", "Isolated", false, "hello  world", {"hello", "  ", "world"}},
      {R"(\s+)", "Isolated", false, "a\n\tb", {"a", "\n\t", "b"}},
      {R"(\s+)", "Isolated", false, "trim ", {"trim", " "}},
      {R"(\s+)", "Removed", false, " trim ", {"trim"}},
      {R"(\w+)", "Removed", true, "hello, שלום 123", {"hello", "שלום", "123"}},
      {R"(\w+)", "Removed", true, "नमस्ते world", {"नमस्ते", "world"}},
      {R"(\d+)", "Removed", true, "abc 123 १२३", {"123", "१२३"}},
      {R"(\d+)", "Removed", true, "room ４２", {"４２"}},
      {R"(\s+|\w+|[^\w\s]+)", "Removed", true, "emoji🙂test", {"emoji", "🙂", "test"}},
      {R"(\s+|\w+|[^\w\s]+)",
       "Removed",
       true,
       "नमस्ते-world १२३",
       {"नमस्ते", "-", "world", " ", "१२३"}},
      {kGpt2NoLookahead,
       "Removed",
       true,
       "Hello, world! 123 can't",
       {"Hello", ",", " world", "!", " 123", " can", "'t"}},
      {kGpt2NoLookahead, "Removed", true, "café déjà vu", {"café", " déjà", " vu"}},
      {kLlama3,
       "Removed",
       true,
       "I'm testing, you're testing.",
       {"I", "'m", " testing", ",", " you", "'re", " testing", "."}},
      {kLlama3, "Removed", true, "WE'RE here", {"WE", "'RE", " here"}},
      {kLlama3, "Removed", true, "abc1234", {"abc", "123", "4"}},
      {kOpenAi, "Removed", true, "Hello!!!", {"Hello", "!!!"}},
      {kOpenAi, "Removed", true, "can't stop", {"can", "'t", " stop"}},
      {kOpenAi, "Removed", true, "A\nB", {"A", "\n", "B"}},
      {kHorizontal, "Removed", true, "abc 123 def", {" ", "1", "2", "3", " def"}},
      {kHorizontal, "Removed", true, " 42 answer", {" ", "4", "2", " answer"}},
      {kHorizontal, "Removed", true, " I'm here", {" I", "'m", " here"}},
      {kCaseAware, "Removed", true, "Hello WORLD", {"Hello", " WORLD"}},
      {kCaseAware, "Removed", true, "שלום עולם 42", {"שלום", " עולם", " ", "4", "2"}},
      {kFrench, "Removed", true, "j’aime qu’il vienne", {"j’", "aime", " qu’", "il", " vienne"}},
      {kFrench, "Removed", true, "Aujourd’hui AUJOURD’HUI", {"Aujourd’hui", " AUJOURD’HUI"}},
      {kDigitChunks, "Removed", true, "abc123", {"123"}},
      {kDigitChunks, "Removed", true, "１２３４５６７８９０", {"１２３４５６７８９０"}},
      {kAnchors, "Removed", true, "12345", {"12"}},
      {kAnchors, "Removed", true, "abc12345", {}},
      {R"((?<!\n)^ )", "Removed", true, " leading", {" "}},
      {R"((?<!\n)^ )", "Removed", true, "line\n leading", {}},
  };
  for (const auto& c : cases) {
    nlohmann::json split = {{"type", "Split"},
                            {"pattern", {{"Regex", c.pattern}}},
                            {"behavior", c.behavior},
                            {"invert", c.invert}};
    EXPECT_EQ(split_with(split, c.input), c.expected) << c.pattern << " on " << c.input;
  }
}

TEST(PreTokenizer, Llama3AndQwen2PatternsOnTrickyText) {
  // Splits derived by hand from the patterns (leftmost alternative that matches, greedy with
  // backtracking), as Oniguruma runs them.
  using V = std::vector<std::string>;
  auto j = nlohmann::json::parse(fixture_text("llama3_like.json"));
  nlohmann::json llama3 = j["pre_tokenizer"]["pretokenizers"][0];
  // \s*[\r\n]+ takes the newlines; before "world", \s+(?!\S) leaves one space to the word.
  EXPECT_EQ(split_with(llama3, "Hello\n\n\n  world"), (V{"Hello", "\n\n\n", " ", " world"}));
  EXPECT_EQ(split_with(llama3, "x  \n  y"), (V{"x", "  \n", " ", " y"}));
  EXPECT_EQ(split_with(llama3, "$100.00!!"), (V{"$", "100", ".", "00", "!!"}));
  EXPECT_EQ(split_with(llama3, "über Straße"), (V{"über", " Straße"}));
  EXPECT_EQ(split_with(llama3, "你好世界"), (V{"你好世界"}));
  EXPECT_EQ(split_with(llama3, "🙂🙂 ok"), (V{"🙂🙂", " ok"}));
  EXPECT_EQ(split_with(llama3, "(x)"), (V{"(x", ")"}));  // one non-letter may lead a word
  EXPECT_EQ(split_with(llama3, "trailing  "), (V{"trailing", "  "}));
  auto q = nlohmann::json::parse(fixture_text("qwen2_like.json"));
  nlohmann::json qwen2 = q["pre_tokenizer"]["pretokenizers"][0];
  EXPECT_EQ(split_with(qwen2, "$100.00!!"), (V{"$", "1", "0", "0", ".", "0", "0", "!!"}));
}

TEST(PreTokenizer, SplitBehaviors) {
  // As documented for SplitDelimiterBehavior in tokenizers/src/tokenizer/normalizer.rs.
  auto split = [](const char* behavior, bool invert = false) {
    nlohmann::json j = {{"type", "Split"},
                        {"pattern", {{"String", "-"}}},
                        {"behavior", behavior},
                        {"invert", invert}};
    return split_with(j, "the-final--countdown");
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(split("Removed"), (V{"the", "final", "countdown"}));
  EXPECT_EQ(split("Isolated"), (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithPrevious"), (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithNext"), (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(split("Contiguous"), (V{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(split("Removed", true), (V{"-", "-", "-"}));
}

TEST(PreTokenizer, DigitsAndMetaspace) {
  using V = std::vector<std::string>;
  nlohmann::json digits = {{"type", "Digits"}, {"individual_digits", true}};
  EXPECT_EQ(split_with(digits, "Hey 123 friend!"), (V{"Hey ", "1", "2", "3", " friend!"}));
  digits["individual_digits"] = false;
  EXPECT_EQ(split_with(digits, "Hey 123 friend!"), (V{"Hey ", "123", " friend!"}));
  // From tokenizers/src/pre_tokenizers/metaspace.rs.
  nlohmann::json meta = {
      {"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "always"}, {"split", true}};
  EXPECT_EQ(split_with(meta, "Hey friend!"), (V{"▁Hey", "▁friend!"}));
  EXPECT_EQ(split_with(meta, "Hey   friend!"), (V{"▁Hey", "▁", "▁", "▁friend!"}));
}

TEST(Regex, TranslatesOnigurumaEscapes) {
  EXPECT_EQ(translate_oniguruma(R"([^\s\p{L}]\S\h)"),
            R"([^\p{White_Space}\p{L}]\P{White_Space}[0-9a-fA-F])");
  // U+0085 (NEL) is whitespace for Oniguruma's \s, not for ICU's.
  Regex re(R"(\s+)", "test");
  auto m = re.find_all("a\xC2\x85\x0B b");
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0], (std::pair<size_t, size_t>{1, 5}));
  EXPECT_THROW(Regex("(unclosed", "test"), Error);
}

TEST(Unicode, LossyDecodingReplacesMaximalSubparts) {
  EXPECT_EQ(utf8_lossy("a\xF0\x9F\x99"
                       "b"),
            "a\xEF\xBF\xBD"
            "b");                                                 // truncated 4-byte sequence
  EXPECT_EQ(utf8_lossy("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong: two bad bytes
  EXPECT_EQ(utf8_lossy("ok é"), "ok é");
  EXPECT_EQ(find_invalid_utf8("ab\xED\xA0\x80"), 2u);  // a surrogate is not valid UTF-8
}

TEST(Tokenizer, RandomTextRoundTrips) {
  // Byte-level and byte-fallback tokenizers are lossless on any valid UTF-8 text.
  const std::vector<std::pair<char32_t, char32_t>> ranges = {
      {0x20, 0x7E},     {0x09, 0x0D},     {0x85, 0x85},       {0xA0, 0x17F},
      {0x300, 0x36F},  // marks
      {0x3000, 0x3000}, {0x4E00, 0x4E50}, {0x1F600, 0x1F64F}, {0x660, 0x669}};
  std::mt19937 rng(12345);
  auto zoo_tok = Tokenizer::from_directory(zoo("base"));
  auto llama3 = fixture("llama3_like.json");
  auto llama2 = fixture("llama2_like.json");
  for (int n = 0; n < 300; ++n) {
    std::string text;
    int length = static_cast<int>(rng() % 40);
    for (int i = 0; i < length; ++i) {
      auto [lo, hi] = ranges[rng() % ranges.size()];
      append_utf8(text, lo + static_cast<char32_t>(rng() % (hi - lo + 1)));
    }
    EXPECT_EQ(zoo_tok.decode(zoo_tok.encode(text)), text);
    EXPECT_EQ(llama3.decode(llama3.encode(text)), text);
    EXPECT_EQ(llama2.decode(llama2.encode(text)), text);
  }
}

TEST(Tokenizer, ConcurrentEncodingGivesTheSameIds) {
  auto t = Tokenizer::from_directory(zoo("base"));
  std::string text = core::read_text_file(zoo("eval") / "heldout.txt").substr(0, 20000);
  Ids serial = t.encode(text);
  std::vector<Ids> results(4);
  std::vector<std::thread> threads;
  for (auto& r : results) threads.emplace_back([&t, &text, &r] { r = t.encode(text); });
  for (auto& th : threads) th.join();
  for (const auto& r : results) EXPECT_EQ(r, serial);
}

// ---------------------------------------------------------------------------------------------
// Errors name the file and the component.

TEST(TokenizerErrors, UnsupportedComponentsAreNamed) {
  auto load_with = [](const char* key, nlohmann::json value) {
    auto j = nlohmann::json::parse(fixture_text("llama3_like.json"));
    j[key] = std::move(value);
    try {
      Tokenizer::from_json(j.dump(), "fixture.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(
      load_with("normalizer", {{"type", "Precompiled"}}).find("'Precompiled' is not supported"),
      std::string::npos);
  EXPECT_NE(load_with("pre_tokenizer", {{"type", "BertPreTokenizer"}}).find("fixture.json"),
            std::string::npos);
  EXPECT_NE(load_with("model", {{"type", "Unigram"}, {"vocab", nlohmann::json::array()}})
                .find("only BPE"),
            std::string::npos);
  auto bad_merge = nlohmann::json::parse(fixture_text("llama3_like.json"));
  bad_merge["model"]["merges"].push_back("x y z");
  EXPECT_THROW(Tokenizer::from_json(bad_merge.dump(), "m.json"), Error);
  EXPECT_THROW(Tokenizer::from_json("{not json", "broken.json"), Error);
}

TEST(TokenizerErrors, DirectoryWithoutTokenizerJson) {
  TempDir dir;
  EXPECT_THROW(Tokenizer::from_directory(dir.path()), Error);
  testing::write_file(dir / "tokenizer.model", "spm");
  try {
    Tokenizer::from_directory(dir.path());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.model"), std::string::npos);
  }
}

// ---------------------------------------------------------------------------------------------
// CLI

TEST(TokenizeCommand, PrintsIdsAndPieces) {
  auto r = testing::run_amalgam("tokenize " + zoo("base").string() + " -p 'x 12'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "0\t<s>\n90\tx\n223\tĠ\n19\t1\n20\t2\n");
  r = testing::run_amalgam("tokenize " + zoo("base").string() + " -p 'x 12' --json --no-special");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "{\"ids\":[90,223,19,20],\"pieces\":[\"x\",\"Ġ\",\"1\",\"2\"]}\n");
  r = testing::run_amalgam("tokenize /nonexistent -p x");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("no tokenizer.json"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace amalgam::tokenizer
