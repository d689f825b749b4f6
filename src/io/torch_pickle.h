// A restricted unpickler for the data.pkl record of torch.save archives. It runs no code: it
// understands the few opcodes that pickle writes for a state dict (protocols 2 to 5) and the few
// globals such a pickle names (collections.OrderedDict, torch._utils._rebuild_tensor_v2/_v3,
// _rebuild_parameter, the torch storage classes and dtypes), and builds plain records of where
// each tensor's elements live. Any other global (os.system, builtins.eval, ...) or opcode is
// refused with a message naming the file and the global or opcode.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace amalgam::io {

struct PickledTensor {
  std::string name;
  std::string storage_key;     // the archive holds the storage as <prefix>/data/<key>
  uint64_t storage_bytes = 0;  // the storage's size as the pickle declares it
  tensor::DType dtype = tensor::DType::kF32;
  uint64_t offset = 0;  // in elements of `dtype`, into the storage
  tensor::Shape shape;
  std::vector<int64_t> stride;
};

// Runs `pickle` and returns the state dict it describes, in pickle order. A top-level dict
// holding a 'state_dict' dict is unwrapped (as mergekit does). `where` names the record in errors.
std::vector<PickledTensor> unpickle_state_dict(std::span<const uint8_t> pickle,
                                               const std::string& where);

}  // namespace amalgam::io
