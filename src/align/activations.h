// Calibration text and the engine's intermediate activations, streamed row batch by row batch
// (infer::Dumper names them; no engine change is needed).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "infer/dump.h"
#include "infer/model.h"

namespace amalgam::align {

// `rows` rows of `row_tokens` + 1 tokens from a text file (documents separated by blank lines,
// each [BOS] text EOS, as the zoo's document rows), with the tokenizer of model directory
// `model_dir`. Fails naming the file when it holds too few tokens.
std::vector<std::vector<int32_t>> calibration_rows(const std::filesystem::path& text,
                                                   const std::filesystem::path& model_dir,
                                                   int64_t rows, int64_t row_tokens);

// One forward pass over rows [first, first + count), each its own sequence, recording the
// selected intermediates.
infer::Dumper dump_rows(const infer::Model& model, const std::vector<std::vector<int32_t>>& rows,
                        size_t first, size_t count, const std::vector<std::string>& selectors);

// The recorded tensor `name`; fails naming it when absent.
const infer::DumpTensor& dumped(const infer::Dumper& dump, const std::string& name);

}  // namespace amalgam::align
