// Tokenizer merging (mergekit's tokenizer_source / tokenizer block): the output vocabulary
// (the base's, stripped of tokens beyond its config vocab_size; a model's; or the union of all
// of them) and, for every model, where each output token's embedding row comes from. The result
// is data for the plan: per embedding source a merge::RowMap the executor applies while it
// reads rows, and the tokenizer files to write.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "merge/plan.h"
#include "recipe/model_set.h"
#include "recipe/schema.h"

namespace amalgam::recipe {

class VocabMerge {
 public:
  // Reads every model's tokenizer.json (headers and JSON only, no weights). `base` is the
  // recipe's base model, `donor` the model whose tokenizer is the starting point when there is
  // none, `source` the model whose tokenizer files are copied besides tokenizer.json.
  VocabMerge(const Recipe& recipe, const ModelSet& models, std::optional<size_t> base, size_t donor,
             size_t source);
  ~VocabMerge();

  // False when every model already has exactly the output vocabulary and nothing is forced:
  // embeddings are merged as they are and the tokenizer files are copied unchanged.
  bool changes_embeddings() const;
  // Output embedding rows: the vocabulary padded to pad_to_multiple_of.
  int64_t rows() const;
  // The row maps of one embedding tensor whose source s reads model `models[s]`, a tensor of
  // `input_rows[s]` rows; `tensor` names it in messages.
  std::vector<std::shared_ptr<const merge::RowMap>> row_maps(const std::vector<size_t>& models,
                                                             const std::vector<int64_t>& input_rows,
                                                             const std::string& tensor) const;
  // The tokenizer.json (and tokenizer_config.json) to write; null when changes_embeddings() is
  // false.
  std::shared_ptr<const merge::BuiltTokenizer> built_tokenizer() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace amalgam::recipe
