// Reads PyTorch's zip checkpoint format: `<prefix>/data.pkl` (a pickle, protocol 2 or higher)
// whose tensors point by persistent id at raw storages `<prefix>/data/<key>`. A small pickle
// machine that knows the few torch globals a state_dict needs and stands in for any other class.
#include <ATen/ATen.h>

#include <cstring>
#include <memory>
#include <unordered_map>
#include <vector>

#include "vlmo/checkpoint.h"
#include "vlmo/error.h"
#include "zip_reader.h"

namespace vlmo {
namespace {

struct PyValue;
using Value = std::shared_ptr<PyValue>;

struct PyValue {
  enum Kind { kNone, kBool, kInt, kFloat, kStr, kBytes, kList, kTuple, kDict, kSet, kGlobal, kObject, kTensor, kStorage, kMark };
  Kind kind = kNone;
  int64_t i = 0;  // bool, int
  double f = 0;
  std::string s;                                 // str, bytes, global "module.name", storage key
  std::vector<Value> items;                      // list, tuple, set; object list-items
  std::vector<std::pair<Value, Value>> entries;  // dict; object dict-items
  Value cls, args, state;                        // object
  at::Tensor tensor;                             // tensor, storage (1-D)
};

Value make(PyValue::Kind k) {
  auto v = std::make_shared<PyValue>();
  v->kind = k;
  return v;
}

class Unpickler {
 public:
  Unpickler(ZipReader& zip, std::string prefix, std::string data)
      : zip_(zip), prefix_(std::move(prefix)), data_(std::move(data)) {}

  Value load() {
    while (true) {
      const size_t at = pos_;
      const unsigned char op = static_cast<unsigned char>(byte());
      // clang-format off
      switch (op) {
        case 0x80: byte(); break;            // PROTO
        case 0x95: bytes(8); break;          // FRAME
        case '}': push(make(PyValue::kDict)); break;
        case ']': push(make(PyValue::kList)); break;
        case ')': push(make(PyValue::kTuple)); break;
        case 0x8f: push(make(PyValue::kSet)); break;
        case '(': marks_.push_back(stack_.size()); break;
        case 'X': push(str(bytes(uint(4)))); break;
        case 0x8c: push(str(bytes(uint(1)))); break;
        case 0x8d: push(str(bytes(uint(8)))); break;
        case 'U': push(str(bytes(uint(1)))); break;
        case 'T': push(str(bytes(uint(4)))); break;
        case 'C': { auto v = str(bytes(uint(1))); v->kind = PyValue::kBytes; push(v); break; }
        case 'B': { auto v = str(bytes(uint(4))); v->kind = PyValue::kBytes; push(v); break; }
        case 0x8e: { auto v = str(bytes(uint(8))); v->kind = PyValue::kBytes; push(v); break; }
        case 'q': memo_[uint(1)] = top(); break;
        case 'r': memo_[uint(4)] = top(); break;
        case 0x94: memo_[memo_.size()] = top(); break;
        case 'p': memo_[std::stoull(line())] = top(); break;
        case 'h': push(get(uint(1))); break;
        case 'j': push(get(uint(4))); break;
        case 'g': push(get(std::stoull(line()))); break;
        case 'c': { auto g = make(PyValue::kGlobal); g->s = line(); g->s += "." + line(); push(g); break; }
        case 0x93: {
          Value name = pop(), module = pop();
          auto g = make(PyValue::kGlobal);
          g->s = module->s + "." + name->s;
          push(g);
          break;
        }
        case 'J': push(integer(static_cast<int32_t>(uint(4)))); break;
        case 'K': push(integer(static_cast<int64_t>(uint(1)))); break;
        case 'M': push(integer(static_cast<int64_t>(uint(2)))); break;
        case 0x8a: push(integer(long_bytes(uint(1)))); break;
        case 0x8b: push(integer(long_bytes(uint(4)))); break;
        case 'I': {
          const std::string l = line();
          if (l == "00" || l == "01") { auto b = make(PyValue::kBool); b->i = l == "01"; push(b); }
          else push(integer(std::stoll(l)));
          break;
        }
        case 'L': { std::string l = line(); if (!l.empty() && l.back() == 'L') l.pop_back(); push(integer(std::stoll(l))); break; }
        case 'G': {
          const std::string b = bytes(8);
          uint64_t u = 0;
          for (int k = 0; k < 8; ++k) u = (u << 8) | static_cast<unsigned char>(b[k]);
          auto v = make(PyValue::kFloat);
          std::memcpy(&v->f, &u, 8);
          push(v);
          break;
        }
        case 'F': { auto v = make(PyValue::kFloat); v->f = std::stod(line()); push(v); break; }
        case 'N': push(make(PyValue::kNone)); break;
        case 0x88: { auto v = make(PyValue::kBool); v->i = 1; push(v); break; }
        case 0x89: push(make(PyValue::kBool)); break;
        case 't': { auto t = make(PyValue::kTuple); t->items = pop_mark(); push(t); break; }
        case 0x85: case 0x86: case 0x87: {
          const int n = op - 0x84;
          auto t = make(PyValue::kTuple);
          t->items.resize(n);
          for (int k = n - 1; k >= 0; --k) t->items[k] = pop();
          push(t);
          break;
        }
        case 'l': { auto l = make(PyValue::kList); l->items = pop_mark(); push(l); break; }
        case 'a': { Value v = pop(); append(top(), {v}); break; }
        case 'e': { auto vs = pop_mark(); append(top(), vs); break; }
        case 0x90: { auto vs = pop_mark(); append(top(), vs); break; }  // ADDITEMS
        case 0x91: { auto s = make(PyValue::kSet); s->items = pop_mark(); push(s); break; }
        case 'd': {
          auto vs = pop_mark();
          auto d = make(PyValue::kDict);
          set_items(d, vs);
          push(d);
          break;
        }
        case 's': { Value v = pop(), k = pop(); set_items(top(), {k, v}); break; }
        case 'u': { auto vs = pop_mark(); set_items(top(), vs); break; }
        case 'R': { Value a = pop(), f = pop(); push(call(f, a)); break; }
        case 0x81: { Value a = pop(), c = pop(); push(call(c, a)); break; }
        case 0x92: { pop(); Value a = pop(), c = pop(); push(call(c, a)); break; }  // NEWOBJ_EX
        case 'b': { Value st = pop(); Value obj = top(); if (obj->kind == PyValue::kObject) obj->state = st; break; }
        case 'Q': push(persistent(pop())); break;
        case '0': pop(); break;
        case '2': push(top()); break;
        case '1': pop_mark(); break;
        case '.': {
          if (stack_.empty()) fail(at, "STOP with an empty stack");
          return stack_.back();
        }
        default:
          fail(at, cat("unsupported pickle opcode 0x", std::hex, static_cast<int>(op)));
      }
      // clang-format on
    }
  }

 private:
  [[noreturn]] void fail(size_t at, const std::string& what) const {
    throw Error(cat(zip_.path(), ": ", prefix_, "data.pkl at byte ", at, ": ", what));
  }
  char byte() {
    if (pos_ >= data_.size()) fail(pos_, "unexpected end of pickle data (truncated)");
    return data_[pos_++];
  }
  std::string bytes(uint64_t n) {
    if (n > data_.size() - pos_) fail(pos_, cat("a field of ", n, " bytes runs past the end"));
    std::string s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  uint64_t uint(int n) {
    const std::string b = bytes(n);
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; --k) v = (v << 8) | static_cast<unsigned char>(b[k]);
    return v;
  }
  int64_t long_bytes(uint64_t n) {
    if (n > 8) fail(pos_, cat("integer of ", n, " bytes is too large"));
    const std::string b = bytes(n);
    if (n == 0) return 0;
    uint64_t v = 0;
    for (int k = static_cast<int>(n) - 1; k >= 0; --k) v = (v << 8) | static_cast<unsigned char>(b[k]);
    if (n < 8 && (static_cast<unsigned char>(b[n - 1]) & 0x80)) v |= ~0ull << (8 * n);
    return static_cast<int64_t>(v);
  }
  std::string line() {
    const size_t end = data_.find('\n', pos_);
    if (end == std::string::npos) fail(pos_, "unterminated text field");
    std::string s = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }
  static Value str(std::string s) {
    auto v = make(PyValue::kStr);
    v->s = std::move(s);
    return v;
  }
  static Value integer(int64_t i) {
    auto v = make(PyValue::kInt);
    v->i = i;
    return v;
  }
  void push(Value v) { stack_.push_back(std::move(v)); }
  Value pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail(pos_, "pickle stack underflow");
    Value v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value top() {
    if (stack_.empty()) fail(pos_, "pickle stack underflow");
    return stack_.back();
  }
  std::vector<Value> pop_mark() {
    if (marks_.empty()) fail(pos_, "MARK expected");
    const size_t m = marks_.back();
    marks_.pop_back();
    if (m > stack_.size()) fail(pos_, "corrupt MARK");
    std::vector<Value> out(stack_.begin() + m, stack_.end());
    stack_.resize(m);
    return out;
  }
  Value get(uint64_t k) {
    auto it = memo_.find(k);
    if (it == memo_.end()) fail(pos_, cat("memo entry ", k, " is not defined"));
    return it->second;
  }
  void append(const Value& target, const std::vector<Value>& vs) {
    if (target->kind == PyValue::kList || target->kind == PyValue::kSet || target->kind == PyValue::kObject)
      target->items.insert(target->items.end(), vs.begin(), vs.end());
    else fail(pos_, "APPEND to something that is not a list");
  }
  void set_items(const Value& target, const std::vector<Value>& kv) {
    if (kv.size() % 2) fail(pos_, "odd number of items for a dict");
    if (target->kind != PyValue::kDict && target->kind != PyValue::kObject) fail(pos_, "SETITEM on something that is not a dict");
    for (size_t k = 0; k < kv.size(); k += 2) target->entries.emplace_back(kv[k], kv[k + 1]);
  }

  static at::ScalarType storage_dtype(const std::string& cls) {
    static const std::unordered_map<std::string, at::ScalarType> kTypes = {
        {"torch.FloatStorage", at::kFloat},       {"torch.DoubleStorage", at::kDouble}, {"torch.HalfStorage", at::kHalf},
        {"torch.BFloat16Storage", at::kBFloat16}, {"torch.LongStorage", at::kLong},     {"torch.IntStorage", at::kInt},
        {"torch.ShortStorage", at::kShort},       {"torch.CharStorage", at::kChar},     {"torch.ByteStorage", at::kByte},
        {"torch.BoolStorage", at::kBool},         {"torch.UntypedStorage", at::kByte},
    };
    auto it = kTypes.find(cls);
    if (it == kTypes.end()) throw Error(cat("unsupported storage type ", cls));
    return it->second;
  }

  // ('storage', storage_type, key, location, numel) -> the storage as a 1-D tensor.
  Value persistent(const Value& pid) {
    if (pid->kind != PyValue::kTuple || pid->items.size() < 5 || pid->items[0]->s != "storage")
      fail(pos_, "unsupported persistent id (expected a ('storage', ...) tuple)");
    const std::string& key = pid->items[2]->s;
    auto cached = storages_.find(key);
    if (cached != storages_.end()) return cached->second;
    const at::ScalarType type = storage_dtype(pid->items[1]->s);
    const std::string entry = prefix_ + "data/" + key;
    if (!zip_.has(entry)) fail(pos_, cat("tensor storage \"", entry, "\" is missing from the archive"));
    const uint64_t n = zip_.size(entry), item = c10::elementSize(type);
    if (n % item) fail(pos_, cat("storage \"", entry, "\" has ", n, " bytes, not a multiple of ", item));
    const int64_t numel = pid->items[4]->kind == PyValue::kInt ? pid->items[4]->i : -1;
    if (numel >= 0 && static_cast<uint64_t>(numel) * item != n)
      fail(pos_, cat("storage \"", entry, "\" holds ", n, " bytes but the pickle says ", numel, " elements of ", item, " bytes"));
    auto v = make(PyValue::kStorage);
    v->s = key;
    v->tensor = at::empty({static_cast<int64_t>(n / item)}, at::TensorOptions().dtype(type));
    zip_.read(entry, static_cast<char*>(v->tensor.data_ptr()), n);
    storages_[key] = v;
    return v;
  }

  std::vector<int64_t> ints(const Value& t, const char* what) {
    if (t->kind != PyValue::kTuple && t->kind != PyValue::kList) fail(pos_, cat(what, " must be a tuple"));
    std::vector<int64_t> out;
    for (const auto& v : t->items) {
      if (v->kind != PyValue::kInt) fail(pos_, cat(what, " must hold integers"));
      out.push_back(v->i);
    }
    return out;
  }

  Value rebuild_tensor(const std::vector<Value>& a) {
    if (a.size() < 4 || a[0]->kind != PyValue::kStorage || a[1]->kind != PyValue::kInt)
      fail(pos_, "malformed _rebuild_tensor arguments");
    const at::Tensor& storage = a[0]->tensor;
    const int64_t offset = a[1]->i;
    const auto size = ints(a[2], "tensor size"), stride = ints(a[3], "tensor stride");
    if (size.size() != stride.size()) fail(pos_, "tensor size and stride differ in length");
    int64_t last = offset;
    bool empty = false;
    for (size_t d = 0; d < size.size(); ++d) {
      if (size[d] < 0 || stride[d] < 0) fail(pos_, "negative tensor size or stride");
      if (size[d] == 0) empty = true;
      else last += (size[d] - 1) * stride[d];
    }
    if (offset < 0 || (!empty && last >= storage.numel()))
      fail(pos_, cat("tensor view (offset ", offset, ", size ", at::IntArrayRef(size), ", stride ", at::IntArrayRef(stride),
                     ") reaches outside its storage of ", storage.numel(), " elements"));
    auto v = make(PyValue::kTensor);
    v->tensor = empty ? at::empty(size, storage.options()) : storage.as_strided(size, stride, offset);
    return v;
  }

  Value call(const Value& f, const Value& args) {
    const std::vector<Value> a = args->kind == PyValue::kTuple ? args->items : std::vector<Value>{};
    const std::string name = f->kind == PyValue::kGlobal ? f->s : "";
    if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") return rebuild_tensor(a);
    if (name == "torch._utils._rebuild_parameter" || name == "torch._utils._rebuild_parameter_with_state") {
      if (a.empty() || a[0]->kind != PyValue::kTensor) fail(pos_, "malformed _rebuild_parameter");
      return a[0];
    }
    if (name == "torch._tensor._rebuild_from_type_v2" || name == "torch._tensor._rebuild_from_type") {
      if (a.size() < 3) fail(pos_, "malformed _rebuild_from_type");
      return call(a[0], a[2]);
    }
    if (name == "collections.OrderedDict" || name == "builtins.dict") {
      auto d = make(PyValue::kDict);
      if (!a.empty() && (a[0]->kind == PyValue::kList || a[0]->kind == PyValue::kTuple))
        for (const auto& kv : a[0]->items)
          if (kv->items.size() == 2) d->entries.emplace_back(kv->items[0], kv->items[1]);
      return d;
    }
    // Any other class or function: a stand-in object that keeps what was pickled into it.
    auto o = make(PyValue::kObject);
    o->cls = f;
    o->args = args;
    return o;
  }

  ZipReader& zip_;
  std::string prefix_;
  std::string data_;
  size_t pos_ = 0;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value> memo_;
  std::unordered_map<std::string, Value> storages_;
};

const Value* dict_get(const Value& d, const std::string& key) {
  if (d->kind != PyValue::kDict && d->kind != PyValue::kObject) return nullptr;
  for (const auto& kv : d->entries)
    if (kv.first->kind == PyValue::kStr && kv.first->s == key) return &kv.second;
  return nullptr;
}

}  // namespace

namespace {
TensorMap read_torch_checkpoint_unchecked(const std::string& path) {
  ZipReader zip(path);
  std::string prefix;
  bool found = false;
  for (const auto& n : zip.names()) {
    const std::string suffix = "data.pkl";
    if (n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0 &&
        std::count(n.begin(), n.end(), '/') <= 1) {
      prefix = n.substr(0, n.size() - suffix.size());
      found = true;
      break;
    }
  }
  if (!found) throw Error(cat(path, ": zip archive has no data.pkl: not a torch.save checkpoint"));
  if (zip.has(prefix + "byteorder") && zip.read(prefix + "byteorder") != "little")
    throw Error(cat(path, ": big-endian checkpoints are not supported"));
  Unpickler unpickler(zip, prefix, zip.read(prefix + "data.pkl"));
  Value root = unpickler.load();

  Value sd = root;
  std::string strip;
  if (const Value* v = dict_get(root, "state_dict")) sd = *v;
  else if (const Value* v = dict_get(root, "module")) {
    sd = *v;
    strip = "module.";
  } else if (const Value* v = dict_get(root, "model")) sd = *v;
  if (sd->kind != PyValue::kDict && sd->kind != PyValue::kObject)
    throw Error(cat(path, ": the checkpoint holds no state_dict (a dict of tensors)"));
  TensorMap out;
  for (const auto& kv : sd->entries) {
    if (kv.first->kind != PyValue::kStr || kv.second->kind != PyValue::kTensor) continue;
    std::string key = kv.first->s;
    if (!strip.empty() && key.rfind(strip, 0) == 0) key = key.substr(strip.size());
    out[key] = kv.second->tensor;
  }
  if (out.empty()) throw Error(cat(path, ": the checkpoint's state_dict holds no tensors"));
  return out;
}
}  // namespace

TensorMap read_torch_checkpoint(const std::string& path) {
  try {
    return read_torch_checkpoint_unchecked(path);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // e.g. a number field that does not parse
    throw Error(cat(path, ": corrupt checkpoint: ", e.what()));
  }
}

}  // namespace vlmo
