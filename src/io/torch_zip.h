// The ZIP container of torch.save (PyTorch >= 1.6): a central-directory reader for archives held
// in memory (a file mapping). torch.save stores every record uncompressed, so each entry is a
// byte range of the file and tensors can be mapped in place. Every offset and size is checked
// against the file before use; anything a torch.save archive does not contain (compression,
// encryption, several disks, overlapping entries) is refused with a message naming the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace amalgam::io {

struct ZipEntry {
  std::string name;
  uint64_t header_offset = 0;  // of the local file header
  uint64_t data_offset = 0;    // of the stored bytes
  uint64_t size = 0;
  uint32_t crc32 = 0;  // as the central directory records it
};

// Entries in central-directory order. `path` only names the file in error messages.
std::vector<ZipEntry> read_zip_directory(const uint8_t* data, uint64_t size,
                                         const std::string& path);

}  // namespace amalgam::io
