#include "gguf/convert.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numbers>

#include "core/error.h"
#include "core/log.h"
#include "gguf/quant.h"

namespace amalgam::gguf {

using arch::Role;

namespace {

bool is_ffn_down(Role r) {
  return r == Role::kFfnDown || r == Role::kExpertDown || r == Role::kFusedExpertsDown;
}

bool is_router(Role r) { return r == Role::kRouter || r == Role::kFusedRouter; }

// llama-quantize's choice of layers that get more bits in the _M mixes.
bool use_more_bits(int64_t layer, int64_t layers) {
  return layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;
}

// A 256-block type demoted for rows it does not divide, as llama-quantize does (Q4_K -> Q5_0,
// Q5_K -> Q5_1, Q6_K -> Q8_0), then F16 when even 32-blocks do not fit.
GgmlType fit_rows(GgmlType t, int64_t cols) {
  if (cols % traits(t).block == 0) return t;
  if (t == GgmlType::kQ4_K) t = GgmlType::kQ5_0;
  if (t == GgmlType::kQ5_K) t = GgmlType::kQ5_1;
  if (t == GgmlType::kQ6_K) t = GgmlType::kQ8_0;
  return cols % traits(t).block == 0 ? t : GgmlType::kF16;
}

GgmlType choose_type(Role role, int64_t layer, const std::vector<int64_t>& shape,
                     const ExportType& type, bool has_output, const io::ModelConfig& c) {
  if (shape.size() < 2 || is_router(role)) return GgmlType::kF32;
  const GgmlType base = type.base;
  if (base == GgmlType::kF32 || base == GgmlType::kF16 || base == GgmlType::kBF16) return base;
  const int64_t cols = shape.back();
  const bool mix =
      type.file_type == FileType::kMostlyQ4_K_M || type.file_type == FileType::kMostlyQ5_K_M;
  GgmlType t = base;
  if (role == Role::kOutput || (role == Role::kTokenEmbd && !has_output)) {
    // The output projection gets Q6_K (Q8_0 stays Q8_0), as llama-quantize does; with tied
    // embeddings token_embd plays that part.
    t = cols % traits(base).block != 0 ? GgmlType::kQ8_0
        : base == GgmlType::kQ8_0      ? GgmlType::kQ8_0
                                       : GgmlType::kQ6_K;
  } else if (role == Role::kAttnV) {
    if (mix && use_more_bits(layer, c.num_layers)) t = GgmlType::kQ6_K;
    if (c.num_experts == 8) t = GgmlType::kQ8_0;
  } else if (role == Role::kAttnK) {
    if (c.num_experts == 8) t = GgmlType::kQ8_0;
  } else if (is_ffn_down(role)) {
    if (mix && use_more_bits(layer, c.num_layers)) t = GgmlType::kQ6_K;
  }
  return fit_rows(t, cols);
}

// Llama 3.1 rope scaling as per-dimension frequency divisors (llama.cpp reads rope_freqs).
std::vector<float> llama3_rope_factors(const io::ModelConfig& c) {
  const auto& r = c.rope;
  const double old_ctx = r.original_max_position_embeddings > 0
                             ? static_cast<double>(r.original_max_position_embeddings)
                             : 8192.0;
  const double low_wavelen = old_ctx / r.low_freq_factor;
  const double high_wavelen = old_ctx / r.high_freq_factor;
  std::vector<float> out;
  for (int64_t i = 0; i < c.head_dim; i += 2) {
    const double freq = 1.0 / std::pow(r.theta, static_cast<double>(i) / c.head_dim);
    const double wavelen = 2 * std::numbers::pi / freq;
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(static_cast<float>(r.factor));
    } else {
      const double smooth =
          (old_ctx / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
      out.push_back(static_cast<float>(1.0 / ((1 - smooth) / r.factor + smooth)));
    }
  }
  return out;
}

int64_t rows_of(const tensor::Shape& s) {
  int64_t n = 1;
  for (size_t i = 0; i + 1 < s.size(); ++i) n *= s[i];
  return n;
}

}  // namespace

int64_t permuted_source_row(int64_t dest_row, int64_t rows_per_head) {
  const int64_t head = dest_row / rows_per_head, i = dest_row % rows_per_head;
  return head * rows_per_head + (i % 2) * (rows_per_head / 2) + i / 2;
}

int64_t permuted_dest_row(int64_t source_row, int64_t rows_per_head) {
  const int64_t head = source_row / rows_per_head, i = source_row % rows_per_head;
  const int64_t half = rows_per_head / 2;
  return head * rows_per_head + 2 * (i % half) + i / half;
}

ConversionPlan plan_conversion(const io::ModelConfig& c,
                               const std::vector<std::pair<std::string, tensor::Shape>>& hf,
                               const ExportType& type) {
  ConversionPlan plan;
  plan.arch = arch::find_arch_spec(c.architecture, c.model_type);
  if (plan.arch == nullptr) {
    std::string known;
    for (const auto& a : arch::arch_specs()) {
      if (a.gguf) known += fmt::format(" {}", a.architecture);
    }
    fail(
        "config.json: architecture '{}' (model_type '{}') cannot be exported to GGUF; "
        "supported:{}",
        c.architecture, c.model_type, known);
  }
  if (!plan.arch->gguf) {
    fail("config.json: architecture '{}' is run by amalgam but not yet exported to GGUF",
         c.architecture);
  }
  bool has_output = false;
  for (const auto& [name, shape] : hf) {
    const auto m = arch::match_hf_name(name);
    if (m && m->role == Role::kOutput) has_output = true;
  }
  std::map<std::string, size_t> index;  // GGUF name -> plan entry
  auto entry = [&](const std::string& name, std::vector<int64_t> shape, Role role,
                   int64_t layer) -> PlannedTensor& {
    auto it = index.find(name);
    if (it != index.end()) {
      AMALGAM_CHECK(plan.tensors[it->second].shape == shape,
                    "GGUF tensor '{}' gets sources of different shapes", name);
      return plan.tensors[it->second];
    }
    PlannedTensor t;
    t.name = name;
    t.shape = shape;
    t.type = choose_type(role, layer, shape, type, has_output, c);
    index.emplace(name, plan.tensors.size());
    plan.tensors.push_back(std::move(t));
    return plan.tensors.back();
  };
  for (const auto& [name, shape] : hf) {
    const auto m = arch::match_hf_name(name);
    if (!m) {
      if (name.ends_with("rotary_emb.inv_freq")) continue;  // recomputed by every runtime
      fail("tensor '{}' has no GGUF name for architecture {}", name, plan.arch->architecture);
    }
    const arch::TensorRole& role = arch::tensor_role(m->role);
    const int64_t L = m->layer;
    AMALGAM_CHECK(!shape.empty() && shape.size() <= 3, "tensor '{}' has shape {}", name,
                  tensor::shape_string(shape));
    switch (m->role) {
      case Role::kExpertGate:
      case Role::kExpertUp:
      case Role::kExpertDown: {
        AMALGAM_CHECK(shape.size() == 2 && c.num_experts > 0 && m->expert < c.num_experts,
                      "tensor '{}': expert {} of {} with shape {}", name, m->expert, c.num_experts,
                      tensor::shape_string(shape));
        PlannedTensor& t =
            entry(arch::gguf_name(m->role, L), {c.num_experts, shape[0], shape[1]}, m->role, L);
        t.pieces.push_back({name, -1, 0, shape[0], m->expert * shape[0]});
        break;
      }
      case Role::kFusedExpertsGateUp: {
        AMALGAM_CHECK(shape.size() == 3 && shape[1] % 2 == 0, "tensor '{}' has shape {}", name,
                      tensor::shape_string(shape));
        const int64_t E = shape[0], I = shape[1] / 2, D = shape[2];
        PlannedTensor& gate =
            entry(arch::gguf_name(Role::kExpertGate, L), {E, I, D}, Role::kExpertGate, L);
        for (int64_t e = 0; e < E; ++e) gate.pieces.push_back({name, e, 0, I, e * I});
        PlannedTensor& up =
            entry(arch::gguf_name(Role::kExpertUp, L), {E, I, D}, Role::kExpertUp, L);
        for (int64_t e = 0; e < E; ++e) up.pieces.push_back({name, e, I, I, e * I});
        break;
      }
      case Role::kFusedExpertsDown: {
        AMALGAM_CHECK(shape.size() == 3, "tensor '{}' has shape {}", name,
                      tensor::shape_string(shape));
        PlannedTensor& t = entry(arch::gguf_name(m->role, L), shape, m->role, L);
        for (int64_t e = 0; e < shape[0]; ++e) {
          t.pieces.push_back({name, e, 0, shape[1], e * shape[1]});
        }
        break;
      }
      default: {
        AMALGAM_CHECK(shape.size() <= 2, "tensor '{}' has shape {}", name,
                      tensor::shape_string(shape));
        PlannedTensor& t = entry(arch::gguf_name(m->role, L), shape, m->role, L);
        if (plan.arch->permute_qk && role.permute != arch::RowPermute::kNone) {
          t.permute = role.permute;
          t.heads = role.permute == arch::RowPermute::kQueryHeads ? c.num_heads : c.num_kv_heads;
          const int64_t rows = shape[0];
          AMALGAM_CHECK(t.heads > 0 && rows % t.heads == 0 && (rows / t.heads) % 2 == 0,
                        "tensor '{}': {} rows do not split into {} heads of even size", name, rows,
                        t.heads);
        }
        t.pieces.push_back({name, -1, 0, rows_of(shape), 0});
      }
    }
  }
  if (c.rope.type == "llama3") {
    PlannedTensor t;
    t.name = "rope_freqs.weight";
    t.values = llama3_rope_factors(c);
    t.shape = {static_cast<int64_t>(t.values.size())};
    t.type = GgmlType::kF32;
    plan.tensors.push_back(std::move(t));
  }
  // llama.cpp's order: embeddings, then the blocks layer by layer, then the output.
  auto rank = [](const std::string& n) -> std::pair<int, int64_t> {
    if (n.starts_with("token_embd") || n.starts_with("rope_freqs")) return {0, 0};
    if (n.starts_with("blk.")) return {1, std::stoll(n.substr(4))};
    return {2, n == "output.weight" ? 1 : 0};
  };
  std::stable_sort(
      plan.tensors.begin(), plan.tensors.end(),
      [&](const PlannedTensor& a, const PlannedTensor& b) { return rank(a.name) < rank(b.name); });
  // Every stacked tensor must have all its experts.
  for (const auto& t : plan.tensors) {
    if (!t.values.empty()) continue;
    int64_t rows = 0;
    for (const auto& p : t.pieces) rows += p.rows;
    const int64_t want = t.shape.size() == 1 ? 1 : rows_of(t.shape);
    AMALGAM_CHECK(rows == want, "GGUF tensor '{}': the checkpoint gives {} of its {} rows", t.name,
                  rows, want);
  }
  return plan;
}

Metadata model_metadata(const io::ModelConfig& c, const arch::ArchSpec& a, const ExportType& type,
                        const std::string& model_name) {
  Metadata m;
  const std::string p = std::string(a.gguf_arch) + ".";
  m.emplace_back("general.architecture", Value::str(std::string(a.gguf_arch)));
  m.emplace_back("general.type", Value::str("model"));
  m.emplace_back("general.name", Value::str(model_name));
  m.emplace_back("general.file_type", Value::u32(static_cast<uint32_t>(type.file_type)));
  m.emplace_back("general.quantization_version", Value::u32(2));
  for (const auto& key : arch::config_keys()) {
    const auto v = key.get(c);
    if (!v) continue;
    if (const auto* u = std::get_if<uint32_t>(&*v)) {
      m.emplace_back(p + std::string(key.key), Value::u32(*u));
    } else {
      m.emplace_back(p + std::string(key.key), Value::f32(std::get<float>(*v)));
    }
  }
  const auto& r = c.rope;
  if (r.type == "linear" || r.type == "yarn") {
    m.emplace_back(p + "rope.scaling.type", Value::str(r.type));
    m.emplace_back(p + "rope.scaling.factor", Value::f32(static_cast<float>(r.factor)));
    if (r.type == "yarn" && r.original_max_position_embeddings > 0) {
      m.emplace_back(p + "rope.scaling.original_context_length",
                     Value::u32(static_cast<uint32_t>(r.original_max_position_embeddings)));
    }
  } else if (r.type != "default" && r.type != "llama3") {
    fail("config.json: rope type '{}' has no GGUF equivalent amalgam writes", r.type);
  }
  return m;
}

void convert_piece(const PlannedTensor& t, const SourcePiece& p, const tensor::TensorView& src,
                   const std::function<void(uint64_t, const uint8_t*, size_t)>& out) {
  AMALGAM_CHECK(tensor::is_float_dtype(src.dtype),
                "tensor '{}' has dtype {}; GGUF export reads "
                "F32, F16 or BF16",
                p.hf, tensor::dtype_name(src.dtype));
  const int64_t cols = src.shape.back();
  AMALGAM_CHECK(cols == t.shape.back(), "tensor '{}' has rows of {}, GGUF tensor '{}' of {}", p.hf,
                cols, t.name, t.shape.back());
  const size_t esize = tensor::dtype_size(src.dtype);
  if (t.shape.size() == 1) {
    // Vectors (norms, biases) are F32; a permuted bias moves its elements as q/k move rows.
    std::vector<float> v(static_cast<size_t>(cols)), w(v.size());
    tensor::to_f32(src.dtype, static_cast<const uint8_t*>(src.data), v.data(), v.size());
    const int64_t per_head = t.permute != arch::RowPermute::kNone ? cols / t.heads : 1;
    for (int64_t i = 0; i < cols; ++i)
      w[i] = v[per_head > 1 ? permuted_source_row(i, per_head) : i];
    std::vector<uint8_t> bytes(row_bytes(t.type, cols));
    quantize_row(t.type, w.data(), cols, bytes.data());
    out(0, bytes.data(), bytes.size());
    return;
  }
  const int64_t matrix_rows = src.shape.size() == 3 ? src.shape[1] : rows_of(src.shape);
  const uint8_t* base = static_cast<const uint8_t*>(src.data);
  if (p.expert >= 0) base += static_cast<size_t>(p.expert * matrix_rows * cols) * esize;
  const uint64_t rb = row_bytes(t.type, cols);
  const int64_t rph = t.permute != arch::RowPermute::kNone ? p.rows / t.heads : 1;
  // About 4 MiB of output per chunk, whole heads when permuting.
  int64_t chunk =
      std::max<int64_t>(1, static_cast<int64_t>((4u << 20) / std::max<uint64_t>(rb, 1)));
  chunk = std::max<int64_t>(rph, chunk / rph * rph);
  std::vector<uint8_t> buffer;
  for (int64_t r0 = 0; r0 < p.rows; r0 += chunk) {
    const int64_t n = std::min(chunk, p.rows - r0);
    buffer.resize(static_cast<size_t>(n) * rb);
#pragma omp parallel
    {
      std::vector<float> row(static_cast<size_t>(cols));
#pragma omp for schedule(dynamic, 4)
      for (int64_t r = 0; r < n; ++r) {
        const int64_t dest = r0 + r;
        const int64_t from = rph > 1 ? permuted_source_row(dest, rph) : dest;
        tensor::to_f32(src.dtype, base + static_cast<size_t>((p.row_begin + from) * cols) * esize,
                       row.data(), static_cast<size_t>(cols));
        quantize_row(t.type, row.data(), cols, buffer.data() + static_cast<size_t>(r) * rb);
      }
    }
    out(static_cast<uint64_t>(p.dest_row + r0) * rb, buffer.data(), buffer.size());
  }
}

}  // namespace amalgam::gguf
