#include "gguf/format.h"

#include "core/error.h"

namespace amalgam::gguf {

namespace {

constexpr TypeTraits kTypes[] = {
    {GgmlType::kF32, "F32", 1, 4},       {GgmlType::kF16, "F16", 1, 2},
    {GgmlType::kBF16, "BF16", 1, 2},     {GgmlType::kQ8_0, "Q8_0", 32, 34},
    {GgmlType::kQ4_0, "Q4_0", 32, 18},   {GgmlType::kQ5_0, "Q5_0", 32, 22},
    {GgmlType::kQ5_1, "Q5_1", 32, 24},   {GgmlType::kQ4_K, "Q4_K", 256, 144},
    {GgmlType::kQ5_K, "Q5_K", 256, 176}, {GgmlType::kQ6_K, "Q6_K", 256, 210},
};

constexpr ExportType kExportTypes[] = {
    {"f32", FileType::kAllF32, GgmlType::kF32},
    {"f16", FileType::kMostlyF16, GgmlType::kF16},
    {"bf16", FileType::kMostlyBF16, GgmlType::kBF16},
    {"q8_0", FileType::kMostlyQ8_0, GgmlType::kQ8_0},
    {"q4_0", FileType::kMostlyQ4_0, GgmlType::kQ4_0},
    {"q4_k_m", FileType::kMostlyQ4_K_M, GgmlType::kQ4_K},
    {"q5_k_m", FileType::kMostlyQ5_K_M, GgmlType::kQ5_K},
    {"q6_k", FileType::kMostlyQ6_K, GgmlType::kQ6_K},
};

}  // namespace

std::string_view value_type_name(ValueType t) {
  static constexpr std::string_view kNames[] = {"u8",   "i8",  "u16",   "i16", "u32", "i32", "f32",
                                                "bool", "str", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

size_t value_type_size(ValueType t) {
  switch (t) {
    case ValueType::kU8:
    case ValueType::kI8:
    case ValueType::kBool:
      return 1;
    case ValueType::kU16:
    case ValueType::kI16:
      return 2;
    case ValueType::kU32:
    case ValueType::kI32:
    case ValueType::kF32:
      return 4;
    case ValueType::kU64:
    case ValueType::kI64:
    case ValueType::kF64:
      return 8;
    default:
      return 0;
  }
}

std::optional<TypeTraits> type_traits(uint32_t raw_type) {
  for (const auto& t : kTypes) {
    if (static_cast<uint32_t>(t.type) == raw_type) return t;
  }
  return std::nullopt;
}

const TypeTraits& traits(GgmlType type) {
  for (const auto& t : kTypes) {
    if (t.type == type) return t;
  }
  fail("internal: ggml type {} has no traits", static_cast<uint32_t>(type));
}

std::string_view type_name(GgmlType t) { return traits(t).name; }

uint64_t row_bytes(GgmlType type, int64_t n) {
  const TypeTraits& t = traits(type);
  AMALGAM_CHECK(n % t.block == 0, "{} elements are not a whole number of {} blocks of {}", n,
                t.name, t.block);
  return static_cast<uint64_t>(n / t.block) * t.block_bytes;
}

std::optional<ExportType> parse_export_type(std::string_view name) {
  for (const auto& t : kExportTypes) {
    if (t.name == name) return t;
  }
  return std::nullopt;
}

std::vector<std::string> export_type_names() {
  std::vector<std::string> out;
  for (const auto& t : kExportTypes) out.emplace_back(t.name);
  return out;
}

}  // namespace amalgam::gguf
