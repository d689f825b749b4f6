#include "core/yaml.h"

#include <yaml.h>

#include <algorithm>
#include <map>
#include <set>

#include "core/error.h"

namespace amalgam::yaml {

namespace {

constexpr size_t kMaxNodes = 1'000'000;  // per document, aliases expanded
constexpr size_t kMaxDepth = 1'000;

const std::string kEmpty;
const std::vector<Node> kNoItems;
const std::vector<std::pair<Node, Node>> kNoPairs;

std::string text_of(const yaml_char_t* s) {
  return s ? std::string(reinterpret_cast<const char*>(s)) : std::string();
}

// Owns the parser and the event in flight, so that every exit frees them.
struct Parser {
  yaml_parser_t parser;
  yaml_event_t event;
  bool have_event = false;
  explicit Parser(const std::string& text) {
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, reinterpret_cast<const unsigned char*>(text.data()),
                                 text.size());
  }
  ~Parser() {
    if (have_event) yaml_event_delete(&event);
    yaml_parser_delete(&parser);
  }
  Parser(const Parser&) = delete;
  Parser& operator=(const Parser&) = delete;
};

}  // namespace

const std::string& Node::scalar() const { return is_scalar() ? data_->text : kEmpty; }
const std::string& Node::tag() const { return data_ ? data_->tag : kEmpty; }
const std::vector<Node>& Node::items() const { return is_sequence() ? data_->items : kNoItems; }
const std::vector<std::pair<Node, Node>>& Node::pairs() const {
  return is_map() ? data_->pairs : kNoPairs;
}

Node Node::operator[](size_t i) const { return i < items().size() ? items()[i] : Node(); }

Node Node::operator[](std::string_view key) const {
  for (const auto& [k, v] : pairs()) {
    if (k.is_scalar() && k.scalar() == key) return v;
  }
  return Node();
}

// Builds the documents' trees from libyaml's events.
class TreeBuilder {
 public:
  explicit TreeBuilder(const std::string& where) : where_(where) {}

  std::vector<Node> run(const std::string& text) {
    Parser p(text);
    std::vector<Node> documents;
    for (;;) {
      if (!yaml_parser_parse(&p.parser, &p.event)) malformed(p.parser);
      p.have_event = true;
      const yaml_event_t& e = p.event;
      switch (e.type) {
        case YAML_DOCUMENT_START_EVENT:
          anchors_.clear();  // anchors belong to their document
          root_ = Node();
          break;
        case YAML_DOCUMENT_END_EVENT:
          documents.push_back(root_);  // libyaml gives an empty document an empty scalar
          break;
        case YAML_SCALAR_EVENT:
          add(scalar(e), text_of(e.data.scalar.anchor));
          break;
        case YAML_ALIAS_EVENT: {
          const std::string name = text_of(e.data.alias.anchor);
          const auto it = anchors_.find(name);
          if (it == anchors_.end()) {
            fail_at(e.start_mark, "alias *{} refers to no anchor &{} before it", name, name);
          }
          add(it->second, "");
          break;
        }
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
          open(e);
          break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
          close();
          break;
        case YAML_STREAM_END_EVENT:
          return documents;
        default:
          break;
      }
      yaml_event_delete(&p.event);
      p.have_event = false;
    }
  }

 private:
  using Data = Node::Data;
  struct Open {
    std::shared_ptr<Data> data;
    std::string anchor;
  };

  template <typename... Args>
  [[noreturn]] void fail_at(const yaml_mark_t& mark, fmt::format_string<Args...> format,
                            Args&&... args) const {
    fail("{}:{}:{}: {}", where_, mark.line + 1, mark.column + 1,
         fmt::format(format, std::forward<Args>(args)...));
  }

  [[noreturn]] void malformed(const yaml_parser_t& parser) const {
    std::string problem = parser.problem ? parser.problem : "unreadable text";
    if (parser.context) problem += fmt::format(" ({})", parser.context);
    // In double quotes a backslash starts an escape, which Windows paths trip over.
    if (problem.find("escape") != std::string::npos) {
      problem +=
          "; inside double quotes a backslash starts an escape: write Windows paths with forward "
          "slashes or in single quotes";
    }
    fail_at(parser.problem_mark, "malformed YAML: {}", problem);
  }

  static std::shared_ptr<Data> data_at(Node::Kind kind, const yaml_mark_t& mark) {
    auto d = std::make_shared<Data>();
    d->kind = kind;
    d->line = static_cast<int>(std::min<size_t>(mark.line + 1, INT32_MAX));
    d->column = static_cast<int>(std::min<size_t>(mark.column + 1, INT32_MAX));
    return d;
  }

  static Node scalar(const yaml_event_t& e) {
    const auto& s = e.data.scalar;
    auto d = data_at(Node::Kind::kScalar, e.start_mark);
    d->text.assign(reinterpret_cast<const char*>(s.value), s.length);
    d->tag = text_of(s.tag);
    d->plain = s.tag == nullptr && s.style == YAML_PLAIN_SCALAR_STYLE;
    static const std::set<std::string> kNull = {"", "~", "null", "Null", "NULL"};
    if ((d->plain && kNull.count(d->text)) || d->tag == "tag:yaml.org,2002:null") {
      d->kind = Node::Kind::kNull;
    }
    return Node(std::move(d));
  }

  void open(const yaml_event_t& e) {
    const bool map = e.type == YAML_MAPPING_START_EVENT;
    if (open_.size() >= kMaxDepth) fail_at(e.start_mark, "nested deeper than {} levels", kMaxDepth);
    auto d = data_at(map ? Node::Kind::kMap : Node::Kind::kSequence, e.start_mark);
    const yaml_char_t* tag = map ? e.data.mapping_start.tag : e.data.sequence_start.tag;
    const yaml_char_t* anchor = map ? e.data.mapping_start.anchor : e.data.sequence_start.anchor;
    d->tag = text_of(tag);
    open_.push_back(Open{std::move(d), text_of(anchor)});
  }

  void close() {
    Open o = std::move(open_.back());
    open_.pop_back();
    if (o.data->kind == Node::Kind::kMap) apply_merge_key(*o.data);
    add(Node(std::move(o.data)), o.anchor);
  }

  // PyYAML's "<<" key: the entries of the map (or maps, earlier ones first) it names are added
  // where the map does not give the key itself.
  void apply_merge_key(Data& map) const {
    const auto is_merge = [](const std::pair<Node, Node>& kv) {
      return kv.first.plain() && kv.first.scalar() == "<<";
    };
    if (std::none_of(map.pairs.begin(), map.pairs.end(), is_merge)) return;
    std::set<std::string> present;
    std::vector<std::pair<Node, Node>> own;
    std::vector<Node> sources;
    for (auto& kv : map.pairs) {
      if (!is_merge(kv)) {
        present.insert(kv.first.scalar());
        own.push_back(std::move(kv));
        continue;
      }
      const Node& v = kv.second;
      for (const Node& m : v.is_sequence() ? v.items() : std::vector<Node>{v}) {
        if (!m.is_map()) {
          fail("{}:{}:{}: the merge key '<<' takes a mapping or a list of mappings", where_,
               m.line(), m.column());
        }
        sources.push_back(m);
      }
    }
    std::vector<std::pair<Node, Node>> merged;
    for (const Node& m : sources) {
      for (const auto& kv : m.pairs()) {
        if (present.insert(kv.first.scalar()).second) merged.push_back(kv);
      }
    }
    merged.insert(merged.end(), std::make_move_iterator(own.begin()),
                  std::make_move_iterator(own.end()));
    map.pairs = std::move(merged);
    map.weight = 1;
    for (const auto& [k, v] : map.pairs) map.weight += k.data_->weight + v.data_->weight;
  }

  // Places a finished node: the document's root, a sequence item, or a map's key or value.
  // `anchor`: the name the node is given ("" for none).
  void add(const Node& node, const std::string& anchor) {
    if (!anchor.empty()) anchors_[anchor] = node;
    if (open_.empty()) {
      root_ = node;
      return;
    }
    Data& parent = *open_.back().data;
    if (parent.kind == Node::Kind::kSequence) {
      parent.items.push_back(node);
    } else if (parent.pairs.empty() || parent.pairs.back().second) {
      parent.pairs.emplace_back(node, Node());
    } else {
      parent.pairs.back().second = node;
    }
    parent.weight += node.data_->weight;
    if (parent.weight > kMaxNodes) {
      fail("{}:{}:{}: this value expands to more than {} nodes through aliases (a YAML bomb?)",
           where_, parent.line, parent.column, kMaxNodes);
    }
  }

  const std::string& where_;
  std::vector<Open> open_;
  std::map<std::string, Node> anchors_;
  Node root_;
};

std::vector<Node> load_all(const std::string& text, const std::string& where) {
  return TreeBuilder(where).run(text);
}

Node load(const std::string& text, const std::string& where) {
  std::vector<Node> documents = load_all(text, where);
  std::erase_if(documents, [](const Node& d) { return d.is_null(); });
  if (documents.size() > 1) {
    fail("{}:{}:{}: several YAML documents (separated by ---) where one is expected", where,
         documents[1].line(), documents[1].column());
  }
  return documents.empty() ? Node() : documents[0];  // undefined when there is no document
}

}  // namespace amalgam::yaml
