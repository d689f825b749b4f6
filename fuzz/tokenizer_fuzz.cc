// tokenizer.json on arbitrary bytes; a tokenizer that loads must encode and decode a fixed text.
#include <cstdint>
#include <string>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    auto tok = amalgam::tokenizer::Tokenizer::from_json(text, "tokenizer.json");
    const auto ids = tok.encode("Hello, world! 123 \xc3\xa9t\xc3\xa9  \t\n<s>x</s>", true);
    (void)tok.decode(ids);
  } catch (const amalgam::Error&) {
  }
  return 0;
}
