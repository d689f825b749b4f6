#include "io/torch_pickle.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <string_view>
#include <unordered_map>

#include "core/error.h"

namespace amalgam::io {

namespace {

using tensor::DType;

// A state dict needs about 20 objects per tensor; this allows 200k tensors and bounds the memory
// a hostile pickle can make us allocate.
constexpr size_t kMaxObjects = 4'000'000;
constexpr size_t kMaxGlobalName = 256;

enum class Kind : uint8_t {
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kTuple,
  kList,
  kDict,
  kGlobal,
  kStorage,
  kTensor
};

const char* kind_name(Kind k) {
  static constexpr const char* kNames[] = {"None", "bool", "int",    "float",   "str",   "tuple",
                                           "list", "dict", "global", "storage", "tensor"};
  return kNames[static_cast<int>(k)];
}

// The globals a torch.save state dict names; resolving any other one is refused.
enum class Global : uint8_t {
  kOrderedDict,
  kRebuildTensorV2,
  kRebuildTensorV3,
  kRebuildParameter,
  kStorageClass,
  kDType
};

struct StorageClass {
  std::string_view name;
  DType dtype;
};
// torch/storage.py _dtype_to_storage_type_map(), less the complex and quantised types.
constexpr StorageClass kStorageClasses[] = {
    {"DoubleStorage", DType::kF64},    {"FloatStorage", DType::kF32}, {"HalfStorage", DType::kF16},
    {"BFloat16Storage", DType::kBF16}, {"LongStorage", DType::kI64},  {"IntStorage", DType::kI32},
    {"ShortStorage", DType::kI16},     {"CharStorage", DType::kI8},   {"ByteStorage", DType::kU8},
    {"BoolStorage", DType::kBool},
};

// One object of the pickle. Objects live in an arena and refer to each other by index, so that
// no recursion (walking, destruction) ever follows a structure the file chose.
struct Object {
  Kind kind = Kind::kNone;
  Global global = Global::kOrderedDict;  // kGlobal
  DType dtype = DType::kU8;              // kGlobal (storage class, dtype), kStorage
  bool untyped = false;                  // kGlobal storage class, kStorage: UntypedStorage
  // kBool, kInt; kFloat: its bits; kStorage: its declared size in bytes; kTensor: its index
  int64_t value = 0;
  std::string text;             // kString; kGlobal: its name; kStorage: its key
  std::vector<uint32_t> items;  // kTuple, kList; kDict: key, value, key, value, ...
};

Object object(Kind kind) {
  Object o;
  o.kind = kind;
  return o;
}

struct TensorRecord {
  uint32_t storage;
  DType dtype;
  uint64_t offset;
  tensor::Shape shape;
  std::vector<int64_t> stride;
};

std::string opcode_name(uint8_t op) {
  // clang-format off
  static const std::unordered_map<uint8_t, const char*> kNames = {
      {'I', "INT"}, {'J', "BININT"}, {'K', "BININT1"}, {'M', "BININT2"}, {'L', "LONG"},
      {0x8a, "LONG1"}, {0x8b, "LONG4"}, {'S', "STRING"}, {'T', "BINSTRING"},
      {'U', "SHORT_BINSTRING"}, {'B', "BINBYTES"}, {'C', "SHORT_BINBYTES"}, {0x8e, "BINBYTES8"},
      {0x96, "BYTEARRAY8"}, {0x97, "NEXT_BUFFER"}, {0x98, "READONLY_BUFFER"}, {'N', "NONE"},
      {0x88, "NEWTRUE"}, {0x89, "NEWFALSE"}, {'V', "UNICODE"}, {0x8c, "SHORT_BINUNICODE"},
      {'X', "BINUNICODE"}, {0x8d, "BINUNICODE8"}, {'F', "FLOAT"}, {'G', "BINFLOAT"},
      {']', "EMPTY_LIST"}, {'a', "APPEND"}, {'e', "APPENDS"}, {'l', "LIST"},
      {')', "EMPTY_TUPLE"}, {'t', "TUPLE"}, {0x85, "TUPLE1"}, {0x86, "TUPLE2"},
      {0x87, "TUPLE3"}, {'}', "EMPTY_DICT"}, {'d', "DICT"}, {'s', "SETITEM"}, {'u', "SETITEMS"},
      {0x8f, "EMPTY_SET"}, {0x90, "ADDITEMS"}, {0x91, "FROZENSET"}, {'0', "POP"}, {'2', "DUP"},
      {'(', "MARK"}, {'1', "POP_MARK"}, {'g', "GET"}, {'h', "BINGET"}, {'j', "LONG_BINGET"},
      {'p', "PUT"}, {'q', "BINPUT"}, {'r', "LONG_BINPUT"}, {0x94, "MEMOIZE"}, {0x82, "EXT1"},
      {0x83, "EXT2"}, {0x84, "EXT4"}, {'c', "GLOBAL"}, {0x93, "STACK_GLOBAL"}, {'R', "REDUCE"},
      {'b', "BUILD"}, {'i', "INST"}, {'o', "OBJ"}, {0x81, "NEWOBJ"}, {0x92, "NEWOBJ_EX"},
      {0x80, "PROTO"}, {'.', "STOP"}, {0x95, "FRAME"}, {'P', "PERSID"}, {'Q', "BINPERSID"},
  };
  // clang-format on
  auto it = kNames.find(op);
  return it == kNames.end() ? fmt::format("unknown opcode 0x{:02x}", op)
                            : fmt::format("opcode {} (0x{:02x})", it->second, op);
}

class Machine {
 public:
  Machine(std::span<const uint8_t> bytes, const std::string& where) : bytes_(bytes), where_(where) {
    // Most opcodes make an object; growing the arena by copies would dominate the run time.
    objects_.reserve(std::min(kMaxObjects, bytes.size() / 4));
  }

  uint32_t run();
  std::vector<PickledTensor> state_dict(uint32_t root) const;

 private:
  [[noreturn]] void refuse(const std::string& why) const {
    fail("{}: {} (at byte {}); refused to load it", where_, why, op_at_);
  }
  [[noreturn]] void refuse_global(const std::string& name) const {
    fail(
        "{}: refused to load: the pickle names the global '{}', which is not part of a tensor "
        "state dict; amalgam runs no code from checkpoints (the file may be malicious: convert "
        "it to safetensors only if you trust it)",
        where_, name);
  }

  // Reading the opcode stream.
  const uint8_t* take(uint64_t n) {
    if (n > bytes_.size() - at_) refuse("the pickle ends in the middle of an opcode (truncated?)");
    const uint8_t* p = bytes_.data() + at_;
    at_ += n;
    return p;
  }
  uint64_t le(uint64_t n) {
    const uint8_t* p = take(n);
    uint64_t v = 0;
    for (uint64_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
    return v;
  }
  std::string text(uint64_t n) {
    const uint8_t* p = take(n);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  std::string line() {
    std::string out;
    while (true) {
      const char c = static_cast<char>(*take(1));
      if (c == '\n') return out;
      if (out.size() >= kMaxGlobalName) refuse("a GLOBAL name is too long");
      out.push_back(c);
    }
  }

  // Objects and the stack.
  uint32_t make(Object o) {
    if (objects_.size() >= kMaxObjects)
      refuse("the pickle holds too many objects for a state dict");
    objects_.push_back(std::move(o));
    return static_cast<uint32_t>(objects_.size() - 1);
  }
  uint32_t make(Kind kind) { return make(object(kind)); }
  uint32_t make_int(int64_t v, Kind kind = Kind::kInt) {
    Object o = object(kind);
    o.value = v;
    return make(std::move(o));
  }
  const Object& get(uint32_t r) const { return objects_[r]; }
  Object& get(uint32_t r) { return objects_[r]; }
  void push(uint32_t r) {
    if (stack_.size() >= kMaxObjects) refuse("the pickle stack is too deep for a state dict");
    stack_.push_back(r);
  }
  uint32_t top() const {
    if (stack_.size() <= floor()) refuse("stack underflow");
    return stack_.back();
  }
  uint32_t pop() {
    const uint32_t r = top();
    stack_.pop_back();
    return r;
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  std::vector<uint32_t> pop_mark() {
    if (marks_.empty()) refuse("no MARK on the stack");
    std::vector<uint32_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()),
                                stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  uint32_t tuple(std::vector<uint32_t> items) {
    Object o = object(Kind::kTuple);
    o.items = std::move(items);
    return make(std::move(o));
  }
  void memo_put(uint64_t key) {
    if (memo_.size() >= kMaxObjects) refuse("the pickle memo is too large");
    memo_[key] = top();
  }
  uint32_t memo_get(uint64_t key) const {
    auto it = memo_.find(key);
    if (it == memo_.end()) refuse("memo key missing");
    return it->second;
  }

  uint32_t resolve(const std::string& module, const std::string& name);
  uint32_t persistent_load(uint32_t pid);
  uint32_t reduce(uint32_t callable, uint32_t args);
  uint32_t rebuild_tensor(const Object& f, const std::vector<uint32_t>& a);
  void add_items(uint32_t target, const std::vector<uint32_t>& items, bool dict);

  // Argument checks of the rebuild functions.
  const Object& arg(const Object& f, const std::vector<uint32_t>& a, size_t i, Kind kind,
                    const char* what) const {
    const Object& o = get(a[i]);
    if (o.kind != kind) {
      fail("{}: {}: argument {} ({}) is a {}, not a {}", where_, f.text, i + 1, what,
           kind_name(o.kind), kind_name(kind));
    }
    return o;
  }
  int64_t non_negative(const Object& f, const Object& o, const char* what) const {
    if (o.kind != Kind::kInt) {
      fail("{}: {}: {} must be an integer, not a {}", where_, f.text, what, kind_name(o.kind));
    }
    if (o.value < 0) fail("{}: {}: {} is negative ({})", where_, f.text, what, o.value);
    return o.value;
  }
  bool empty_dict(uint32_t r) const { return get(r).kind == Kind::kDict && get(r).items.empty(); }

  std::span<const uint8_t> bytes_;
  std::string where_;
  uint64_t at_ = 0;
  uint64_t op_at_ = 0;
  std::vector<Object> objects_;
  std::vector<TensorRecord> tensors_;
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, uint32_t> memo_;
};

uint32_t Machine::resolve(const std::string& module, const std::string& name) {
  const std::string full = module + "." + name;
  Object o = object(Kind::kGlobal);
  o.text = full;
  if (module == "collections" && name == "OrderedDict") {
    o.global = Global::kOrderedDict;
  } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
    o.global = Global::kRebuildTensorV2;
  } else if (module == "torch._utils" && name == "_rebuild_tensor_v3") {
    o.global = Global::kRebuildTensorV3;
  } else if (module == "torch._utils" && name == "_rebuild_parameter") {
    o.global = Global::kRebuildParameter;
  } else if ((module == "torch" || module == "torch.storage") && name == "UntypedStorage") {
    o.global = Global::kStorageClass;
    o.untyped = true;
  } else if (module == "torch") {
    bool found = false;
    for (const auto& c : kStorageClasses) {
      if (c.name == name) {
        o.global = Global::kStorageClass;
        o.dtype = c.dtype;
        found = true;
      }
    }
    // Dtypes appear as the third argument of _rebuild_tensor_v3 (float8 types, for example).
    for (int t = 0; !found && t <= static_cast<int>(DType::kF8E5M2); ++t) {
      if (tensor::torch_dtype_name(static_cast<DType>(t)) == name) {
        o.global = Global::kDType;
        o.dtype = static_cast<DType>(t);
        found = true;
      }
    }
    if (!found) {
      fail(
          "{}: refused to load: the pickle names '{}', which is not a tensor storage class or "
          "dtype amalgam reads (complex, quantised and some new dtypes are not supported)",
          where_, full);
    }
  } else {
    refuse_global(full);
  }
  return make(std::move(o));
}

// ('storage', storage class, key, location, numel): torch/serialization.py persistent_id().
uint32_t Machine::persistent_load(uint32_t pid) {
  const Object& t = get(pid);
  if (t.kind != Kind::kTuple || t.items.size() != 5 || get(t.items[0]).kind != Kind::kString ||
      get(t.items[0]).text != "storage") {
    refuse("a persistent id is not a ('storage', class, key, location, size) record");
  }
  const Object& cls = get(t.items[1]);
  const Object& key = get(t.items[2]);
  const Object& numel = get(t.items[4]);
  if (cls.kind != Kind::kGlobal || cls.global != Global::kStorageClass) {
    refuse("a storage record names no torch storage class");
  }
  if (key.kind != Kind::kString || key.text.empty() || key.text.size() > 64 ||
      key.text.find_first_of(std::string_view("/\\\0", 3)) != std::string::npos) {
    refuse("a storage record has an invalid key");
  }
  if (get(t.items[3]).kind != Kind::kString) refuse("a storage record has no location string");
  if (numel.kind != Kind::kInt || numel.value < 0) refuse("a storage record has an invalid size");
  const uint64_t esize = cls.untyped ? 1 : tensor::dtype_size(cls.dtype);
  const uint64_t n = static_cast<uint64_t>(numel.value);
  if (n > std::numeric_limits<uint64_t>::max() / esize) refuse("a storage size overflows");
  Object storage = object(Kind::kStorage);
  storage.dtype = cls.untyped ? DType::kU8 : cls.dtype;
  storage.untyped = cls.untyped;
  storage.value = static_cast<int64_t>(n * esize);
  storage.text = key.text;
  return make(std::move(storage));
}

// _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]) and
// _rebuild_tensor_v3(untyped storage, ..., hooks, dtype[, metadata]) (torch/_utils.py).
uint32_t Machine::rebuild_tensor(const Object& f, const std::vector<uint32_t>& a) {
  const bool v3 = f.global == Global::kRebuildTensorV3;
  const size_t fixed = v3 ? 7 : 6;
  if (a.size() != fixed && a.size() != fixed + 1) {
    fail("{}: {} takes {} or {} arguments, not {}", where_, f.text, fixed, fixed + 1, a.size());
  }
  const Object& storage = arg(f, a, 0, Kind::kStorage, "storage");
  if (storage.untyped != v3) {
    fail("{}: {}: the storage must be {}", where_, f.text,
         v3 ? "a torch.UntypedStorage" : "a typed storage (torch.*Storage)");
  }
  TensorRecord t{a[0], storage.dtype, 0, {}, {}};
  t.offset = static_cast<uint64_t>(non_negative(f, get(a[1]), "the storage offset"));
  const Object& size = arg(f, a, 2, Kind::kTuple, "size");
  const Object& stride = arg(f, a, 3, Kind::kTuple, "stride");
  if (size.items.size() != stride.items.size() || size.items.size() > 16) {
    fail("{}: {}: size has {} dimensions but stride {}", where_, f.text, size.items.size(),
         stride.items.size());
  }
  for (uint32_t d : size.items) t.shape.push_back(non_negative(f, get(d), "a size"));
  for (uint32_t d : stride.items) t.stride.push_back(non_negative(f, get(d), "a stride"));
  arg(f, a, 4, Kind::kBool, "requires_grad");
  if (!empty_dict(a[5])) fail("{}: {}: backward hooks must be an empty dict", where_, f.text);
  if (v3) t.dtype = arg(f, a, 6, Kind::kGlobal, "dtype").dtype;
  if (v3 && get(a[6]).global != Global::kDType) {
    fail("{}: {}: argument 7 must be a torch dtype", where_, f.text);
  }
  if (a.size() == fixed + 1 && !empty_dict(a[fixed]) && get(a[fixed]).kind != Kind::kNone) {
    // Tensor metadata (conjugate or negative bits) changes the values: not a plain tensor.
    fail("{}: {}: tensors with metadata are not supported", where_, f.text);
  }
  tensors_.push_back(std::move(t));
  return make_int(static_cast<int64_t>(tensors_.size() - 1), Kind::kTensor);
}

uint32_t Machine::reduce(uint32_t callable, uint32_t args) {
  const Object& f = get(callable);
  if (f.kind != Kind::kGlobal) refuse(fmt::format("REDUCE calls a {}", kind_name(f.kind)));
  if (get(args).kind != Kind::kTuple) refuse("REDUCE arguments are not a tuple");
  const std::vector<uint32_t> a = get(args).items;
  switch (f.global) {
    case Global::kOrderedDict:
      if (!a.empty()) refuse("collections.OrderedDict is called with arguments");
      return make(Kind::kDict);
    case Global::kRebuildTensorV2:
    case Global::kRebuildTensorV3:
      return rebuild_tensor(f, a);
    case Global::kRebuildParameter:
      // _rebuild_parameter(data, requires_grad, backward_hooks): the tensor itself.
      if (a.size() != 3 || get(a[0]).kind != Kind::kTensor || get(a[1]).kind != Kind::kBool ||
          !empty_dict(a[2])) {
        fail("{}: {}: expects (tensor, requires_grad, empty hooks)", where_, f.text);
      }
      return a[0];
    case Global::kStorageClass:
    case Global::kDType:
      break;
  }
  refuse(fmt::format("the pickle calls {}", f.text));
}

void Machine::add_items(uint32_t target, const std::vector<uint32_t>& items, bool dict) {
  Object& o = get(target);
  if (o.kind != (dict ? Kind::kDict : Kind::kList)) {
    refuse(fmt::format("{} into a {}", dict ? "SETITEMS" : "APPENDS", kind_name(o.kind)));
  }
  if (dict && items.size() % 2 != 0) refuse("SETITEMS with an odd number of items");
  o.items.insert(o.items.end(), items.begin(), items.end());
}

uint32_t Machine::run() {
  while (true) {
    op_at_ = at_;
    const uint8_t op = *take(1);
    switch (op) {
      case 0x80: {  // PROTO
        const uint8_t proto = *take(1);
        if (proto < 2 || proto > 5) refuse(fmt::format("pickle protocol {} is not read", proto));
        break;
      }
      case 0x95:  // FRAME: a length hint, the opcodes follow inline
        take(8);
        break;
      case '.':  // STOP
        return pop();
      case '(':
        if (marks_.size() >= kMaxObjects) refuse("too many MARKs for a state dict");
        marks_.push_back(stack_.size());
        break;
      case '}':
        push(make(Kind::kDict));
        break;
      case ']':
        push(make(Kind::kList));
        break;
      case ')':
        push(make(Kind::kTuple));
        break;
      case 'N':
        push(make(Kind::kNone));
        break;
      case 0x88:
      case 0x89:
        push(make_int(op == 0x88, Kind::kBool));
        break;
      case 'J':
        push(make_int(static_cast<int32_t>(le(4))));
        break;
      case 'K':
        push(make_int(static_cast<int64_t>(le(1))));
        break;
      case 'M':
        push(make_int(static_cast<int64_t>(le(2))));
        break;
      case 0x8a: {  // LONG1: little-endian two's complement
        const uint64_t n = le(1);
        if (n > 8) refuse("an integer is too large");
        uint64_t v = le(n);
        if (n > 0 && n < 8 && (v >> (8 * n - 1)) != 0) v |= ~uint64_t{0} << (8 * n);
        push(make_int(static_cast<int64_t>(v)));
        break;
      }
      case 'G': {  // BINFLOAT: big-endian double
        const uint8_t* p = take(8);
        uint64_t v = 0;
        for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
        push(make_int(static_cast<int64_t>(v), Kind::kFloat));  // never read: no state dict value
        break;
      }
      case 'X':
      case 0x8c:
      case 0x8d:
      case 'U':
      case 'T': {
        const uint64_t n = op == 'X' || op == 'T' ? le(4) : op == 0x8d ? le(8) : le(1);
        if (op == 'T' && n > 0x7fffffff) refuse("negative string length");
        Object o = object(Kind::kString);
        o.text = text(n);
        push(make(std::move(o)));
        break;
      }
      case 'c': {
        const std::string module = line();
        const std::string name = line();
        push(resolve(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        const uint32_t name = pop();
        const uint32_t module = pop();
        if (get(name).kind != Kind::kString || get(module).kind != Kind::kString) {
          refuse("STACK_GLOBAL without two strings");
        }
        push(resolve(get(module).text, get(name).text));
        break;
      }
      case 'q':
        memo_put(le(1));
        break;
      case 'r':
        memo_put(le(4));
        break;
      case 0x94:
        memo_put(memo_.size());
        break;
      case 'h':
        push(memo_get(le(1)));
        break;
      case 'j':
        push(memo_get(le(4)));
        break;
      case 't':
        push(tuple(pop_mark()));
        break;
      case 0x85:
      case 0x86:
      case 0x87: {
        std::vector<uint32_t> items(op - 0x84);
        for (size_t i = items.size(); i-- > 0;) items[i] = pop();
        push(tuple(std::move(items)));
        break;
      }
      case 'a': {
        const uint32_t v = pop();
        add_items(top(), {v}, false);
        break;
      }
      case 'e': {
        std::vector<uint32_t> items = pop_mark();
        add_items(top(), items, false);
        break;
      }
      case 's': {
        const uint32_t v = pop();
        const uint32_t k = pop();
        add_items(top(), {k, v}, true);
        break;
      }
      case 'u': {
        std::vector<uint32_t> items = pop_mark();
        add_items(top(), items, true);
        break;
      }
      case 'Q':
        push(persistent_load(pop()));
        break;
      case 'R': {
        const uint32_t args = pop();
        const uint32_t callable = pop();
        push(reduce(callable, args));
        break;
      }
      case 'b': {  // BUILD: a state dict's OrderedDict carries `_metadata` (module versions)
        const uint32_t state = pop();
        if (get(top()).kind != Kind::kDict ||
            (get(state).kind != Kind::kDict && get(state).kind != Kind::kNone)) {
          refuse(fmt::format("BUILD of a {}", kind_name(get(top()).kind)));
        }
        break;
      }
      default:
        refuse(fmt::format("{} is not allowed in a state dict", opcode_name(op)));
    }
  }
}

std::vector<PickledTensor> Machine::state_dict(uint32_t root) const {
  if (get(root).kind != Kind::kDict) {
    fail("{}: the pickle holds a {}, not a state dict", where_, kind_name(get(root).kind));
  }
  const Object* dict = &get(root);
  for (size_t i = 0; i + 1 < dict->items.size(); i += 2) {
    const Object& k = get(dict->items[i]);
    const Object& v = get(dict->items[i + 1]);
    if (k.kind == Kind::kString && k.text == "state_dict" && v.kind == Kind::kDict) {
      dict = &v;
      break;
    }
  }
  std::vector<PickledTensor> out;
  std::set<std::string> seen;
  for (size_t i = 0; i + 1 < dict->items.size(); i += 2) {
    const Object& k = get(dict->items[i]);
    const Object& v = get(dict->items[i + 1]);
    if (k.kind != Kind::kString) fail("{}: a state dict key is a {}", where_, kind_name(k.kind));
    if (v.kind != Kind::kTensor) {
      fail("{}: '{}' holds a {}, not a tensor", where_, k.text, kind_name(v.kind));
    }
    if (!seen.insert(k.text).second) fail("{}: tensor '{}' appears twice", where_, k.text);
    const TensorRecord& t = tensors_[static_cast<size_t>(v.value)];
    const Object& s = get(t.storage);
    out.push_back(PickledTensor{k.text, s.text, static_cast<uint64_t>(s.value), t.dtype, t.offset,
                                t.shape, t.stride});
  }
  return out;
}

}  // namespace

std::vector<PickledTensor> unpickle_state_dict(std::span<const uint8_t> pickle,
                                               const std::string& where) {
  Machine machine(pickle, where);
  return machine.state_dict(machine.run());
}

}  // namespace amalgam::io
