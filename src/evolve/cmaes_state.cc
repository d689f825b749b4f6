// CMA-ES state <-> JSON. Doubles are written as C99 hexadecimal floating-point strings
// ("-0x1.8p+1", "inf"): exact, locale-free, and able to hold the +inf of "nothing evaluated yet".
// Generator words are 16-digit hex strings (JSON readers other than ours may round integers above
// 2^53). The file is untrusted on the way back: every key, size and value is checked.
#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "evolve/cmaes.h"

namespace amalgam::evolve {

namespace {

using nlohmann::json;

constexpr const char* kFormat = "amalgam-cmaes";
constexpr int kVersion = 1;

std::string encode_double(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[64];
  const auto result =
      std::to_chars(buffer, buffer + sizeof(buffer), std::fabs(value), std::chars_format::hex);
  return std::string(std::signbit(value) ? "-0x" : "0x") + std::string(buffer, result.ptr);
}

json encode_doubles(const std::vector<double>& values) {
  json out = json::array();
  for (double v : values) out.push_back(encode_double(v));
  return out;
}

std::string encode_word(uint64_t word) { return fmt::format("{:016x}", word); }

// Reads the JSON fields of one state, naming `where` and the key in every error.
class Reader {
 public:
  Reader(const json& root, const std::string& where) : root_(root), where_(where) {
    AMALGAM_CHECK(root.is_object(), "{}: a CMA-ES state must be a JSON object", where);
  }

  [[noreturn]] void bad(const std::string& key, const std::string& problem) const {
    fail("{}: CMA-ES state key '{}': {}", where_, key, problem);
  }

  const json& at(const std::string& key) const {
    const auto it = root_.find(key);
    if (it == root_.end()) bad(key, "missing");
    return *it;
  }

  int64_t integer(const std::string& key, int64_t min, int64_t max) const {
    const json& v = at(key);
    if (!v.is_number_integer()) bad(key, "expected an integer");
    const int64_t value = v.get<int64_t>();
    if (value < min || value > max)
      bad(key, fmt::format("{} is outside [{}, {}]", value, min, max));
    return value;
  }

  bool boolean(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_boolean()) bad(key, "expected true or false");
    return v.get<bool>();
  }

  std::string string(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_string()) bad(key, "expected a string");
    return v.get<std::string>();
  }

  double decode_double(const std::string& key, const json& v) const {
    if (!v.is_string()) bad(key, "expected a hexadecimal floating-point string");
    const std::string& text = v.get_ref<const std::string&>();
    const bool negative = !text.empty() && text[0] == '-';
    const std::string body = text.substr(negative ? 1 : 0);
    double value = 0;
    if (body == "inf") {
      value = std::numeric_limits<double>::infinity();
    } else {
      // from_chars takes no "0x" and would take a second sign after it: check both here.
      const bool hex_start = body.size() > 2 && body.compare(0, 2, "0x") == 0 &&
                             std::isxdigit(static_cast<unsigned char>(body[2]));
      const char* last = body.data() + body.size();
      const auto result =
          hex_start ? std::from_chars(body.data() + 2, last, value, std::chars_format::hex)
                    : std::from_chars_result{body.data(), std::errc::invalid_argument};
      if (!hex_start || result.ec != std::errc() || result.ptr != last) {
        bad(key, fmt::format("'{}' is not a hexadecimal floating-point number", text));
      }
    }
    return negative ? -value : value;
  }

  double number(const std::string& key) const { return decode_double(key, at(key)); }

  // An array of `size` doubles; size < 0 accepts any length.
  std::vector<double> numbers(const std::string& key, int64_t size) const {
    const json& v = at(key);
    if (!v.is_array()) bad(key, "expected an array");
    if (size >= 0 && static_cast<int64_t>(v.size()) != size) {
      bad(key, fmt::format("expected {} values, found {}", size, v.size()));
    }
    std::vector<double> out;
    out.reserve(v.size());
    for (const json& item : v) out.push_back(decode_double(key, item));
    return out;
  }

  uint64_t word(const std::string& key, const json& v) const {
    if (!v.is_string() || v.get_ref<const std::string&>().size() != 16) {
      bad(key, "expected a 16-digit hexadecimal string");
    }
    const std::string& text = v.get_ref<const std::string&>();
    uint64_t value = 0;
    const auto result = std::from_chars(text.data(), text.data() + text.size(), value, 16);
    if (result.ec != std::errc() || result.ptr != text.data() + text.size()) {
      bad(key, fmt::format("'{}' is not hexadecimal", text));
    }
    return value;
  }

 private:
  const json& root_;
  const std::string& where_;
};

}  // namespace

json CmaEs::to_json() const {
  const size_t n = mean_.size();
  json j;
  j["format"] = kFormat;
  j["version"] = kVersion;
  j["dimension"] = params_.dimension;
  j["population"] = params_.lambda;
  j["covariance"] = params_.separable ? "separable" : "full";
  j["flat_fitness_escape"] = options_.flat_fitness_escape;
  j["seed"] = encode_word(options_.seed);
  j["lower"] = encode_doubles(lower_);
  j["upper"] = encode_doubles(upper_);
  j["generation"] = generation_;
  j["mean"] = encode_doubles(mean_);
  j["sigma"] = encode_double(sigma_);
  j["ps"] = encode_doubles(ps_);
  j["pc"] = encode_doubles(pc_);
  if (params_.separable) {
    j["c"] = encode_doubles(c_);
  } else {
    // C is exactly symmetric: its lower triangle, row by row, is all of it.
    std::vector<double> lower_triangle;
    for (size_t i = 0; i < n; ++i) {
      for (size_t k = 0; k <= i; ++k) lower_triangle.push_back(c_[i * n + k]);
    }
    j["c"] = encode_doubles(lower_triangle);
    // B and D date from the last decomposition, not from the current C: both are state.
    j["decomposed_at"] = decomposed_at_;
    j["b"] = encode_doubles(b_);
    j["d"] = encode_doubles(d_);
  }
  json rng = json::array();
  for (uint64_t word : rng_) rng.push_back(encode_word(word));
  j["rng"] = rng;
  j["best_f"] = encode_double(best_f_);
  j["best_x"] = encode_doubles(best_x_);
  j["best_history"] = encode_doubles(best_history_);
  j["last_min"] = encode_double(last_min_);
  j["last_max"] = encode_double(last_max_);
  return j;
}

CmaEs CmaEs::from_json(const json& state, const std::string& where) {
  const Reader in(state, where);
  if (in.string("format") != kFormat) in.bad("format", fmt::format("expected '{}'", kFormat));
  if (in.integer("version", 0, 1000) != kVersion) {
    in.bad("version", fmt::format("this build reads version {}", kVersion));
  }
  // 2^26 keeps n^2 and every index product far inside int64 and size_t.
  const int64_t n = in.integer("dimension", 1, int64_t{1} << 26);
  const std::string covariance = in.string("covariance");
  if (covariance != "full" && covariance != "separable") {
    in.bad("covariance", "expected 'full' or 'separable'");
  }
  CmaEs es;
  es.options_.population = in.integer("population", 2, int64_t{1} << 30);
  es.options_.covariance =
      covariance == "full" ? CovarianceMode::kFull : CovarianceMode::kSeparable;
  es.options_.flat_fitness_escape = in.boolean("flat_fitness_escape");
  es.options_.seed = in.word("seed", in.at("seed"));
  es.params_ = cmaes_parameters(n, es.options_.population, es.options_.covariance);

  es.lower_ = in.numbers("lower", -1);
  es.upper_ = in.numbers("upper", -1);
  if (!(es.lower_.empty() && es.upper_.empty()) &&
      !(static_cast<int64_t>(es.lower_.size()) == n && es.upper_.size() == es.lower_.size())) {
    in.bad("lower", fmt::format("bounds need 0 or {} values each", n));
  }
  es.options_.lower = es.lower_;
  es.options_.upper = es.upper_;
  es.generation_ = in.integer("generation", 0, int64_t{1} << 50);
  es.mean_ = in.numbers("mean", n);
  es.sigma_ = in.number("sigma");
  es.ps_ = in.numbers("ps", n);
  es.pc_ = in.numbers("pc", n);
  if (es.params_.separable) {
    es.c_ = in.numbers("c", n);
    for (double c : es.c_) es.d_.push_back(std::sqrt(c));
  } else {
    const std::vector<double> lower_triangle = in.numbers("c", n * (n + 1) / 2);
    es.c_.assign(n * n, 0.0);
    size_t next = 0;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t k = 0; k <= i; ++k) {
        es.c_[i * n + k] = lower_triangle[next];
        es.c_[k * n + i] = lower_triangle[next++];
      }
    }
    es.decomposed_at_ = in.integer("decomposed_at", 0, es.generation_);
    es.b_ = in.numbers("b", n * n);
    es.d_ = in.numbers("d", n);
  }
  const json& rng = in.at("rng");
  if (!rng.is_array() || rng.size() != 4) in.bad("rng", "expected 4 words");
  for (size_t i = 0; i < 4; ++i) es.rng_[i] = in.word("rng", rng[i]);
  if (es.rng_ == std::array<uint64_t, 4>{}) in.bad("rng", "the all-zero state is invalid");
  es.best_f_ = in.number("best_f");
  es.best_x_ = in.numbers("best_x", -1);
  es.best_history_ = in.numbers("best_history", -1);
  es.last_min_ = in.number("last_min");
  es.last_max_ = in.number("last_max");
  es.check_state(where);
  return es;
}

// Values that would make the next ask() or tell() meaningless (or crash) are refused up front.
void CmaEs::check_state(const std::string& where) const {
  const size_t n = mean_.size();
  const auto bad = [&](const char* key, const std::string& problem) {
    fail("{}: CMA-ES state key '{}': {}", where, key, problem);
  };
  const auto all_finite = [](const std::vector<double>& v) {
    for (double x : v) {
      if (!std::isfinite(x)) return false;
    }
    return true;
  };
  for (size_t i = 0; i < lower_.size(); ++i) {
    if (!(lower_[i] < upper_[i])) bad("lower", fmt::format("bound {} is empty", i));
  }
  if (!all_finite(mean_)) bad("mean", "not finite");
  for (size_t i = 0; i < lower_.size(); ++i) {
    if (mean_[i] < lower_[i] || mean_[i] > upper_[i]) {
      bad("mean", fmt::format("coordinate {} lies outside its bounds", i));
    }
  }
  if (!(std::isfinite(sigma_) && sigma_ > 0)) bad("sigma", "must be positive and finite");
  if (!all_finite(ps_)) bad("ps", "not finite");
  if (!all_finite(pc_)) bad("pc", "not finite");
  if (!all_finite(c_)) bad("c", "not finite");
  for (size_t i = 0; i < n; ++i) {
    if (!(c_[params_.separable ? i : i * n + i] > 0)) bad("c", "diagonal must be positive");
  }
  if (!all_finite(b_)) bad("b", "not finite");
  for (double d : d_) {
    if (!(std::isfinite(d) && d > 0)) bad("d", "must be positive and finite");
  }
  if (!best_x_.empty() && best_x_.size() != n) bad("best_x", fmt::format("expected {} values", n));
  if (!all_finite(best_x_)) bad("best_x", "not finite");
  if (std::isnan(best_f_) || best_f_ == -std::numeric_limits<double>::infinity()) {
    bad("best_f", "must be a number or +inf");
  }
  if (static_cast<int64_t>(best_history_.size()) > params_.history_length) {
    bad("best_history", fmt::format("longer than the window of {}", params_.history_length));
  }
}

}  // namespace amalgam::evolve
