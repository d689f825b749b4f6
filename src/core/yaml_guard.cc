#include "core/yaml_guard.h"

#include "core/error.h"

namespace amalgam::core {

void check_yaml_text(const std::string& text, const std::string& where) {
  int depth = 0;  // [ and { open outside quotes and comments
  size_t line = 1;
  bool line_start = true;
  char quote = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
      line_start = true;
      quote = 0;  // a quoted scalar spanning lines is rare in recipes; being lenient is safe here
      continue;
    }
    if (quote != 0) {
      if (c == quote) quote = 0;
      continue;
    }
    if (line_start && (c == ' ' || c == '\t')) continue;
    if (line_start && c == ',' && depth == 0) {
      fail("{}:{}: a line cannot start with ',' outside [ ] or {{ }} (malformed YAML)", where,
           line);
    }
    line_start = false;
    if (c == '#' && (i == 0 || text[i - 1] == ' ' || text[i - 1] == '\t')) {
      while (i + 1 < text.size() && text[i + 1] != '\n') ++i;
    } else if (c == '"' || c == '\'') {
      quote = c;
    } else if (c == '[' || c == '{') {
      ++depth;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

}  // namespace amalgam::core
