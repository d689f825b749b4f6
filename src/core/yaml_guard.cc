#include "core/yaml_guard.h"

#include "core/error.h"

namespace amalgam::core {

namespace {

bool blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }
// Leading spaces of the line holding text[i].
size_t line_indent(const std::string& text, size_t i) {
  size_t begin = text.rfind('\n', i);
  begin = begin == std::string::npos ? 0 : begin + 1;
  size_t end = begin;
  while (end < text.size() && text[end] == ' ') ++end;
  return end - begin;
}

bool flow_indicator(char c) { return c == ',' || c == '[' || c == ']' || c == '{' || c == '}'; }

}  // namespace

// A light scan of the YAML tokens that matter here: quotes, comments, flow brackets, and plain
// scalars (the only place a ',' may stand outside brackets: "models: a, b" is one scalar).
void check_yaml_text(const std::string& text, const std::string& where) {
  int depth = 0;        // [ and { open outside quotes and comments
  bool plain = false;   // inside a plain scalar at depth 0 (it may contain ',')
  bool start = true;    // at the start of a line: "---" there is the document marker
  // Whether a node may begin here (the document's start, after "---", "- ", "? " or ": "): only
  // there do '|' and '>' begin a block scalar; elsewhere they are text.
  bool node_start = true;
  // A quoted scalar or a flow collection ended on this line at the top level: only a ':' (it was
  // a key) or a comment may follow it there.
  bool closed = false;
  char quote = 0;
  size_t line = 1;
  const auto next_is_blank = [&](size_t i) { return i + 1 >= text.size() || blank(text[i + 1]); };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (i == 0 && text.compare(0, 3, "\xEF\xBB\xBF") == 0) {  // a UTF-8 byte order mark
      i = 2;
      continue;
    }
    // YAML text holds no control characters but tab and line breaks; NUL bytes also make
    // yaml-cpp read the text as UTF-16 or UTF-32 (where "\0\0\0," is a ',' that hangs it).
    const auto byte = static_cast<unsigned char>(c);
    if ((byte < 0x20 && c != '\t' && c != '\n' && c != '\r') || byte == 0x7f) {
      fail("{}:{}: control character 0x{:02x}: not YAML text (UTF-8 expected)", where, line, byte);
    }
    if (c == '\n') {
      ++line;
      start = true;
      plain = false;
      closed = false;
      continue;  // a quoted scalar may go on over lines
    }
    if (quote != 0) {  // up to the closing quote: '' inside single quotes, \" inside double
      if (quote == '"' && c == '\\' && i + 1 < text.size() &&
          static_cast<unsigned char>(text[i + 1]) >= 0x20 && text[i + 1] != 0x7f) {
        ++i;
      } else if (c == '\'' && quote == '\'' && i + 1 < text.size() && text[i + 1] == '\'') {
        ++i;
      } else if (c == quote) {
        quote = 0;
        start = false;
        closed = depth == 0;
      }
      continue;
    }
    const bool line_start = start;
    if (c != ' ' && c != '\t') start = false;
    if (c == ' ' || c == '\t' || c == '\r') continue;
    if (c == '#' && (i == 0 || blank(text[i - 1]))) {  // a comment, to the end of the line
      while (i + 1 < text.size() && text[i + 1] != '\n') ++i;
      continue;
    }
    if (depth > 0) {  // flow context: ',' separates entries
      if (c == '"' || c == '\'') quote = c;
      if (c == '[' || c == '{') ++depth;
      if (c == ']' || c == '}') closed = --depth == 0;
      continue;
    }
    if (plain) {  // a plain scalar runs until ": " (a mapping key ends) or the line ends
      if (c == ':' && next_is_blank(i)) plain = false, node_start = true;  // a key's value
      continue;
    }
    if (c == ',') {
      fail("{}:{}: ',' outside [ ] or {{ }} where no value can contain it (malformed YAML)", where,
           line);
    }
    if (closed && c != ':') {
      fail("{}:{}: text after a quoted or bracketed value on the same line (malformed YAML)",
           where, line);
    }
    closed = false;
    const bool node_here = node_start;
    node_start = false;
    if (c == '"' || c == '\'') {
      quote = c;
    } else if (c == '[' || c == '{') {
      ++depth;
    } else if (c == '!' || c == '&' || c == '*') {
      // A tag, anchor or alias: up to a blank or a flow indicator (none of them may contain one).
      while (i + 1 < text.size() && !blank(text[i + 1]) && !flow_indicator(text[i + 1])) ++i;
      node_start = node_here;  // the node it belongs to is still to come
    } else if (line_start && (text.compare(i, 3, "---") == 0 || text.compare(i, 3, "...") == 0) &&
               next_is_blank(i + 2)) {
      i += 2;  // a document marker
      node_start = true;
    } else if ((c == '|' || c == '>') && node_here) {
      // A block scalar ("chat_template: |"): its lines, indented deeper than this one, are text.
      const size_t indent = line_indent(text, i);
      while (i < text.size() && text[i] != '\n') ++i;
      while (i < text.size()) {  // at the '\n' ending the last line consumed
        size_t j = i + 1, spaces = 0;
        while (j < text.size() && text[j] == ' ') ++j, ++spaces;
        const bool empty = j >= text.size() || text[j] == '\n' || text[j] == '\r';
        if (!empty && spaces <= indent) break;
        ++line;
        i = j;
        while (i < text.size() && text[i] != '\n') ++i;
      }
      --i;  // the loop's next step sees the '\n' (or the end)
    } else if ((c == '-' || c == '?' || c == ':') && next_is_blank(i)) {
      node_start = true;  // an indicator: sequence entry, mapping key or value
    } else if (c != ']' && c != '}') {  // (an unmatched close is yaml-cpp's own clear error)
      plain = true;
    }
  }
}

}  // namespace amalgam::core
