#include "io/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "io/torch_file.h"

namespace amalgam::io {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the format's own limit

uint64_t checked_u64(const json& v, const std::string& file, const std::string& tensor,
                     const char* what) {
  if (!v.is_number_unsigned()) {
    fail("{}: tensor '{}': {} must be a non-negative integer", file, tensor, what);
  }
  return v.get<uint64_t>();
}

// Adds the shards an index.json names to `files` (once each) and its tensors to `weight_map`.
void read_weight_map(const fs::path& index, std::vector<fs::path>& files,
                     std::map<std::string, std::string>& weight_map) {
  json j = core::read_json_file(index);
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    fail("{}: missing weight_map", index.string());
  }
  std::set<std::string> seen;
  for (auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string()) fail("{}: weight_map['{}'] must be a file name", index.string(), name);
    std::string f = file.get<std::string>();
    if (f.find('/') != std::string::npos || f.find("..") != std::string::npos) {
      fail("{}: weight_map['{}'] = '{}' is not a plain file name", index.string(), name, f);
    }
    weight_map[name] = f;
    if (seen.insert(f).second) files.push_back(index.parent_path() / f);
  }
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  if (auto torch_tensors = read_if_torch_file(file_)) {
    // State-dict order; tensors may share a storage, so ranges may overlap.
    tensors_ = std::move(*torch_tensors);
    for (size_t i = 0; i < tensors_.size(); ++i) by_name_[tensors_[i].name] = i;
    return;
  }
  const uint64_t size = file_.size();
  if (size < 8) fail("{}: not a safetensors file (only {} bytes)", path, size);
  uint64_t header_len = 0;
  std::memcpy(&header_len, file_.data(), 8);  // little-endian u64; x86/ARM hosts are LE
  if (header_len > kMaxHeaderBytes) {
    fail("{}: not a safetensors file (its first 8 bytes give a header length of {}; a safetensors "
         "file starts with its JSON header's length)",
         path, header_len);
  }
  if (header_len > size - 8) {
    fail("{}: truncated: header needs {} bytes but the file has {}", path, header_len, size - 8);
  }
  data_start_ = 8 + header_len;
  const uint64_t data_size = size - data_start_;
  std::string text(reinterpret_cast<const char*>(file_.data() + 8), header_len);
  if (header_len == 0 || text[0] != '{') {
    fail("{}: not a safetensors file (no JSON header after the length)", path);
  }
  json header = core::parse_json_strict(text, path);
  if (!header.is_object()) fail("{}: header is not a JSON object", path);

  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail("{}: __metadata__ must be an object", path);
      for (auto& [k, v] : entry.items()) {
        if (!v.is_string()) fail("{}: __metadata__ value '{}' must be a string", path, k);
        metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets")) {
      fail("{}: tensor '{}': entry needs dtype, shape and data_offsets", path, name);
    }
    if (name.empty()) fail("{}: a tensor has an empty name", path);
    TensorInfo info;
    info.name = name;
    if (!entry["dtype"].is_string()) fail("{}: tensor '{}': dtype must be a string", path, name);
    auto dtype = tensor::parse_safetensors_dtype(entry["dtype"].get<std::string>());
    if (!dtype) fail("{}: tensor '{}': unknown dtype {}", path, name, entry["dtype"].dump());
    info.dtype = *dtype;
    if (!entry["shape"].is_array()) fail("{}: tensor '{}': shape must be a list", path, name);
    uint64_t count = 1;
    for (const auto& d : entry["shape"]) {
      uint64_t dim = checked_u64(d, path, name, "shape entry");
      if (dim != 0 && count > std::numeric_limits<uint64_t>::max() / dim / 8) {
        fail("{}: tensor '{}': shape overflows", path, name);
      }
      count *= dim;
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2) {
      fail("{}: tensor '{}': data_offsets must be [begin, end]", path, name);
    }
    info.begin = checked_u64(offsets[0], path, name, "data_offsets");
    info.end = checked_u64(offsets[1], path, name, "data_offsets");
    if (info.end < info.begin) fail("{}: tensor '{}': data_offsets end < begin", path, name);
    if (info.end > data_size) {
      fail("{}: truncated or corrupt: tensor '{}' ends at byte {} but the data section has {}",
           path, name, info.end, data_size);
    }
    if (info.end - info.begin != count * tensor::dtype_size(info.dtype)) {
      fail("{}: tensor '{}': {} bytes stored but {} {} needs {}", path, name,
           info.end - info.begin, tensor::dtype_name(info.dtype), tensor::shape_string(info.shape),
           count * tensor::dtype_size(info.dtype));
    }
    tensors_.push_back(std::move(info));
  }
  std::sort(tensors_.begin(), tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  uint64_t cursor = 0;
  for (const auto& t : tensors_) {
    if (t.begin < cursor) fail("{}: tensor '{}' overlaps the previous tensor", path, t.name);
    if (t.begin > cursor) fail("{}: gap in the data section before tensor '{}'", path, t.name);
    cursor = t.end;
  }
  if (cursor != data_size) {
    fail("{}: {} bytes after the last tensor (a safetensors data section holds only its tensors; "
         "the file is corrupt or was appended to)",
         path, data_size - cursor);
  }
  for (size_t i = 0; i < tensors_.size(); ++i) by_name_[tensors_[i].name] = i;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

tensor::TensorView SafetensorsFile::view(const TensorInfo& info) const {
  return tensor::TensorView{info.dtype, info.shape, file_.data() + data_start_ + info.begin};
}

void SafetensorsFile::read_data(const TensorInfo& info, uint64_t offset, size_t n,
                                uint8_t* dst) const {
  if (offset > info.end - info.begin || n > info.end - info.begin - offset) {
    fail("{}: tensor '{}': read outside its data", path(), info.name);
  }
  file_.read_at(data_start_ + info.begin + offset, n, dst);
}

Checkpoint::Checkpoint(const fs::path& path) : path_(path) {
  std::vector<fs::path> files;
  std::map<std::string, std::string> weight_map;  // from index.json, to cross-check
  if (fs::is_regular_file(path)) {
    dir_ = path.parent_path();
    files.push_back(path);
  } else if (fs::is_directory(path)) {
    dir_ = path;
    // The first of these that exists wins (mergekit's order): safetensors before PyTorch pickles.
    bool found = false;
    for (const char* base : {"model.safetensors", "pytorch_model.bin"}) {
      const fs::path single = path / base;
      const fs::path index = path / (std::string(base) + ".index.json");
      if (fs::exists(single)) {
        files.push_back(single);
      } else if (fs::exists(index)) {
        read_weight_map(index, files, weight_map);
      } else {
        continue;
      }
      found = true;
      break;
    }
    if (!found) {
      fail("{}: no model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
           "pytorch_model.bin.index.json",
           path.string());
    }
  } else {
    fail("{}: no such file or directory", path.string());
  }
  for (const auto& f : files) {
    shards_.push_back(std::make_unique<SafetensorsFile>(f.string()));
    size_t shard = shards_.size() - 1;
    for (const auto& info : shards_.back()->tensors()) {
      if (!index_.emplace(info.name, Entry{shard, &info}).second) {
        fail("{}: tensor '{}' appears in two shards", f.string(), info.name);
      }
    }
  }
  for (const auto& [name, file] : weight_map) {
    auto it = index_.find(name);
    if (it == index_.end()) {
      fail("{}: index lists tensor '{}' in {} but that shard lacks it", path.string(), name, file);
    }
    if (fs::path(shards_[it->second.shard]->path()).filename() != file) {
      fail("{}: index puts tensor '{}' in {} but it is in {}", path.string(), name, file,
           shards_[it->second.shard]->path());
    }
  }
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, e] : index_) out.push_back(name);
  return out;
}

const Checkpoint::Entry& Checkpoint::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("{}: tensor '{}' not found", path_.string(), name);
  return it->second;
}

const TensorInfo& Checkpoint::info(const std::string& name) const { return *entry(name).info; }

tensor::TensorView Checkpoint::view(const std::string& name) const {
  const Entry& e = entry(name);
  return shards_[e.shard]->view(*e.info);
}

const SafetensorsFile& Checkpoint::shard_of(const std::string& name) const {
  return *shards_[entry(name).shard];
}

tensor::Tensor Checkpoint::load_f32(const std::string& name) const {
  tensor::TensorView v = view(name);
  if (!tensor::is_float_dtype(v.dtype)) {
    fail("{}: tensor '{}' has dtype {}, which cannot be merged", shard_of(name).path(), name,
         tensor::dtype_name(v.dtype));
  }
  return tensor::to_tensor(v);
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, e] : index_) total += e.info->end - e.info->begin;
  return total;
}

}  // namespace amalgam::io
