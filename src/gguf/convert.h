// Hugging Face checkpoint -> GGUF, as llama.cpp's convert_hf_to_gguf.py and llama-quantize do it:
// which GGUF tensors a checkpoint becomes (names from arch/roles.h, q/k rows permuted for the
// llama architecture, Mixtral experts stacked), which ggml type each gets for an export type
// (llama-quantize's Q4_K_M / Q5_K_M mixes), and the metadata (general.*, hyperparameters, rope
// scaling). The tokenizer metadata is in tokenizer_meta.h.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "arch/roles.h"
#include "gguf/format.h"
#include "gguf/metadata.h"
#include "io/hf_config.h"
#include "tensor/tensor.h"

namespace amalgam::gguf {

// Rows [row_begin, row_begin + rows) of a source tensor (of matrix `expert` of a stacked 3-D
// source, or -1) go to rows [dest_row, dest_row + rows) of the GGUF tensor (rows counted over
// all its leading dimensions).
struct SourcePiece {
  std::string hf;
  int64_t expert = -1;
  int64_t row_begin = 0;
  int64_t rows = 0;
  int64_t dest_row = 0;
};

struct PlannedTensor {
  std::string name;
  std::vector<int64_t> shape;  // outermost first
  GgmlType type = GgmlType::kF32;
  arch::RowPermute permute = arch::RowPermute::kNone;
  int64_t heads = 0;  // heads of a permuted tensor (rows per head = rows / heads)
  std::vector<SourcePiece> pieces;
  // Computed tensors (llama3 rope_freqs) carry their values instead of pieces.
  std::vector<float> values;
};

struct ConversionPlan {
  const arch::ArchSpec* arch = nullptr;
  std::vector<PlannedTensor> tensors;
};

// Plans every GGUF tensor from the checkpoint's tensor names and shapes. Fails naming a tensor
// that has no role, or a role missing its shape partner.
ConversionPlan plan_conversion(const io::ModelConfig& config,
                               const std::vector<std::pair<std::string, tensor::Shape>>& hf,
                               const ExportType& type);

// general.* and "<arch>.*" keys (file type, hyperparameters, rope scaling).
Metadata model_metadata(const io::ModelConfig& config, const arch::ArchSpec& arch,
                        const ExportType& type, const std::string& model_name);

// Rows of one source piece converted, permuted and quantised into the GGUF tensor: `out` receives
// (byte offset in the GGUF tensor, bytes) of consecutive chunks. Rows run in parallel.
void convert_piece(const PlannedTensor& t, const SourcePiece& p, const tensor::TensorView& src,
                   const std::function<void(uint64_t, const uint8_t*, size_t)>& out);

// The HF row a row of a permuted tensor comes from (and the inverse, used when reading GGUF).
int64_t permuted_source_row(int64_t dest_row, int64_t rows_per_head);
int64_t permuted_dest_row(int64_t source_row, int64_t rows_per_head);

}  // namespace amalgam::gguf
