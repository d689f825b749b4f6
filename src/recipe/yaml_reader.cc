#include "recipe/yaml_reader.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <set>

namespace amalgam::recipe {

namespace {

constexpr const char* kSettingForms =
    "a parameter is a number, true/false, a list of numbers (a gradient across the layers of a "
    "slice), a list of true/false (a step function), or a list of {filter: ..., value: ...}";

// Plain (unquoted) scalars are typed by their text as PyYAML does; quoted ones are strings.
bool is_plain(const yaml::Node& node) { return node.is_scalar() && node.plain(); }

std::optional<double> parse_number(const std::string& text) {
  if (text.empty()) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::optional<double> as_number(const yaml::Node& node) {
  if (!node.is_scalar()) return std::nullopt;
  const std::string& tag = node.tag();
  if (!node.plain() && tag != "tag:yaml.org,2002:float" && tag != "tag:yaml.org,2002:int") {
    return std::nullopt;
  }
  return parse_number(node.scalar());
}

std::optional<bool> as_bool(const yaml::Node& node) {
  if (!node.is_scalar()) return std::nullopt;
  if (!is_plain(node) && node.tag() != "tag:yaml.org,2002:bool") return std::nullopt;
  static const std::set<std::string> kTrue = {"true", "True", "TRUE", "yes", "Yes",
                                              "YES",  "on",   "On",   "ON"};
  static const std::set<std::string> kFalse = {"false", "False", "FALSE", "no", "No",
                                               "NO",    "off",   "Off",   "OFF"};
  if (kTrue.count(node.scalar())) return true;
  if (kFalse.count(node.scalar())) return false;
  return std::nullopt;
}

}  // namespace

Location YamlReader::location(const yaml::Node& node) { return {node.line(), node.column()}; }

std::vector<YamlReader::Entry> YamlReader::entries(const yaml::Node& map,
                                                   const std::string& path) const {
  if (!map.is_map()) {
    fail_at(where_, location(map), "{} must be a mapping of keys to values", path);
  }
  std::vector<Entry> out;
  std::set<std::string> seen;
  for (const auto& [k, v] : map.pairs()) {
    const Location at = location(k);
    if (!k.is_scalar()) fail_at(where_, at, "{}: keys must be plain names", path);
    std::string key = k.scalar();
    if (!seen.insert(key).second) {
      fail_at(where_, at, "{}: key '{}' is given twice; keep one", path, key);
    }
    out.push_back(Entry{std::move(key), v, at});
  }
  return out;
}

void YamlReader::check_keys(const std::vector<Entry>& entries,
                            const std::vector<std::string>& allowed,
                            const std::string& path) const {
  for (const auto& e : entries) {
    bool ok = false;
    for (const auto& a : allowed) ok = ok || a == e.key;
    if (!ok) {
      fail_at(where_, e.at, "unknown key '{}' in {}{}; allowed keys: {}", e.key, path,
              did_you_mean(e.key, allowed), join(allowed));
    }
  }
}

std::string YamlReader::string(const yaml::Node& node, const std::string& path) const {
  if (!node.is_scalar()) fail_at(where_, location(node), "{} must be a string", path);
  return node.scalar();
}

int64_t YamlReader::integer(const yaml::Node& node, const std::string& path) const {
  auto v = as_number(node);
  if (!v || *v != std::floor(*v) || std::fabs(*v) > 1e15) {
    fail_at(where_, location(node), "{} must be an integer", path);
  }
  return static_cast<int64_t>(*v);
}

std::vector<yaml::Node> YamlReader::sequence(const yaml::Node& node, const std::string& path,
                                             const std::string& expected) const {
  if (!node.is_sequence())
    fail_at(where_, location(node), "{} must be a list of {}", path, expected);
  return node.items();
}

ParamValue YamlReader::value(const yaml::Node& node, const std::string& path) const {
  if (node.is_scalar()) {
    if (auto n = as_number(node)) return ParamValue{{*n}};
    if (auto b = as_bool(node)) return ParamValue{{*b ? 1.0 : 0.0}};
    if (!is_plain(node) && parse_number(node.scalar())) {
      fail_at(where_, location(node),
              "{}: \"{}\" is a quoted string, but parameter values are numbers: write {} without "
              "quotes",
              path, node.scalar(), node.scalar());
    }
    fail_at(where_, location(node), "{}: '{}' is not a number; {}", path, node.scalar(),
            kSettingForms);
  }
  if (node.is_sequence()) {
    if (node.size() == 0)
      fail_at(where_, location(node), "{}: empty list; {}", path, kSettingForms);
    ParamValue v;
    size_t numbers = 0, bools = 0;
    for (const auto& item : node.items()) {
      if (auto n = as_number(item)) {
        v.anchors.push_back(*n);
        ++numbers;
      } else if (auto b = as_bool(item)) {
        v.anchors.push_back(*b ? 1.0 : 0.0);
        ++bools;
      } else {
        fail_at(where_, location(item), "{}: list item is not a number or true/false; {}", path,
                kSettingForms);
      }
    }
    if (numbers && bools) {
      fail_at(where_, location(node),
              "{}: list mixes numbers and true/false; use numbers (a gradient) or booleans (a "
              "step function)",
              path);
    }
    v.steps = bools > 0;
    return v;
  }
  fail_at(where_, location(node), "{}: {}", path, kSettingForms);
}

ParamCondition YamlReader::condition(const yaml::Node& node, const std::string& path) const {
  auto items = entries(node, path);
  check_keys(items, {"filter", "value"}, path);
  ParamCondition c;
  bool has_value = false;
  for (const auto& e : items) {
    if (e.key == "filter") {
      if (!e.value.is_null()) c.filter = string(e.value, path + ".filter");
    } else {
      c.value = value(e.value, path + ".value");
      has_value = true;
    }
  }
  if (!has_value) fail_at(where_, location(node), "{}: conditional without a 'value'", path);
  return c;
}

ParamSetting YamlReader::setting(const yaml::Node& node, const std::string& path) const {
  ParamSetting s;
  s.at = location(node);
  if (node.is_null()) return s;  // null: unset at this level, as in mergekit
  if (node.is_map()) {
    s.conditions.push_back(condition(node, path));
    return s;
  }
  if (node.is_sequence() && node.size() > 0 && node[0].is_map()) {
    size_t i = 0;
    for (const auto& item : node.items()) {
      const std::string item_path = fmt::format("{}[{}]", path, i++);
      if (!item.is_map()) {
        fail_at(where_, location(item),
                "{}: a list of conditionals must hold only {{filter: ..., value: ...}} items",
                item_path);
      }
      s.conditions.push_back(condition(item, item_path));
    }
    return s;
  }
  s.conditions.push_back(ParamCondition{std::nullopt, value(node, path)});
  return s;
}

ParamMap YamlReader::parameters(const yaml::Node& node, const std::string& path) const {
  ParamMap out;
  if (node.is_null()) return out;
  for (const auto& e : entries(node, path)) {
    out.emplace(e.key, setting(e.value, path + "." + e.key));
  }
  return out;
}

ModelRef YamlReader::model_ref(const yaml::Node& node, const std::string& path) const {
  ModelRef ref;
  ref.at = location(node);
  if (node.is_scalar()) {
    ref.path = node.scalar();
  } else if (node.is_map()) {
    // mergekit's dict form: {model: {path, revision} | path, lora, override_architecture}.
    auto items = entries(node, path);
    check_keys(items, {"model", "lora", "override_architecture"}, path);
    for (const auto& e : items) {
      const std::string p = path + "." + e.key;
      if (e.key == "model") {
        if (e.value.is_map()) {
          auto inner = entries(e.value, p);
          check_keys(inner, {"path", "revision"}, p);
          for (const auto& i : inner) {
            if (i.key == "path") ref.path = string(i.value, p + ".path");
            if (i.key == "revision" && !i.value.is_null()) {
              fail_at(where_, i.at,
                      "{}.revision: revisions are not supported; amalgam reads local checkpoints "
                      "only: download that revision and give its directory as the path",
                      p);
            }
          }
        } else {
          ref.path = string(e.value, p);
        }
      } else if (e.key == "lora") {
        if (e.value.is_map()) {  // {path, revision}, as `model:`
          auto inner = entries(e.value, p);
          check_keys(inner, {"path", "revision"}, p);
          for (const auto& i : inner) {
            if (i.key == "path") ref.lora = string(i.value, p + ".path");
            if (i.key == "revision" && !i.value.is_null()) {
              fail_at(where_, i.at,
                      "{}.revision: revisions are not supported; amalgam reads local adapters "
                      "only: download that revision and give its directory as the path",
                      p);
            }
          }
        } else if (!e.value.is_null()) {
          ref.lora = string(e.value, p);
        }
        if (ref.lora && ref.lora->empty()) fail_at(where_, e.at, "{}: empty adapter path", p);
      } else {
        if (!e.value.is_null()) ref.override_architecture = string(e.value, p);
      }
    }
  } else {
    fail_at(where_, location(node), "{} must be a model path (a string)", path);
  }
  if (ref.path.empty()) fail_at(where_, ref.at, "{}: empty model path", path);
  for (char c : ref.path) {
    if (static_cast<unsigned char>(c) < 0x20) {
      fail_at(where_, ref.at,
              "{}: the model path contains a control character (a tab or newline); inside double "
              "quotes a backslash starts an escape (\\t is a tab): write Windows paths with "
              "forward slashes or in single quotes",
              path);
    }
  }
  // Recipes written on Windows separate directories with backslashes, which no one puts in a
  // file name on the systems amalgam runs on.
  std::replace(ref.path.begin(), ref.path.end(), '\\', '/');
  return ref;
}

}  // namespace amalgam::recipe
