// yaml-cpp 0.7 (Debian 12) never returns on some short malformed inputs: a ',' that no value can
// contain, outside [ ] or { }, at the document's top level ("{a: 1}\n  , b: c", "!t , x",
// "'x', y", "--- ,") makes it allocate nodes until memory runs out (found by fuzzing the recipe
// parser). Such a ',' is never valid YAML (a plain scalar cannot start with ','; after a quoted
// scalar, a flow collection, a tag or an anchor it would be a flow entry outside any flow), so
// every YAML file is checked for one before yaml-cpp sees it. Inside block collections yaml-cpp
// reports the same error itself; refusing it here too costs nothing.
#pragma once

#include <string>

namespace amalgam::core {

// Throws "WHERE:LINE: ..." for text that would hang the YAML reader.
void check_yaml_text(const std::string& text, const std::string& where);

}  // namespace amalgam::core
