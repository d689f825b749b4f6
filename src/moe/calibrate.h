// gate_mode: calibrated. Each layer's router is fitted by multinomial logistic regression on its
// real input: the post-attention-norm hidden state (the engine's ffn_norm.L) of every token of
// each expert's labelled text, labelled with that expert. Layers are fitted in order, each on
// the states the MoE produces with the routers already fitted below it, so the router of layer l
// sees what it will see at inference. BOS tokens (position 0) are left out: their states are the
// same for every expert. Every n-th sample of each expert is held out (n = 1 / holdout) and the
// fitted router's top-1 accuracy on its tokens is reported per layer.
// BOS is shared by every expert's text, and later tokens attend to it, so where it goes matters
// (an expert's skill can depend on its own BOS state). `bos: auto` chooses, layer by layer, the
// expert BOS is routed to: each candidate is fitted (with the layers above refitted) and the one
// with the lowest held-out next-token nll, averaged over experts, is kept (E * L * (L + 1) / 2
// fits instead of L).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "merge/sink.h"
#include "moe/config.h"
#include "tensor/dtype.h"
#include "tokenizer/tokenizer.h"

namespace amalgam::moe {

// Expert e's calibration texts: its calibration_data file (text: one sample per non-empty line;
// .json: an array; .jsonl: one item per line; an item is a string, {"text"} or
// {"prompt", "answer"}, joined), else its positive prompts. Fails naming a missing or empty file.
std::vector<std::string> calibration_texts(const ExpertConfig& expert);
// The samples of such a file (also read by amalgam score and embed).
std::vector<std::string> read_samples(const std::string& path);

struct LayerCalibration {
  int64_t layer = 0;
  int64_t train_tokens = 0;
  int64_t heldout_tokens = 0;
  double train_accuracy = 0.0;
  double heldout_accuracy = 0.0;  // NaN when nothing is held out
  int64_t iterations = 0;
  int32_t bos_expert = -1;  // the expert BOS was labelled with (bos: auto), else -1
};

// Fits the routers of the MoE held in `sink` (its router tensors at router_index[l]) in place.
std::vector<LayerCalibration> calibrate_routers(const io::ModelConfig& moe_config,
                                                merge::MemorySink& sink,
                                                const std::vector<size_t>& router_index,
                                                tensor::DType router_dtype,
                                                const tokenizer::Tokenizer& tokenizer,
                                                const MoeConfig& config);

}  // namespace amalgam::moe
