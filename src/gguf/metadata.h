// GGUF metadata values: scalars of the thirteen value types and arrays of them. Arrays keep
// strings as strings and every number as a double (exact for all but 64-bit integers above
// 2^53, which no key amalgam reads holds).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "gguf/format.h"

namespace amalgam::gguf {

struct Value {
  ValueType type = ValueType::kU32;
  ValueType elem = ValueType::kU8;   // element type of an array
  uint64_t u = 0;                    // unsigned integers and bool
  int64_t i = 0;                     // signed integers
  double f = 0;                      // floats
  std::string s;                     // string
  std::vector<std::string> strings;  // array of strings
  std::vector<double> numbers;       // array of numbers (or bools)

  static Value u32(uint32_t v);
  static Value i32(int32_t v);
  static Value f32(float v);
  static Value boolean(bool v);
  static Value str(std::string v);
  static Value string_array(std::vector<std::string> v);
  static Value number_array(ValueType elem, std::vector<double> v);

  bool is_integer() const;
  // The value as an integer / float / string for a reader that accepts any fitting type; fails
  // naming `key` otherwise.
  int64_t as_int(const std::string& key) const;
  double as_float(const std::string& key) const;
  const std::string& as_string(const std::string& key) const;
  // A short human rendering (arrays: type, count and the first few items).
  std::string summary() const;
};

// In file order.
using Metadata = std::vector<std::pair<std::string, Value>>;
const Value* find(const Metadata& m, const std::string& key);

}  // namespace amalgam::gguf
