#include "gguf/reader.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>

#include "core/error.h"

namespace amalgam::gguf {

namespace {

// Bounds-checked reads from the mapped header; every failure names the file and what was read.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, std::string where)
      : data_(data), size_(size), where_(std::move(where)) {}

  template <typename T>
  T pod(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string str(const char* what) {
    const uint64_t n = pod<uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }

  void need(uint64_t n, const char* what) const {
    if (n > size_ - pos_) {
      fail("{}: truncated: {} needs {} bytes at offset {}, the file has {}", where_, what, n, pos_,
           size_);
    }
  }
  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  std::string where_;
};

double read_number(Cursor& c, ValueType t, const char* what) {
  switch (t) {
    case ValueType::kU8:
      return c.pod<uint8_t>(what);
    case ValueType::kI8:
      return c.pod<int8_t>(what);
    case ValueType::kU16:
      return c.pod<uint16_t>(what);
    case ValueType::kI16:
      return c.pod<int16_t>(what);
    case ValueType::kU32:
      return c.pod<uint32_t>(what);
    case ValueType::kI32:
      return c.pod<int32_t>(what);
    case ValueType::kF32:
      return c.pod<float>(what);
    case ValueType::kU64:
      return static_cast<double>(c.pod<uint64_t>(what));
    case ValueType::kI64:
      return static_cast<double>(c.pod<int64_t>(what));
    case ValueType::kF64:
      return c.pod<double>(what);
    default:
      return 0;
  }
}

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::kF64); }

Value read_value(Cursor& c, ValueType type, const std::string& where) {
  Value v;
  v.type = type;
  switch (type) {
    case ValueType::kString:
      v.s = c.str("a string value");
      return v;
    case ValueType::kBool: {
      const uint8_t b = c.pod<uint8_t>("a bool value");
      AMALGAM_CHECK(b <= 1, "{}: bool value {} is neither 0 nor 1", where, b);
      v.u = b;
      return v;
    }
    case ValueType::kArray: {
      const uint32_t elem = c.pod<uint32_t>("an array type");
      AMALGAM_CHECK(valid_value_type(elem) && elem != static_cast<uint32_t>(ValueType::kArray),
                    "{}: array element type {} is not valid", where, elem);
      v.elem = static_cast<ValueType>(elem);
      const uint64_t n = c.pod<uint64_t>("an array count");
      if (v.elem == ValueType::kString) {
        // Each string takes at least its 8-byte length: a count beyond that is a lie.
        AMALGAM_CHECK(n <= c.remaining() / 8, "{}: array of {} strings exceeds the file", where, n);
        v.strings.reserve(n);
        for (uint64_t k = 0; k < n; ++k) v.strings.push_back(c.str("an array string"));
      } else {
        const size_t size = value_type_size(v.elem);
        AMALGAM_CHECK(n <= c.remaining() / size, "{}: array of {} {} exceeds the file", where, n,
                      value_type_name(v.elem));
        v.numbers.reserve(n);
        for (uint64_t k = 0; k < n; ++k) {
          if (v.elem == ValueType::kBool) {
            const uint8_t b = c.pod<uint8_t>("an array bool");
            AMALGAM_CHECK(b <= 1, "{}: bool value {} is neither 0 nor 1", where, b);
            v.numbers.push_back(b);
          } else {
            v.numbers.push_back(read_number(c, v.elem, "an array number"));
          }
        }
      }
      return v;
    }
    case ValueType::kF32:
    case ValueType::kF64:
      v.f = read_number(c, type, "a float value");
      return v;
    case ValueType::kI8:
      v.i = c.pod<int8_t>("a value");
      return v;
    case ValueType::kI16:
      v.i = c.pod<int16_t>("a value");
      return v;
    case ValueType::kI32:
      v.i = c.pod<int32_t>("a value");
      return v;
    case ValueType::kI64:
      v.i = c.pod<int64_t>("a value");
      return v;
    case ValueType::kU8:
      v.u = c.pod<uint8_t>("a value");
      return v;
    case ValueType::kU16:
      v.u = c.pod<uint16_t>("a value");
      return v;
    case ValueType::kU32:
      v.u = c.pod<uint32_t>("a value");
      return v;
    case ValueType::kU64:
      v.u = c.pod<uint64_t>("a value");
      return v;
  }
  fail("{}: value type {} is not valid", where, static_cast<uint32_t>(type));
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

GgufFile::GgufFile(const std::filesystem::path& path)
    : path_(path), file_(std::make_shared<core::MappedFile>(path.string())) {
  const std::string where = path.string();
  Cursor c(file_->data(), file_->size(), where);
  const uint32_t magic = c.pod<uint32_t>("the magic");
  AMALGAM_CHECK(magic == kMagic, "{}: not a GGUF file (bad magic)", where);
  version_ = c.pod<uint32_t>("the version");
  AMALGAM_CHECK(version_ == 2 || version_ == 3, "{}: GGUF version {} is not supported (2 or 3)",
                where, version_);
  const uint64_t n_tensors = c.pod<uint64_t>("the tensor count");
  const uint64_t n_kv = c.pod<uint64_t>("the metadata count");
  // A key takes at least 12 bytes and a tensor info at least 24: counts beyond are corrupt.
  AMALGAM_CHECK(n_kv <= c.remaining() / 12, "{}: metadata count {} exceeds the file", where, n_kv);
  AMALGAM_CHECK(n_tensors <= c.remaining() / 24, "{}: tensor count {} exceeds the file", where,
                n_tensors);
  std::set<std::string> keys;
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.str("a metadata key");
    AMALGAM_CHECK(!key.empty(), "{}: metadata key {} is empty", where, k);
    AMALGAM_CHECK(keys.insert(key).second, "{}: duplicate metadata key '{}'", where, key);
    const uint32_t type = c.pod<uint32_t>("a value type");
    AMALGAM_CHECK(valid_value_type(type), "{}: key '{}' has invalid value type {}", where, key,
                  type);
    Value v = read_value(c, static_cast<ValueType>(type), where + ": key '" + key + "'");
    metadata_.emplace_back(std::move(key), std::move(v));
  }
  if (const Value* a = find("general.alignment")) {
    AMALGAM_CHECK(a->type == ValueType::kU32, "{}: general.alignment must be u32", where);
    alignment_ = a->u;
    AMALGAM_CHECK(alignment_ > 0 && (alignment_ & (alignment_ - 1)) == 0,
                  "{}: general.alignment {} is not a power of two", where, alignment_);
  }
  std::set<std::string> names;
  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorInfo t;
    t.name = c.str("a tensor name");
    AMALGAM_CHECK(names.insert(t.name).second, "{}: duplicate tensor '{}'", where, t.name);
    const uint32_t n_dims = c.pod<uint32_t>("a tensor rank");
    AMALGAM_CHECK(n_dims >= 1 && n_dims <= 4, "{}: tensor '{}' has {} dimensions (1 to 4)", where,
                  t.name, n_dims);
    std::vector<int64_t> ne(n_dims);
    int64_t numel = 1;
    for (auto& d : ne) {
      const uint64_t v = c.pod<uint64_t>("a tensor dimension");
      AMALGAM_CHECK(v > 0 && v < (uint64_t{1} << 40), "{}: tensor '{}' has dimension {}", where,
                    t.name, v);
      d = static_cast<int64_t>(v);
      AMALGAM_CHECK(numel <= INT64_MAX / d, "{}: tensor '{}' has too many elements", where, t.name);
      numel *= d;
    }
    t.shape.assign(ne.rbegin(), ne.rend());
    const uint32_t raw_type = c.pod<uint32_t>("a tensor type");
    const auto tt = type_traits(raw_type);
    AMALGAM_CHECK(tt.has_value(),
                  "{}: tensor '{}' has ggml type {}, which amalgam does not read (F32, F16, BF16, "
                  "Q8_0, Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)",
                  where, t.name, raw_type);
    t.type = tt->type;
    AMALGAM_CHECK(ne[0] % tt->block == 0, "{}: tensor '{}': rows of {} are not whole {} blocks",
                  where, t.name, ne[0], tt->name);
    t.bytes = row_bytes(t.type, ne[0]) * static_cast<uint64_t>(numel / ne[0]);
    t.offset = c.pod<uint64_t>("a tensor offset");
    AMALGAM_CHECK(t.offset % alignment_ == 0, "{}: tensor '{}' offset {} is not aligned to {}",
                  where, t.name, t.offset, alignment_);
    tensors_.push_back(std::move(t));
  }
  data_offset_ = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  AMALGAM_CHECK(data_offset_ <= file_->size() || tensors_.empty(),
                "{}: truncated before its tensor data", where);
  const uint64_t data_size = file_->size() > data_offset_ ? file_->size() - data_offset_ : 0;
  std::vector<const TensorInfo*> by_offset;
  for (auto& t : tensors_) {
    AMALGAM_CHECK(t.offset <= data_size && t.bytes <= data_size - t.offset,
                  "{}: tensor '{}' ({} bytes at offset {}) extends past the end of the file", where,
                  t.name, t.bytes, t.offset);
    t.data = file_->data() + data_offset_ + t.offset;
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const TensorInfo& prev = *by_offset[k - 1];
    AMALGAM_CHECK(prev.offset + prev.bytes <= by_offset[k]->offset,
                  "{}: tensors '{}' and '{}' overlap", where, prev.name, by_offset[k]->name);
  }
}

const Value& GgufFile::require(const std::string& key) const {
  const Value* v = find(key);
  if (v == nullptr) fail("{}: missing GGUF key '{}'", path_.string(), key);
  return *v;
}

const TensorInfo* GgufFile::tensor(const std::string& name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

bool is_gguf_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  uint32_t magic = 0;
  if (!in.read(reinterpret_cast<char*>(&magic), 4)) return false;
  return magic == kMagic;
}

}  // namespace amalgam::gguf
