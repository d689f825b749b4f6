#include "align/activations.h"

#include "core/error.h"
#include "core/fs.h"
#include "infer/documents.h"
#include "tokenizer/tokenizer.h"

namespace amalgam::align {

std::vector<std::vector<int32_t>> calibration_rows(const std::filesystem::path& text,
                                                   const std::filesystem::path& model_dir,
                                                   int64_t rows, int64_t row_tokens) {
  AMALGAM_CHECK(rows > 0 && row_tokens > 0,
                "calibration needs a positive number of rows ({}) and "
                "tokens per row ({})",
                rows, row_tokens);
  const tokenizer::Tokenizer tok = tokenizer::Tokenizer::from_directory(model_dir);
  auto eos = tok.eos_id();
  if (!eos) fail("{}: the tokenizer has no EOS token to end documents with", model_dir.string());
  std::vector<std::string> docs = infer::split_documents(core::read_text_file(text), "\n\n");
  try {
    return infer::document_rows(tok, docs, *eos, rows, row_tokens);
  } catch (const Error& e) {
    fail("{}: too little calibration text for {} rows of {} tokens ({})", text.string(), rows,
         row_tokens, e.what());
  }
}

infer::Dumper dump_rows(const infer::Model& model, const std::vector<std::vector<int32_t>>& rows,
                        size_t first, size_t count, const std::vector<std::string>& selectors) {
  infer::KVCache cache = model.new_cache();
  infer::Dumper dump(selectors);
  infer::Batch batch;
  for (size_t r = first; r < first + count && r < rows.size(); ++r) {
    batch.add_sequence(rows[r], static_cast<int32_t>(r - first), 0, false);
  }
  infer::ForwardOptions options;
  options.dump = &dump;
  model.forward(batch, cache, options);
  return dump;
}

const infer::DumpTensor& dumped(const infer::Dumper& dump, const std::string& name) {
  auto it = dump.tensors().find(name);
  if (it == dump.tensors().end()) fail("the forward pass recorded no intermediate {}", name);
  return it->second;
}

}  // namespace amalgam::align
