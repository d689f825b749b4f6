// A recipe as written (mergekit's MergeConfiguration), before it is checked against any model.
// Evolutionary search builds these directly instead of YAML text.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "recipe/diagnostics.h"
#include "recipe/param_setting.h"
#include "tensor/dtype.h"

namespace amalgam::recipe {

// A local checkpoint: a model directory or a .safetensors file, optionally with a PEFT LoRA
// adapter applied to it ("path+lora", or the dict form's `lora:`; the string form is split when
// the models are opened, since a directory name may hold '+'). Hub ids and revisions (path@rev)
// are refused.
struct ModelRef {
  std::string path;
  std::optional<std::string> lora;  // the dict form's `lora:`
  std::optional<std::string> override_architecture;
  Location at;
};

struct ModelDef {  // an entry of `models:`
  ModelRef model;
  ParamMap parameters;
  Location at;
};

struct SourceDef {  // an input slice: layers [start, end) of one model
  ModelRef model;
  std::array<int64_t, 2> layer_range = {0, 0};
  ParamMap parameters;
  Location at;
};

struct SliceDef {  // an output slice
  std::vector<SourceDef> sources;
  std::optional<ModelRef> base_model;  // overrides the recipe's base_model for this slice
  ParamMap parameters;
  Location at;
};

// Which vocabulary the output has. kDonor: no tokenizer configuration (the donor's files are
// copied, embeddings merged as they are); the others build the output vocabulary and map every
// model's embedding rows into it (mergekit's tokenizer_source / tokenizer.source).
enum class TokenizerChoice { kDonor, kBase, kModel, kUnion };

// Where a token's embedding row comes from for a model that lacks the token (for every model
// when the token is forced): `tokenizer.tokens.<token>.source`.
struct TokenSourceDef {
  enum class Kind { kModel, kModelToken, kZero };
  Kind kind = Kind::kModel;
  ModelRef model;                    // kModel, kModelToken
  std::optional<std::string> token;  // kModelToken: the row of this token of `model`...
  std::optional<int64_t> token_id;   // ... or the row with this id
  Location at;
};

struct TokenDef {  // an entry of `tokenizer.tokens`
  std::string token;
  std::optional<TokenSourceDef> source;  // none: the default rule (one model, base, mean)
  bool force = false;
  Location at;
};

struct Recipe {
  std::string where;  // the recipe's name in messages (its file name)
  std::string text;   // the YAML as given (one document's text for a stage of a multi-stage recipe)
  std::optional<std::string> name;  // `name:`, which labels a stage of a multi-stage recipe
  Location name_at;
  std::string merge_method;
  Location merge_method_at;
  std::vector<ModelDef> models;  // exactly one of models / slices is non-empty
  std::vector<SliceDef> slices;
  Location inputs_at;  // the models: or slices: key
  std::optional<ModelRef> base_model;
  ParamMap parameters;
  std::optional<tensor::DType> dtype;
  std::optional<tensor::DType> out_dtype;
  TokenizerChoice tokenizer = TokenizerChoice::kDonor;
  std::optional<ModelRef> tokenizer_model;  // for kModel
  Location tokenizer_at;
  std::optional<int64_t> pad_to_multiple_of;  // tokenizer.pad_to_multiple_of
  std::vector<TokenDef> tokens;               // tokenizer.tokens, in recipe order
};

// Parses YAML text into a Recipe; checks syntax, keys and value types only (no file access).
Recipe parse_recipe(const std::string& yaml_text, const std::string& where);
// Every document of a multi-document text (mergekit-multi's stages separated by ---), each with
// its own text; locations count lines from the start of the whole text.
std::vector<Recipe> parse_recipe_documents(const std::string& yaml_text, const std::string& where);

}  // namespace amalgam::recipe
