#include "gguf/writer.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <set>

#include "core/error.h"
#include "core/fs.h"

namespace amalgam::gguf {

namespace fs = std::filesystem;

namespace {

class Buffer {
 public:
  template <typename T>
  void pod(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    bytes.insert(bytes.end(), p, p + sizeof(T));
  }
  void str(const std::string& s) {
    pod<uint64_t>(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
  }
  void number(ValueType t, double v) {
    switch (t) {
      case ValueType::kU8:
        return pod<uint8_t>(static_cast<uint8_t>(v));
      case ValueType::kI8:
        return pod<int8_t>(static_cast<int8_t>(v));
      case ValueType::kU16:
        return pod<uint16_t>(static_cast<uint16_t>(v));
      case ValueType::kI16:
        return pod<int16_t>(static_cast<int16_t>(v));
      case ValueType::kU32:
        return pod<uint32_t>(static_cast<uint32_t>(v));
      case ValueType::kI32:
        return pod<int32_t>(static_cast<int32_t>(v));
      case ValueType::kF32:
        return pod<float>(static_cast<float>(v));
      case ValueType::kBool:
        return pod<uint8_t>(v != 0 ? 1 : 0);
      case ValueType::kU64:
        return pod<uint64_t>(static_cast<uint64_t>(v));
      case ValueType::kI64:
        return pod<int64_t>(static_cast<int64_t>(v));
      case ValueType::kF64:
        return pod<double>(v);
      default:
        fail("internal: {} is not a number type", value_type_name(t));
    }
  }
  void value(const Value& v) {
    switch (v.type) {
      case ValueType::kString:
        return str(v.s);
      case ValueType::kArray:
        pod<uint32_t>(static_cast<uint32_t>(v.elem));
        if (v.elem == ValueType::kString) {
          pod<uint64_t>(v.strings.size());
          for (const auto& s : v.strings) str(s);
        } else {
          AMALGAM_CHECK(v.elem != ValueType::kArray, "GGUF arrays of arrays are not written");
          pod<uint64_t>(v.numbers.size());
          for (double d : v.numbers) number(v.elem, d);
        }
        return;
      case ValueType::kF32:
      case ValueType::kF64:
        return number(v.type, v.f);
      case ValueType::kI8:
      case ValueType::kI16:
      case ValueType::kI32:
      case ValueType::kI64:
        return number(v.type, static_cast<double>(v.i));
      default:
        return number(v.type, static_cast<double>(v.u));
    }
  }
  std::vector<uint8_t> bytes;
};

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

GgufWriter::GgufWriter(fs::path target, bool force) : target_(std::move(target)), force_(force) {
  std::error_code ec;
  if (!force_ && fs::exists(target_, ec)) {
    fail("{}: already exists (use --force to replace it)", target_.string());
  }
  fs::path parent = target_.parent_path();
  if (parent.empty()) parent = ".";
  if (!fs::is_directory(parent, ec)) fail("{}: no such directory", parent.string());
  std::random_device rd;
  staged_ = parent / fmt::format(".{}.tmp-{:08x}", target_.filename().string(), rd());
  fd_ = ::open(staged_.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("{}: cannot create: {}", staged_.string(), std::strerror(errno));
}

GgufWriter::~GgufWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) {
    std::error_code ec;
    fs::remove(staged_, ec);
  }
}

void GgufWriter::set(const std::string& key, Value value) {
  AMALGAM_CHECK(!begun_, "GGUF key '{}' set after the header was written", key);
  for (auto& [k, v] : metadata_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(key, std::move(value));
}

size_t GgufWriter::add_tensor(std::string name, std::vector<int64_t> shape, GgmlType type) {
  AMALGAM_CHECK(!begun_, "GGUF tensor '{}' added after the header was written", name);
  AMALGAM_CHECK(!shape.empty() && shape.size() <= 4, "GGUF tensor '{}' has {} dimensions", name,
                shape.size());
  int64_t n = 1;
  for (int64_t d : shape) {
    AMALGAM_CHECK(d > 0, "GGUF tensor '{}' has an empty dimension", name);
    n *= d;
  }
  AMALGAM_CHECK(shape.back() % traits(type).block == 0,
                "GGUF tensor '{}': rows of {} elements are not whole {} blocks", name, shape.back(),
                type_name(type));
  Info info{std::move(name), std::move(shape), type, 0, 0};
  info.bytes = row_bytes(type, info.shape.back()) * static_cast<uint64_t>(n / info.shape.back());
  tensors_.push_back(std::move(info));
  return tensors_.size() - 1;
}

void GgufWriter::begin() {
  std::set<std::string> names;
  for (const auto& t : tensors_) {
    AMALGAM_CHECK(names.insert(t.name).second, "GGUF tensor '{}' declared twice", t.name);
  }
  if (find(metadata_, "general.alignment") == nullptr) {
    metadata_.emplace_back("general.alignment",
                           Value::u32(static_cast<uint32_t>(kDefaultAlignment)));
  }
  Buffer b;
  b.pod<uint32_t>(kMagic);
  b.pod<uint32_t>(kVersion);
  b.pod<uint64_t>(tensors_.size());
  b.pod<uint64_t>(metadata_.size());
  for (const auto& [key, v] : metadata_) {
    b.str(key);
    b.pod<uint32_t>(static_cast<uint32_t>(v.type));
    b.value(v);
  }
  uint64_t offset = 0;
  for (auto& t : tensors_) {
    t.offset = offset;
    b.str(t.name);
    b.pod<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) b.pod<uint64_t>(*it);
    b.pod<uint32_t>(static_cast<uint32_t>(t.type));
    b.pod<uint64_t>(t.offset);
    offset = align_up(offset + t.bytes, kDefaultAlignment);
  }
  data_start_ = align_up(b.bytes.size(), kDefaultAlignment);
  b.bytes.resize(data_start_, 0);
  file_bytes_ = data_start_ + offset;
  // Sizing the file first gives zero padding between tensors and fails early on a full disk.
  if (::ftruncate(fd_, static_cast<off_t>(file_bytes_)) != 0) {
    fail("{}: cannot size to {} bytes: {}", staged_.string(), file_bytes_, std::strerror(errno));
  }
  core::pwrite_all(fd_, b.bytes.data(), b.bytes.size(), 0, staged_);
  begun_ = true;
}

void GgufWriter::write(size_t tensor, uint64_t offset, const void* data, size_t size) {
  AMALGAM_CHECK(begun_, "GGUF tensor data written before the header");
  const Info& t = tensors_.at(tensor);
  AMALGAM_CHECK(offset + size <= t.bytes, "GGUF tensor '{}': write past its {} bytes", t.name,
                t.bytes);
  core::pwrite_all(fd_, data, size, data_start_ + t.offset + offset, staged_, t.name);
}

void GgufWriter::commit() {
  AMALGAM_CHECK(begun_, "GGUF file committed before its header was written");
  if (::fsync(fd_) != 0) fail("{}: fsync failed: {}", staged_.string(), std::strerror(errno));
  ::close(fd_);
  fd_ = -1;
  std::error_code ec;
  if (!force_ && fs::exists(target_, ec)) {
    fail("{}: already exists (use --force to replace it)", target_.string());
  }
  fs::rename(staged_, target_, ec);
  if (ec) fail("{}: cannot rename into place: {}", target_.string(), ec.message());
  committed_ = true;
}

}  // namespace amalgam::gguf
