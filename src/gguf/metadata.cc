#include "gguf/metadata.h"

#include <fmt/format.h>

#include "core/error.h"

namespace amalgam::gguf {

Value Value::u32(uint32_t v) {
  Value out;
  out.type = ValueType::kU32;
  out.u = v;
  return out;
}

Value Value::i32(int32_t v) {
  Value out;
  out.type = ValueType::kI32;
  out.i = v;
  return out;
}

Value Value::f32(float v) {
  Value out;
  out.type = ValueType::kF32;
  out.f = v;
  return out;
}

Value Value::boolean(bool v) {
  Value out;
  out.type = ValueType::kBool;
  out.u = v ? 1 : 0;
  return out;
}

Value Value::str(std::string v) {
  Value out;
  out.type = ValueType::kString;
  out.s = std::move(v);
  return out;
}

Value Value::string_array(std::vector<std::string> v) {
  Value out;
  out.type = ValueType::kArray;
  out.elem = ValueType::kString;
  out.strings = std::move(v);
  return out;
}

Value Value::number_array(ValueType elem, std::vector<double> v) {
  Value out;
  out.type = ValueType::kArray;
  out.elem = elem;
  out.numbers = std::move(v);
  return out;
}

bool Value::is_integer() const {
  switch (type) {
    case ValueType::kU8:
    case ValueType::kU16:
    case ValueType::kU32:
    case ValueType::kU64:
    case ValueType::kI8:
    case ValueType::kI16:
    case ValueType::kI32:
    case ValueType::kI64:
      return true;
    default:
      return false;
  }
}

int64_t Value::as_int(const std::string& key) const {
  switch (type) {
    case ValueType::kU8:
    case ValueType::kU16:
    case ValueType::kU32:
    case ValueType::kU64:
      AMALGAM_CHECK(u <= static_cast<uint64_t>(INT64_MAX), "GGUF key '{}': {} is too large", key,
                    u);
      return static_cast<int64_t>(u);
    case ValueType::kI8:
    case ValueType::kI16:
    case ValueType::kI32:
    case ValueType::kI64:
      return i;
    default:
      fail("GGUF key '{}' has type {}, expected an integer", key, value_type_name(type));
  }
}

double Value::as_float(const std::string& key) const {
  if (type == ValueType::kF32 || type == ValueType::kF64) return f;
  if (is_integer()) return static_cast<double>(as_int(key));
  fail("GGUF key '{}' has type {}, expected a number", key, value_type_name(type));
}

const std::string& Value::as_string(const std::string& key) const {
  AMALGAM_CHECK(type == ValueType::kString, "GGUF key '{}' has type {}, expected a string", key,
                value_type_name(type));
  return s;
}

std::string Value::summary() const {
  switch (type) {
    case ValueType::kString: {
      std::string t = s.size() > 80 ? s.substr(0, 77) + "..." : s;
      for (auto& c : t) {
        if (c == '\n') c = ' ';
      }
      return fmt::format("\"{}\"", t);
    }
    case ValueType::kBool:
      return u ? "true" : "false";
    case ValueType::kF32:
    case ValueType::kF64:
      return fmt::format("{}", f);
    case ValueType::kArray: {
      const size_t n = elem == ValueType::kString ? strings.size() : numbers.size();
      std::string items;
      for (size_t k = 0; k < std::min<size_t>(n, 4); ++k) {
        items += k ? ", " : "";
        items += elem == ValueType::kString ? fmt::format("\"{}\"", strings[k])
                                            : fmt::format("{}", numbers[k]);
      }
      return fmt::format("[{} x {}] [{}{}]", value_type_name(elem), n, items, n > 4 ? ", ..." : "");
    }
    default:
      return is_integer()
                 ? fmt::format("{}", type == ValueType::kI8 || type == ValueType::kI16 ||
                                             type == ValueType::kI32 || type == ValueType::kI64
                                         ? i
                                         : static_cast<int64_t>(u))
                 : "?";
  }
}

const Value* find(const Metadata& m, const std::string& key) {
  for (const auto& [k, v] : m) {
    if (k == key) return &v;
  }
  return nullptr;
}

}  // namespace amalgam::gguf
