// A sharded checkpoint's model.safetensors.index.json on arbitrary bytes (with one valid shard).
#include <cstdint>
#include <filesystem>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  const fs::path dir = amalgam::fuzz::scratch_dir() / "sharded";
  fs::create_directories(dir);
  static const bool shard_written = [&] {
    // One tensor "w" of 2 F32 values.
    const char header[] = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    std::string bytes(8, '\0');
    const uint64_t n = sizeof(header) - 1;
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    bytes += std::string(header, n) + std::string(8, '\0');
    amalgam::fuzz::write_scratch("sharded/model-00001-of-00001.safetensors",
                                 reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    return true;
  }();
  (void)shard_written;
  amalgam::fuzz::write_scratch("sharded/model.safetensors.index.json", data, size);
  try {
    amalgam::io::Checkpoint checkpoint(dir);
    for (const auto& name : checkpoint.names()) (void)checkpoint.view(name);
  } catch (const amalgam::Error&) {
  }
  return 0;
}
