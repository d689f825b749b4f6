// yaml-cpp 0.7 (Debian 12) never returns on some short malformed inputs: a line that starts with
// ',' outside any [ ] or { } after a flow collection ("{a: 1}\n  , b: c") makes it allocate nodes
// until memory runs out (found by fuzzing the recipe parser). Such a line is never valid YAML
// where a recipe could use it, so every YAML file is checked for it before yaml-cpp sees it.
#pragma once

#include <string>

namespace amalgam::core {

// Throws "WHERE:LINE: ..." for text that would hang the YAML reader.
void check_yaml_text(const std::string& text, const std::string& where);

}  // namespace amalgam::core
