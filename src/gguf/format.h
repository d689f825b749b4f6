// The GGUF container (version 3) and the ggml tensor types amalgam reads and writes: value types
// of the metadata, block sizes and bytes per block of each tensor type, llama.cpp's file types.
// Layout (ggml's docs/gguf.md): magic "GGUF", version, tensor count, metadata count, metadata
// key/value pairs, tensor infos (name, dims with ne[0] fastest, type, offset), padding to
// general.alignment, tensor data (each tensor aligned).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace amalgam::gguf {

inline constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian uint32
inline constexpr uint32_t kVersion = 3;
inline constexpr uint64_t kDefaultAlignment = 32;

enum class ValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
std::string_view value_type_name(ValueType t);
// Bytes of one scalar of this type (0 for string and array).
size_t value_type_size(ValueType t);

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

struct TypeTraits {
  GgmlType type;
  std::string_view name;
  int64_t block;       // elements per block
  size_t block_bytes;  // bytes per block
};

// nullopt for a type amalgam does not implement (the reader names it).
std::optional<TypeTraits> type_traits(uint32_t raw_type);
const TypeTraits& traits(GgmlType t);
std::string_view type_name(GgmlType t);
// Bytes of `n` elements (n must be a multiple of the block size).
uint64_t row_bytes(GgmlType t, int64_t n);

// A matrix in a block-quantised type: `rows` rows of row_bytes(type, cols) bytes each.
struct QuantizedMatrix {
  GgmlType type;
  int64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;
};

// llama.cpp's general.file_type (LLAMA_FTYPE_*).
enum class FileType : uint32_t {
  kAllF32 = 0,
  kMostlyF16 = 1,
  kMostlyQ4_0 = 2,
  kMostlyQ8_0 = 7,
  kMostlyQ4_K_M = 15,
  kMostlyQ5_K_M = 17,
  kMostlyQ6_K = 18,
  kMostlyBF16 = 32,
};

// An export target (--type): the file type and the default tensor type of its weights.
struct ExportType {
  std::string_view name;  // as --type spells it
  FileType file_type;
  GgmlType base;
};
// f32|f16|bf16|q8_0|q4_0|q4_k_m|q5_k_m|q6_k; nullopt for another name.
std::optional<ExportType> parse_export_type(std::string_view name);
std::vector<std::string> export_type_names();

}  // namespace amalgam::gguf
