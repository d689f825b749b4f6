// PyTorch checkpoints (pytorch_model.bin and its shards): torch.save zip archives, read through
// the restricted unpickler (io/torch_pickle.h) into the same TensorInfo records a safetensors
// header gives, so SafetensorsFile and Checkpoint serve both formats with zero-copy views.
#pragma once

#include <optional>
#include <vector>

#include "core/mapped_file.h"
#include "io/safetensors.h"

namespace amalgam::io {

// The tensors of `file` when it is a torch.save zip archive, in state-dict order, with begin/end
// as offsets into the file; std::nullopt when it is not a PyTorch file. Throws, naming the file,
// for legacy (pre-1.6) torch.save files, for .bin/.pt/.pth files that are no torch.save archive,
// and for anything in the archive that is not a plain state dict of contiguous tensors.
std::optional<std::vector<TensorInfo>> read_if_torch_file(const core::MappedFile& file);

}  // namespace amalgam::io
