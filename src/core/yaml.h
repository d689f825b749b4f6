// YAML documents read with libyaml (the C parser under PyYAML, so the same reader mergekit's
// recipes are written for) into an immutable tree of nodes with their positions.
//
// libyaml reports malformed text as an error with its position; the tree built from its events
// resolves aliases by sharing the anchored node (never copying it), refuses a document whose
// aliases would expand it past a million nodes (a "billion laughs" bomb) or that nests deeper
// than a thousand levels, and applies PyYAML's merge key ("<<: *defaults").
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace amalgam::yaml {

class Node {
 public:
  enum class Kind { kUndefined, kNull, kScalar, kSequence, kMap };

  Node() = default;  // undefined: what a lookup of a missing key returns

  Kind kind() const { return data_ ? data_->kind : Kind::kUndefined; }
  explicit operator bool() const { return data_ != nullptr; }
  bool is_null() const { return kind() == Kind::kNull; }
  bool is_scalar() const { return kind() == Kind::kScalar; }
  bool is_sequence() const { return kind() == Kind::kSequence; }
  bool is_map() const { return kind() == Kind::kMap; }

  // A scalar's text ("" for other kinds).
  const std::string& scalar() const;
  // The explicit tag, resolved ("tag:yaml.org,2002:float" for "!!float"); "" when none.
  const std::string& tag() const;
  // An untagged plain (unquoted) scalar: typed by its text, as PyYAML does.
  bool plain() const { return data_ && data_->plain; }

  // 1-based position of the node's first character; 0 for an undefined node.
  int line() const { return data_ ? data_->line : 0; }
  int column() const { return data_ ? data_->column : 0; }

  // Sequence items, or map entries in the file's order (both empty for other kinds).
  const std::vector<Node>& items() const;
  const std::vector<std::pair<Node, Node>>& pairs() const;
  size_t size() const { return is_map() ? pairs().size() : items().size(); }

  // The i-th item of a sequence; the value of a map's first entry whose key is `key`. Undefined
  // when absent or when this node is not of that kind.
  Node operator[](size_t i) const;
  Node operator[](std::string_view key) const;

 private:
  friend class TreeBuilder;
  struct Data {
    Kind kind = Kind::kNull;
    std::string text, tag;
    bool plain = false;
    int line = 0, column = 0;
    size_t weight = 1;  // nodes in the subtree, aliases expanded (what a bomb inflates)
    std::vector<Node> items;
    std::vector<std::pair<Node, Node>> pairs;
  };
  explicit Node(std::shared_ptr<const Data> data) : data_(std::move(data)) {}
  std::shared_ptr<const Data> data_;
};

// Every document of the text. Throws amalgam::Error "WHERE:LINE:COLUMN: malformed YAML: ..."
// for text libyaml refuses (including invalid UTF-8 and control characters), an undefined alias,
// a bomb or too deep a nesting.
std::vector<Node> load_all(const std::string& text, const std::string& where);
// The one non-empty document of the text (an undefined node when there is none); more than one
// is an error.
Node load(const std::string& text, const std::string& where);

}  // namespace amalgam::yaml
