// Typed, located access to the YAML nodes of a recipe. Every failure names the recipe, the line
// and column, and the key path (e.g. "slices[1].sources[0].layer_range").
#pragma once

#include <string>
#include <vector>

#include "core/yaml.h"
#include "recipe/param_setting.h"
#include "recipe/schema.h"

namespace amalgam::recipe {

class YamlReader {
 public:
  explicit YamlReader(std::string where) : where_(std::move(where)) {}

  const std::string& where() const { return where_; }
  static Location location(const yaml::Node& node);

  // Map entries in order, with their key locations. Fails on a non-map, a non-scalar key or a
  // duplicated key (PyYAML would silently keep the last one).
  struct Entry {
    std::string key;
    yaml::Node value;
    Location at;
  };
  std::vector<Entry> entries(const yaml::Node& map, const std::string& path) const;
  // Fails naming the first key not in `allowed`, with a did-you-mean suggestion.
  void check_keys(const std::vector<Entry>& entries, const std::vector<std::string>& allowed,
                  const std::string& path) const;

  std::string string(const yaml::Node& node, const std::string& path) const;
  int64_t integer(const yaml::Node& node, const std::string& path) const;
  std::vector<yaml::Node> sequence(const yaml::Node& node, const std::string& path,
                                   const std::string& expected) const;

  ParamMap parameters(const yaml::Node& node, const std::string& path) const;
  ParamSetting setting(const yaml::Node& node, const std::string& path) const;
  ModelRef model_ref(const yaml::Node& node, const std::string& path) const;

 private:
  ParamValue value(const yaml::Node& node, const std::string& path) const;
  ParamCondition condition(const yaml::Node& node, const std::string& path) const;

  std::string where_;
};

}  // namespace amalgam::recipe
