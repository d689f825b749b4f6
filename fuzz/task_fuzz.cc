// Evaluation task files (JSON generation/choice tasks, plain text) on arbitrary bytes.
#include <cstdint>

#include "core/error.h"
#include "eval/task.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = amalgam::fuzz::write_scratch("task.json", data, size);
  try {
    (void)amalgam::eval::load_task(path);
  } catch (const amalgam::Error&) {
  }
  return 0;
}
