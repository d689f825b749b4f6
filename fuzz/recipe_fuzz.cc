// Recipes on arbitrary bytes: the YAML reader and the mergekit schema (single and multi-document).
#include <cstdint>
#include <string>

#include "core/error.h"
#include "recipe/schema.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    (void)amalgam::recipe::parse_recipe_documents(text, "recipe.yaml");
  } catch (const amalgam::Error&) {
  }
  return 0;
}
