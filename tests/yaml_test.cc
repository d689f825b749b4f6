// The YAML reader (core/yaml.h, libyaml underneath): malformed text, the inputs that hung the
// previous reader included, is refused with file, line and column; valid YAML reads into nodes
// typed and placed as PyYAML would; aliases share, bombs and deep nesting are refused.
#include "core/yaml.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "recipe/schema.h"
#include "test_util.h"

namespace amalgam {
namespace {

using testing::source_dir;

std::string refusal(const std::string& text) {
  try {
    yaml::load_all(text, "r.yaml");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// yaml-cpp 0.7 allocated until killed on each of these (found by fuzzing the recipe parser).
TEST(Yaml, RefusesMalformedTextWithItsPosition) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{a: 1}\n  , b: c\n", "r.yaml:2:"},  // a ',' after a flow mapping, on the next line
      {"[a], b\n", "r.yaml:1:"},            // after a flow sequence
      {"'x' , y\n", "r.yaml:1:"},           // after a quoted scalar
      {"\"x\", y\n", "r.yaml:1:"},
      {"!t , x\n", "r.yaml:1:"},  // after a tag
      {"&a ,\n", "r.yaml:1:"},    // after an anchor
      {"--- ,\n", "r.yaml:1:"},   // after the document marker
      {"%YAML 1.2\n---\n,\n", "r.yaml:3:"},
      {"a: |\n  , text\n, y\n", "r.yaml:3:"},  // after a block scalar's text
      {"\"\n\",\n", "r.yaml:2:"},              // after a quoted scalar over two lines
      {"\"\"x\n? \n", "r.yaml:1:"},            // text after a quoted scalar, then a key
      {"merge_method: [linear\n", "r.yaml:2:"},
  };
  for (const auto& [text, where] : cases) {
    SCOPED_TRACE(text);
    EXPECT_EQ(refusal(text).rfind(where, 0), 0u) << refusal(text);
    EXPECT_NE(refusal(text).find("malformed YAML"), std::string::npos) << refusal(text);
  }
}

TEST(Yaml, RefusesTextThatIsNotUtf8) {
  for (const std::string& text : {std::string("\0\0\0,z", 5), std::string("a: 1\nb: \x1b[0m\n"),
                                  std::string("a: caf\xe9\n")}) {
    const std::string message = refusal(text);
    EXPECT_EQ(message.rfind("r.yaml:", 0), 0u) << message;
    EXPECT_NE(message.find("malformed YAML"), std::string::npos) << message;
  }
}

TEST(Yaml, ReadsScalarsWithTheirTypingAndPosition) {
  const yaml::Node root = yaml::load(
      "a: 1.5\nb: '2'\nc: !!float 3\nd:\ne: ~\nf: null\ng: x, y\n  z\nh: \"q\\tr\"\n", "r.yaml");
  ASSERT_TRUE(root.is_map());
  EXPECT_EQ(root.size(), 8u);
  EXPECT_TRUE(root["a"].plain());
  EXPECT_EQ(root["a"].scalar(), "1.5");
  EXPECT_EQ(root["a"].line(), 1);
  EXPECT_EQ(root["a"].column(), 4);
  EXPECT_FALSE(root["b"].plain());  // quoted: a string
  EXPECT_EQ(root["b"].scalar(), "2");
  EXPECT_EQ(root["c"].tag(), "tag:yaml.org,2002:float");
  EXPECT_FALSE(root["c"].plain());
  for (const char* key : {"d", "e", "f"}) EXPECT_TRUE(root[key].is_null()) << key;
  EXPECT_EQ(root["g"].scalar(), "x, y z");  // a plain scalar over two lines
  EXPECT_EQ(root["h"].scalar(), "q\tr");
  EXPECT_FALSE(root["missing"]);
  EXPECT_FALSE(root["a"]["x"]);  // lookups into a scalar are undefined, not errors
  EXPECT_EQ(root.pairs()[6].first.line(), 7);
  // yaml-cpp 0.7 looped on this; it is one plain scalar over two lines, as PyYAML reads it.
  const yaml::Node tagged = yaml::load("!t x\n? \n", "r.yaml");
  EXPECT_EQ(tagged.scalar(), "x ?");
  EXPECT_EQ(tagged.tag(), "!t");
}

TEST(Yaml, ReadsCollectionsDocumentsAndBlockScalars) {
  const auto docs = yaml::load_all(
      "\xEF\xBB\xBF"
      "---\nm: [1, {k: v}]\nt: |\n  'x', y\n  , z\n...\n---\n- a\r\n- b\r\n",
      "r.yaml");
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0]["m"].size(), 2u);
  EXPECT_EQ(docs[0]["m"][1]["k"].scalar(), "v");
  EXPECT_EQ(docs[0]["t"].scalar(), "'x', y\n, z\n");
  ASSERT_TRUE(docs[1].is_sequence());
  EXPECT_EQ(docs[1][1].scalar(), "b");
  EXPECT_EQ(docs[1][1].line(), 9);
  EXPECT_TRUE(yaml::load_all("", "r.yaml").empty());
  EXPECT_FALSE(yaml::load("# nothing\n", "r.yaml"));
  EXPECT_THROW(yaml::load("a: 1\n---\nb: 2\n", "r.yaml"), Error);
}

TEST(Yaml, AliasesShareTheirNodeAndMergeKeysApply) {
  const yaml::Node root = yaml::load(
      "d: &d {w: 1, x: 2}\ne: &e {x: 3, y: 4}\nm:\n  <<: [*d, *e]\n  w: 5\nn: *d\n", "r.yaml");
  EXPECT_EQ(root["n"]["w"].scalar(), "1");
  const yaml::Node m = root["m"];
  ASSERT_EQ(m.size(), 3u);  // w from the map itself, x from the first merged map, y
  EXPECT_EQ(m["w"].scalar(), "5");
  EXPECT_EQ(m["x"].scalar(), "2");
  EXPECT_EQ(m["y"].scalar(), "4");
  EXPECT_NE(refusal("a: *x\n").find("r.yaml:1:4: alias *x refers to no anchor"), std::string::npos);
  EXPECT_NE(refusal("a: &x [*x]\n").find("alias *x"), std::string::npos);  // no cycles
  EXPECT_NE(refusal("a: {<<: 1}\n").find("merge key"), std::string::npos);
}

TEST(Yaml, RefusesBombsAndDeepNesting) {
  std::string bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i < 9; ++i) {
    bomb += fmt::format("a{}: &a{} [*a{}, *a{}, *a{}, *a{}, *a{}, *a{}, *a{}, *a{}, *a{}, *a{}]\n",
                        i, i, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
  }
  EXPECT_NE(refusal(bomb).find("more than 1000000 nodes through aliases"), std::string::npos)
      << refusal(bomb);
  EXPECT_NE(refusal(std::string(5000, '[')).find("nested deeper than 1000 levels"),
            std::string::npos);
  EXPECT_EQ(refusal(std::string(900, '[') + std::string(900, ']')), "");
}

// Every crashing or hanging input the fuzzers found (tests/data/fuzz/TARGET/) is refused with an
// error, in the time of a test.
TEST(Yaml, FuzzFindingsAreRefused) {
  const auto dir = source_dir() / "tests/data/fuzz/recipe_fuzz";
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    SCOPED_TRACE(entry.path().string());
    const std::string text = core::read_text_file(entry.path());
    EXPECT_THROW(recipe::parse_recipe_documents(text, entry.path().filename().string()), Error);
    ++count;
  }
  EXPECT_GE(count, 7);
}

// Every YAML file the project ships (recipes, configs, CI files) reads.
TEST(Yaml, ReadsEveryYamlFileOfTheRepository) {
  int count = 0;
  for (const char* top : {"data", "docs", "tests", "bench", "scripts", ".ci"}) {
    const auto root = source_dir() / top;
    if (!std::filesystem::exists(root)) continue;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(root)) {
      const auto ext = entry.path().extension();
      if (!entry.is_regular_file() || (ext != ".yaml" && ext != ".yml")) continue;
      if (entry.path().string().find("tests/data/fuzz") != std::string::npos) continue;
      SCOPED_TRACE(entry.path().string());
      EXPECT_EQ(refusal(core::read_text_file(entry.path())), "");
      ++count;
    }
  }
  EXPECT_GE(count, 9);  // data/recipes today
}

}  // namespace
}  // namespace amalgam
