// Layer swapping (Bandarkar et al. 2024, spec algorithms.md section 6) as a recipe form:
//
//   layer_swap:
//     base: math-expert          # kept in the middle; embeddings, final norm and lm_head
//     donor: language-expert     # its bottom and top layers replace the base's
//     bottom: 4                  # donor's bottom N layers
//     top: 1                     # donor's top M layers
//     transition: 1              # optional: layers between each swapped zone and the middle
//     transition_weight: 0.5     # optional: the donor's share in those layers (linear average)
//   dtype: bfloat16              # optional, as in any recipe (also out_dtype, tokenizer_source)
//
// expands to the equivalent mergekit slices recipe (merge_method linear, one slice per zone,
// filters that keep the base's embed_tokens, model.norm and lm_head), which is what runs.
#pragma once

#include <filesystem>
#include <string>

namespace amalgam::recipe {

// Whether the YAML text is a layer_swap recipe (a mapping with a top-level layer_swap key).
bool is_layer_swap(const std::string& yaml_text);

// The slices recipe equivalent to a layer_swap recipe. Reads the base's and donor's config.json
// (relative paths against base_dir) for their layer counts. Errors name `where` and the key.
std::string expand_layer_swap(const std::string& yaml_text, const std::string& where,
                              const std::filesystem::path& base_dir = ".");

}  // namespace amalgam::recipe
