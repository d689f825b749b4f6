// The check every YAML text passes before yaml-cpp reads it (core/yaml_guard.h): the inputs on
// which yaml-cpp 0.7 never returns are refused with the file and line, and valid YAML, commas in
// plain, quoted and block scalars included, passes untouched.
#include "core/yaml_guard.h"

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
    core::check_yaml_text(text, "r.yaml");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Each of these makes yaml-cpp 0.7 allocate until it is killed: a ',' that no value can hold, at
// the document's top level.
TEST(YamlGuard, RefusesTheTextsThatHangTheReader) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{a: 1}\n  , b: c\n", "r.yaml:2:"},  // after a flow mapping, on the next line
      {"[a], b\n", "r.yaml:1:"},            // after a flow sequence
      {"'x' , y\n", "r.yaml:1:"},           // after a quoted scalar
      {"\"x\", y\n", "r.yaml:1:"},
      {"!t , x\n", "r.yaml:1:"},  // after a tag
      {"!,\n", "r.yaml:1:"},      // a tag ends at a flow indicator
      {"&a ,\n", "r.yaml:1:"},    // after an anchor
      {"--- ,\n", "r.yaml:1:"},   // after the document marker
      {"%YAML 1.2\n---\n,\n", "r.yaml:3:"},
      {"a: |\n  , text\n, y\n", "r.yaml:3:"},  // after a block scalar's text
      {"\xEF\xBB\xBF,\n", "r.yaml:1:"},          // after a byte order mark
      {"\"\n\",\n", "r.yaml:2:"},                // after a quoted scalar over two lines
      {"'it''s\n', x\n", "r.yaml:2:"},           //
      {"\"a\\\"b\", c\n", "r.yaml:1:"},          // an escaped quote does not end it
      {"x\n>\n  , y\n", "r.yaml:3:"},  // '>' in a plain scalar's text begins no block scalar
  };
  for (const auto& [text, where] : cases) {
    SCOPED_TRACE(text);
    const std::string message = refusal(text);
    EXPECT_NE(message.find(where + " ',' outside [ ] or { }"), std::string::npos) << message;
  }
}

// Text after a complete quoted scalar or flow collection on its line, then a '?' key later: the
// reader loops too. Only a ':' (the value was a key) or a comment may follow such a value.
TEST(YamlGuard, RefusesTextAfterAQuotedOrBracketedValue) {
  for (const std::string text : {"\"\"x\n? \n", "'a' x\n", "[a] x\n", "a: {b: 1} d\n"}) {
    EXPECT_NE(refusal(text).find("r.yaml:1: text after a quoted or bracketed value"),
              std::string::npos)
        << text;
  }
  for (const std::string text : {"\"k\": v\n", "[a]: b\n", "{a: 1}: b\n", "a: \"x\" # c, d\n"}) {
    EXPECT_EQ(refusal(text), "") << text;
  }
}

// NUL bytes make yaml-cpp read the text as UTF-16 or UTF-32, where "\0\0\0," is a lone ','.
TEST(YamlGuard, RefusesControlCharacters) {
  for (const auto& [text, message] : std::vector<std::pair<std::string, std::string>>{
           {std::string("\0\0\0,z", 5), "r.yaml:1: control character 0x00: not YAML text"},
           {"a: 1\nb: \x1b[0m\n", "r.yaml:2: control character 0x1b"},
           {"a: \"\x7f\"\n", "r.yaml:1: control character 0x7f"},
       }) {
    EXPECT_NE(refusal(text).find(message), std::string::npos) << refusal(text);
  }
  EXPECT_EQ(refusal("a:\tb, c\r\nd: e\n"), "");  // tabs and CRLF line ends are text
}

TEST(YamlGuard, PassesCommasThatValuesHold) {
  for (const std::string text : {
           "models: a, b\n",                          // a plain scalar holds ", "
           "- x, y\n- z\n",                           //
           "base: &b model, x\n",                     // after an anchor, in the scalar
           "t: !!str a, b\n",                         // after a tag, in the scalar
           "url: http://x, y\n",                      // ':' not followed by a blank
           "a: \"q, r\"\nb: 'it''s, fine'\n",         // quoted
           "a: it's, fine\n",                         // a quote inside a plain scalar
           "a: \"x\n  y, z\"\nb: 'p\n  q'', r'\n",     // quoted scalars over lines
           "a: [1, 2] # c, d\n",                      // a flow sequence, a comment
           "a: {x: 1, y: [2, 3]}\n",                  //
           "a: |\n  'x', y\n  , z\n\n  {, w\nb: 1\n",  // a block scalar's lines are text
           "chat_template: >-\n  {%- for m in messages %}, {{ m }}\n",
           "- |\n  , x\n- !!str >\n  , y\n--- |\n  , z\n",  // block scalars where nodes begin
           "---\na: 1\n...\n---\nb: x, y\n",  // documents
           "\xEF\xBB\xBF" "a: x, y\n",          // a byte order mark
       }) {
    EXPECT_EQ(refusal(text), "") << text;
  }
}

// Every crashing or hanging input the fuzzers found (tests/data/fuzz/TARGET/) is refused with an
// error, in the time of a test.
TEST(YamlGuard, FuzzFindingsAreRefused) {
  const auto dir = source_dir() / "tests/data/fuzz/recipe_fuzz";
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    SCOPED_TRACE(entry.path().string());
    const std::string text = core::read_text_file(entry.path());
    EXPECT_THROW(recipe::parse_recipe_documents(text, entry.path().filename().string()), Error);
    ++count;
  }
  EXPECT_GE(count, 6);
}

// The guard refuses no YAML file the project ships (recipes, configs, CI files).
TEST(YamlGuard, PassesEveryYamlFileOfTheRepository) {
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
