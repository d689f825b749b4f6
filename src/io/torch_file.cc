#include "io/torch_file.h"

#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <limits>
#include <map>

#include "core/error.h"
#include "io/torch_pickle.h"
#include "io/torch_zip.h"

namespace amalgam::io {

namespace {

// A state dict of 200k tensors pickles to about 30 MB.
constexpr uint64_t kMaxPickleBytes = 256ull << 20;

// torch.save before 1.6 starts with the pickled magic number 0x1950a86a20f9469cfc6c.
constexpr uint8_t kLegacyMagic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c,
                                    0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

bool starts_with(const core::MappedFile& file, const void* prefix, size_t n) {
  return file.size() >= n && std::memcmp(file.data(), prefix, n) == 0;
}

std::string view_text(const core::MappedFile& file, const ZipEntry& e) {
  return std::string(reinterpret_cast<const char*>(file.data() + e.data_offset), e.size);
}

std::string dims_string(const std::vector<int64_t>& dims) {
  return tensor::shape_string(tensor::Shape(dims.begin(), dims.end()));
}

// Row-major contiguity as torch defines it: dimensions of size 1 may have any stride.
bool is_contiguous(const tensor::Shape& shape, const std::vector<int64_t>& stride) {
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] == 0) return true;
    if (shape[i] != 1 && stride[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

}  // namespace

std::optional<std::vector<TensorInfo>> read_if_torch_file(const core::MappedFile& file) {
  const std::string& path = file.path();
  if (starts_with(file, kLegacyMagic, sizeof(kLegacyMagic))) {
    fail(
        "{}: legacy torch.save format (PyTorch < 1.6, not a zip archive), which is not read: "
        "re-save it with PyTorch >= 1.6 (torch.save(torch.load(f, weights_only=True), f)) or "
        "convert it to safetensors",
        path);
  }
  if (!starts_with(file, "PK\x03\x04", 4)) {
    const std::string ext = std::filesystem::path(path).extension().string();
    if (ext == ".bin" || ext == ".pt" || ext == ".pth") {
      fail("{}: not a PyTorch checkpoint: torch.save (PyTorch >= 1.6) writes a zip archive", path);
    }
    return std::nullopt;
  }

  const std::vector<ZipEntry> entries = read_zip_directory(file.data(), file.size(), path);
  // As torch's reader: the folder of the first record names the archive, and every record is
  // inside it.
  const size_t slash = entries.empty() ? std::string::npos : entries[0].name.find('/');
  if (slash == std::string::npos) fail("{}: not a torch.save archive (no record folder)", path);
  const std::string prefix = entries[0].name.substr(0, slash + 1);
  std::map<std::string, const ZipEntry*> records;
  for (const auto& e : entries) {
    if (e.name.compare(0, prefix.size(), prefix) != 0) {
      fail("{}: not a torch.save archive: record '{}' is outside '{}'", path, e.name, prefix);
    }
    records[e.name.substr(prefix.size())] = &e;
  }
  auto record = [&](const std::string& name) {
    auto it = records.find(name);
    return it == records.end() ? nullptr : it->second;
  };

  const ZipEntry* pickle = record("data.pkl");
  if (pickle == nullptr) {
    fail("{}: no {}data.pkl record: not a torch.save checkpoint (a TorchScript archive?)", path,
         prefix);
  }
  if (pickle->size > kMaxPickleBytes) {
    fail("{}: data.pkl has {} bytes, too many for a state dict", path, pickle->size);
  }
  const uint8_t* pickle_bytes = file.data() + pickle->data_offset;
  uLong crc = crc32(0L, Z_NULL, 0);
  for (uint64_t at = 0; at < pickle->size;) {  // zlib takes 32-bit lengths
    const uInt n = static_cast<uInt>(std::min<uint64_t>(pickle->size - at, 1u << 30));
    crc = crc32(crc, pickle_bytes + at, n);
    at += n;
  }
  if (crc != pickle->crc32) fail("{}: data.pkl is damaged (CRC-32 mismatch)", path);
  if (const ZipEntry* order = record("byteorder"); order && view_text(file, *order) != "little") {
    fail("{}: saved on a '{}'-endian machine; only little-endian checkpoints are read", path,
         view_text(file, *order));
  }

  const std::vector<PickledTensor> pickled =
      unpickle_state_dict({pickle_bytes, pickle->size}, path);
  std::map<std::string, tensor::DType> storage_dtypes;
  std::vector<TensorInfo> out;
  out.reserve(pickled.size());
  for (const auto& t : pickled) {
    const ZipEntry* storage = record("data/" + t.storage_key);
    if (storage == nullptr) {
      fail("{}: tensor '{}': its storage record data/{} is missing", path, t.name, t.storage_key);
    }
    if (t.storage_bytes != storage->size) {
      fail("{}: tensor '{}': storage data/{} is declared as {} bytes but the archive holds {}",
           path, t.name, t.storage_key, t.storage_bytes, storage->size);
    }
    auto [it, inserted] = storage_dtypes.emplace(t.storage_key, t.dtype);
    if (!inserted && it->second != t.dtype) {
      fail("{}: tensor '{}': storage data/{} is viewed as both {} and {}", path, t.name,
           t.storage_key, tensor::dtype_name(it->second), tensor::dtype_name(t.dtype));
    }
    const uint64_t esize = tensor::dtype_size(t.dtype);
    if (storage->size % esize != 0) {
      fail("{}: tensor '{}': storage data/{} holds {} bytes, not whole {} elements", path, t.name,
           t.storage_key, storage->size, tensor::dtype_name(t.dtype));
    }
    const uint64_t capacity = storage->size / esize;
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      const uint64_t dim = static_cast<uint64_t>(d);
      if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / dim) {
        fail("{}: tensor '{}': shape {} overflows", path, t.name, tensor::shape_string(t.shape));
      }
      numel *= dim;
    }
    if (!is_contiguous(t.shape, t.stride)) {
      fail(
          "{}: tensor '{}' is not contiguous (shape {}, stride {}); tensors are mapped in place "
          "and must be row-major: save it with tensor.contiguous()",
          path, t.name, tensor::shape_string(t.shape), dims_string(t.stride));
    }
    if (t.offset > capacity || numel > capacity - t.offset) {
      fail("{}: tensor '{}': elements [{}, {}) lie outside its storage data/{} of {} elements",
           path, t.name, t.offset, t.offset + numel, t.storage_key, capacity);
    }
    TensorInfo info;
    info.name = t.name;
    info.dtype = t.dtype;
    info.shape = t.shape;
    info.begin = storage->data_offset + t.offset * esize;
    info.end = info.begin + numel * esize;
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace amalgam::io
