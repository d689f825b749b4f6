// The safetensors header parser on arbitrary bytes: every input is refused with an Error or
// parsed into tensors whose ranges lie inside the file.
#include <cstdint>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = amalgam::fuzz::write_scratch("model.safetensors", data, size);
  try {
    amalgam::io::SafetensorsFile file(path.string());
    for (const auto& t : file.tensors()) {
      auto view = file.view(t);
      volatile uint8_t sink = view.nbytes() > 0 ? view.data[view.nbytes() - 1] : 0;
      (void)sink;
    }
  } catch (const amalgam::Error&) {
  }
  return 0;
}
