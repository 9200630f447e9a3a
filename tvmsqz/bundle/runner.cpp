// tvmsqz-run: the C++ runner of a tvmsqz bundle (see docs/bundle.md).
//
//   bin/tvmsqz-run [--input x.npy] [-o y.npy] [--repeat N] [--warmup N] [--threads N] [--top K]
//                  [--seed S] [--json]
//
// It needs nothing but the bundle: libtvm_ffi.so and libtvm_runtime.so are found through the
// rpath $ORIGIN/../lib, the model and bundle.json through /proc/self/exe. Before the model is
// mapped, every file bundle.json lists is checked (size, sha256): dlopen of a truncated
// shared object kills the process with SIGBUS, so a bad copy must be refused first. A wrong
// input (shape, dtype) is refused too. Every refusal is one line on stderr and exit code 2.
//
// Built by `tvmsqz package` with the target's (cross) compiler against the tvm_ffi headers
// of the wheel the libraries come from; it uses only the tvm-ffi C++ API (Module, Function,
// Tensor, json), so it does not depend on the compiler side of TVM at all.
#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>
#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

const char* kFormat = "tvmsqz-bundle/1";
const int kAllocPooled = 2;  // tvm::runtime::memory::AllocatorType::kPooled

struct Refusal {
  std::string message;
};

[[noreturn]] void Refuse(const std::string& message) { throw Refusal{message}; }

// ------------------------------------------------------------------------ sha256 (FIPS 180-4)

class Sha256 {
 public:
  Sha256() { Reset(); }
  void Update(const unsigned char* data, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      block_[used_++] = data[i];
      if (used_ == 64) {
        Compress();
        used_ = 0;
      }
    }
    bits_ += static_cast<uint64_t>(n) * 8;
  }
  std::string HexDigest() {
    uint64_t bits = bits_;
    unsigned char pad = 0x80;
    Update(&pad, 1);
    unsigned char zero = 0;
    while (used_ != 56) Update(&zero, 1);
    for (int i = 7; i >= 0; --i) {
      unsigned char b = static_cast<unsigned char>(bits >> (8 * i));
      Update(&b, 1);
    }
    char out[65];
    for (int i = 0; i < 8; ++i) std::snprintf(out + 8 * i, 9, "%08x", h_[i]);
    return std::string(out, 64);
  }

 private:
  static uint32_t Rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void Reset() {
    const uint32_t init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                              0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    std::memcpy(h_, init, sizeof(h_));
    used_ = 0;
    bits_ = 0;
  }
  void Compress() {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      w[i] = (uint32_t(block_[4 * i]) << 24) | (uint32_t(block_[4 * i + 1]) << 16) |
             (uint32_t(block_[4 * i + 2]) << 8) | uint32_t(block_[4 * i + 3]);
    }
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = Rotr(w[i - 15], 7) ^ Rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = Rotr(w[i - 2], 17) ^ Rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6],
             h = h_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = h + (Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h_[0] += a;
    h_[1] += b;
    h_[2] += c;
    h_[3] += d;
    h_[4] += e;
    h_[5] += f;
    h_[6] += g;
    h_[7] += h;
  }
  uint32_t h_[8];
  unsigned char block_[64];
  size_t used_;
  uint64_t bits_;
};

bool FileSize(const std::string& path, int64_t* size) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return false;
  *size = static_cast<int64_t>(in.tellg());
  return true;
}

std::string FileSha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  Sha256 sha;
  std::vector<char> buf(1 << 16);
  while (in) {
    in.read(buf.data(), buf.size());
    sha.Update(reinterpret_cast<unsigned char*>(buf.data()), static_cast<size_t>(in.gcount()));
  }
  return sha.HexDigest();
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Refuse("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ------------------------------------------------------------------------ the bundle manifest

std::string BundleDir() {
  std::vector<char> buf(4096);
  ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) Refuse("cannot find this program's path (/proc/self/exe)");
  std::string exe(buf.data(), static_cast<size_t>(n));
  std::string bin = exe.substr(0, exe.rfind('/'));
  return bin.substr(0, bin.rfind('/'));
}

ffi::json::Object AsObject(const ffi::Any& v, const std::string& what) {
  auto obj = v.try_cast<ffi::json::Object>();
  if (!obj.has_value()) Refuse("bundle.json is invalid: " + what + " is not an object");
  return *obj;
}

ffi::Any Get(const ffi::json::Object& obj, const char* key, const std::string& where) {
  auto it = obj.find(ffi::String(key));
  if (it == obj.end()) Refuse("bundle.json is invalid: " + where + " has no '" + key + "'");
  return (*it).second;
}

std::string GetString(const ffi::json::Object& obj, const char* key, const std::string& where) {
  auto s = Get(obj, key, where).try_cast<ffi::String>();
  if (!s.has_value()) Refuse("bundle.json is invalid: " + where + "." + key + " is not a string");
  return std::string(*s);
}

int64_t GetInt(const ffi::Any& v, const std::string& what) {
  auto i = v.try_cast<int64_t>();
  if (!i.has_value()) Refuse("bundle.json is invalid: " + what + " is not an integer");
  return *i;
}

struct Bundle {
  std::string dir;
  std::string model_file;
  std::string model_name;
  std::string target;
  std::string arch;
  std::string input_name;
  std::vector<int64_t> input_shape;
  std::string input_dtype;
  std::string labels_file;
  std::vector<std::string> files;  // every file bundle.json lists, relative to dir
  std::string weights_file;        // a --compress model's weight file ("" for weights inside the model)
  std::vector<std::string> weight_tensors;
};

// The real path of `path`, or "" when it does not exist.
std::string RealPath(const std::string& path) {
  char buf[PATH_MAX];
  return realpath(path.c_str(), buf) ? std::string(buf) : std::string();
}

// A path bundle.json names must stay inside the bundle: relative, no "..", no link leading out.
void CheckInsideBundle(const std::string& dir, const std::string& rel, const std::string& what) {
  bool dotdot = false;
  size_t start = 0;
  while (start <= rel.size()) {
    size_t end = rel.find('/', start);
    if (end == std::string::npos) end = rel.size();
    dotdot = dotdot || rel.substr(start, end - start) == "..";
    start = end + 1;
  }
  if (rel.empty() || rel[0] == '/' || dotdot) {
    Refuse("bundle.json is invalid: " + what + " '" + rel + "' points outside the bundle");
  }
  std::string root = RealPath(dir), full = RealPath(dir + "/" + rel);
  if (!root.empty() && !full.empty() && full.compare(0, root.size() + 1, root + "/") != 0) {
    Refuse("bundle.json is invalid: " + what + " '" + rel + "' points outside the bundle");
  }
}

Bundle ReadBundle(const std::string& dir) {
  std::string path = dir + "/bundle.json";
  ffi::String error;
  ffi::Any root = ffi::json::Parse(ffi::String(ReadText(path)), &error);
  if (!error.empty()) Refuse("bundle.json is corrupt (not JSON): " + std::string(error));
  ffi::json::Object m = AsObject(root, "the file");
  if (GetString(m, "format", "bundle") != kFormat) {
    Refuse("bundle.json has format " + GetString(m, "format", "bundle") + ", this runner reads " + kFormat);
  }
  Bundle b;
  b.dir = dir;
  ffi::json::Object model = AsObject(Get(m, "model", "bundle"), "model");
  b.model_file = GetString(model, "file", "model");
  b.model_name = GetString(model, "name", "model");
  b.labels_file = GetString(model, "labels", "model");
  CheckInsideBundle(dir, b.model_file, "model.file");
  CheckInsideBundle(dir, b.labels_file, "model.labels");
  b.target = GetString(m, "target", "bundle");
  b.arch = GetString(m, "arch", "bundle");
  // A GPU bundle (bundle.json "device": "cuda") runs through the Python runner only: this
  // runner drives the VM on the CPU device and carries no device-memory copies.
  if (m.find(ffi::String("device")) != m.end()) {
    std::string device = GetString(m, "device", "bundle");
    if (device != "cpu") {
      Refuse("this bundle runs on the " + device + " device, which the C++ runner does not drive: "
             "use python3 bin/tvmsqz-run.py");
    }
  }
  ffi::json::Object input = AsObject(Get(m, "input", "bundle"), "input");
  b.input_name = GetString(input, "name", "input");
  b.input_dtype = GetString(input, "dtype", "input");
  auto shape = Get(input, "shape", "input").try_cast<ffi::json::Array>();
  if (!shape.has_value()) Refuse("bundle.json is invalid: input.shape is not a list");
  for (const ffi::Any& d : *shape) b.input_shape.push_back(GetInt(d, "input.shape[i]"));
  // Bounds before anything is allocated from it (as the Python runner and `tvmsqz compile`).
  int64_t elements = 1;
  bool shape_ok = b.input_shape.size() == 4;
  for (int64_t d : b.input_shape) {
    shape_ok = shape_ok && d >= 1 && d <= 4096;
    if (shape_ok) elements *= d;
  }
  if (!shape_ok) Refuse("bundle.json is invalid: input.shape is not 4 integers in 1..4096");
  if (elements > (int64_t{1} << 30)) Refuse("bundle.json is invalid: input.shape has over 2^30 elements");
  // Every file the bundle lists, before anything is loaded from it.
  auto files = Get(m, "files", "bundle").try_cast<ffi::json::Array>();
  if (!files.has_value()) Refuse("bundle.json is invalid: files is not a list");
  bool model_listed = false;
  for (const ffi::Any& f : *files) {
    ffi::json::Object entry = AsObject(f, "files[i]");
    std::string rel = GetString(entry, "file", "files[i]");
    model_listed = model_listed || rel == b.model_file;
    b.files.push_back(rel);
    int64_t want = GetInt(Get(entry, "bytes", rel), rel + ".bytes");
    std::string sha = GetString(entry, "sha256", rel);
    std::string full = dir + "/" + rel;
    int64_t size = 0;
    if (!FileSize(full, &size)) Refuse(full + " is missing (listed in bundle.json): copy the bundle again");
    if (size != want) {
      Refuse(full + " is " + std::to_string(size) + " bytes, bundle.json says " + std::to_string(want) +
             ": truncated or replaced; copy the bundle again");
    }
    if (FileSha256(full) != sha) {
      Refuse(full + " does not match the sha256 in bundle.json: modified or corrupt; copy the bundle again");
    }
  }
  if (!model_listed) Refuse("bundle.json lists no size and sha256 for the model " + b.model_file);
  if (model.find(ffi::String("weights")) != model.end()) {
    ffi::json::Object w = AsObject(Get(model, "weights", "model"), "model.weights");
    b.weights_file = GetString(w, "file", "model.weights");
    CheckInsideBundle(dir, b.weights_file, "model.weights.file");
    if (std::find(b.files.begin(), b.files.end(), b.weights_file) == b.files.end()) {
      Refuse("bundle.json lists no size and sha256 for the weight file " + b.weights_file);
    }
    auto names = Get(w, "tensors", "model.weights").try_cast<ffi::json::Array>();
    if (!names.has_value()) Refuse("bundle.json is invalid: model.weights.tensors is not a list");
    for (const ffi::Any& n : *names) {
      auto text = n.try_cast<ffi::String>();
      if (!text.has_value()) Refuse("bundle.json is invalid: model.weights.tensors holds a non-string");
      b.weight_tensors.push_back(std::string(*text));
    }
  }
  return b;
}

struct CPUAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    t->data = std::aligned_alloc(64, (n + 63) / 64 * 64);
    if (t->data == nullptr) Refuse("out of memory allocating the input");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// ------------------------------------------------------------------------ the weight file
// tvmsqz/weightfile.py is the reference: the same format, the same checks, the same result.

uint32_t Crc32(const uint8_t* p, size_t n) {
  static uint32_t table[256];
  static bool ready = false;
  if (!ready) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    ready = true;
  }
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

struct WeightReader {
  const uint8_t* data;
  size_t off, end;
  std::string name;
  const uint8_t* Take(size_t n) {
    if (n > end - off) Refuse(name + " is truncated (a field at byte " + std::to_string(off) + " runs past its end)");
    const uint8_t* p = data + off;
    off += n;
    return p;
  }
  uint32_t U(int bytes) {
    const uint8_t* p = Take(bytes);
    uint32_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
    return v;
  }
};

// A canonical Huffman decode table: the next `bits` bits of a stream -> (symbol, code length).
struct HuffTable {
  int bits = 1;
  std::vector<int32_t> sym;
  std::vector<uint8_t> len;
};

HuffTable MakeTable(const uint8_t* lengths, int n, const std::string& what) {
  const int kMaxBits = 15;
  HuffTable t;
  int64_t kraft = 0;
  for (int i = 0; i < n; ++i) {
    if (lengths[i] > kMaxBits) Refuse(what + ": a Huffman code is longer than 15 bits");
    if (lengths[i]) kraft += int64_t{1} << (kMaxBits - lengths[i]);
    t.bits = std::max<int>(t.bits, lengths[i]);
  }
  if (kraft > (int64_t{1} << kMaxBits)) Refuse(what + ": its Huffman code lengths do not form a prefix code");
  t.sym.assign(size_t{1} << t.bits, 0);
  t.len.assign(size_t{1} << t.bits, 0);
  size_t at = 0;
  for (int length = 1; length <= t.bits; ++length) {
    for (int s = 0; s < n; ++s) {
      if (lengths[s] != length) continue;
      size_t width = size_t{1} << (t.bits - length);
      std::fill(t.sym.begin() + at, t.sym.begin() + at + width, s);
      std::fill(t.len.begin() + at, t.len.begin() + at + width, static_cast<uint8_t>(length));
      at += width;
    }
  }
  return t;
}

struct BitStream {
  const uint8_t* data;
  uint64_t pos, end;  // in bits
  uint64_t limit;     // bytes readable at data (the streams of this tensor): zeros past it
  int Next(const HuffTable& t) {
    uint64_t byte = pos >> 3;
    uint32_t word = 0;
    for (int i = 0; i < 4; ++i) word = (word << 8) | (byte + i < limit ? data[byte + i] : 0);
    uint32_t peek = static_cast<uint32_t>((static_cast<uint64_t>(word) << (pos & 7)) & 0xFFFFFFFFu) >> (32 - t.bits);
    int length = t.len[peek];
    if (length == 0) Refuse("the weight file is corrupt (an invalid Huffman code)");
    pos += length;
    if (pos > end) Refuse("the weight file is corrupt (a stream reads past its bytes)");
    return t.sym[peek];
  }
};

std::vector<std::pair<std::string, ffi::Tensor>> DecodeWeights(const std::string& path) {
  std::string blob;
  {
    std::ifstream in(path, std::ios::binary);
    if (!in) Refuse("cannot read the weight file " + path);
    blob.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  std::string name = path.substr(path.find_last_of('/') + 1);
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(blob.data());
  if (blob.size() < 16 || std::memcmp(bytes, "TVSQZW01", 8) != 0) {
    Refuse(name + " is not a tvmsqz weight file (bad magic or too short)");
  }
  size_t body = blob.size() - 4;
  uint32_t stored = bytes[body] | (bytes[body + 1] << 8) | (bytes[body + 2] << 16) | (uint32_t{bytes[body + 3]} << 24);
  if (Crc32(bytes, body) != stored) Refuse(name + " is corrupt or truncated (CRC-32 mismatch)");
  WeightReader rd{bytes, 8, body, name};
  uint32_t count = rd.U(4);
  if (count > 4096) Refuse(name + " claims " + std::to_string(count) + " tensors (at most 4096)");
  std::vector<std::pair<std::string, ffi::Tensor>> out;
  for (uint32_t t = 0; t < count; ++t) {
    uint32_t name_len = rd.U(2);
    const uint8_t* np = rd.Take(name_len);
    std::string tname(reinterpret_cast<const char*>(np), name_len);
    uint32_t ndim = rd.U(1);
    if (ndim > 8) Refuse(name + ": " + tname + " has " + std::to_string(ndim) + " dimensions");
    std::vector<int64_t> dims;
    int64_t size = 1;
    for (uint32_t d = 0; d < ndim; ++d) {
      dims.push_back(rd.U(4));
      size *= dims.back();
      if (size > (int64_t{1} << 28)) Refuse(name + ": " + tname + " has over 2^28 elements");
    }
    for (const auto& seen : out) {
      if (seen.first == tname) Refuse(name + " holds " + tname + " twice");
    }
    uint32_t dtype = rd.U(1);  // 0 float32, 1 int8 (integer values stored as float32)
    if (dtype > 1) Refuse(name + ": " + tname + " has unknown dtype " + std::to_string(dtype));
    std::vector<float> values(static_cast<size_t>(size));
    float* dst = values.data();
    uint32_t kind = rd.U(1);
    if (kind == 0) {
      const uint8_t* raw = rd.Take(static_cast<size_t>(size) * 4);
      std::memcpy(dst, raw, static_cast<size_t>(size) * 4);  // little-endian float32, as the hosts we build for
    } else if (kind == 1) {
      std::string what = name + ": " + tname;
      uint32_t entries = rd.U(4);
      if (entries > size) Refuse(what + " claims more entries than weights");
      uint32_t k = rd.U(2);
      std::vector<float> codebook(k);
      std::memcpy(codebook.data(), rd.Take(size_t{k} * 4), size_t{k} * 4);
      uint32_t escape = rd.U(1);
      if (escape < 1) Refuse(what + " has gap escape 0");
      const uint8_t* code_len = rd.Take(k);
      const uint8_t* gap_len = rd.Take(escape + 1);
      uint32_t chunk = rd.U(4);
      uint32_t streams = rd.U(4);
      if (entries && (chunk < 1 || streams != (entries + chunk - 1) / chunk)) Refuse(what + " has a bad stream count");
      if (!entries && streams) Refuse(what + " has streams but no entries");
      std::vector<uint64_t> sizes(streams);
      uint64_t total = 0;
      for (uint32_t i = 0; i < streams; ++i) total += sizes[i] = rd.U(4);
      if (total > rd.end - rd.off) Refuse(name + " is truncated (a field at byte " + std::to_string(rd.off) + " runs past its end)");
      const uint8_t* data = rd.Take(total);
      std::memset(dst, 0, static_cast<size_t>(size) * 4);
      if (entries) {
        if (k < 1) Refuse(what + " has entries but an empty codebook");
        HuffTable codes = MakeTable(code_len, k, what), gaps = MakeTable(gap_len, escape + 1, what);
        int64_t position = -1;
        uint64_t start = 0;
        uint32_t left = entries;
        for (uint32_t i = 0; i < streams; ++i) {
          BitStream bs{data, start * 8, (start + sizes[i]) * 8, total};
          uint32_t n = std::min(chunk, left);
          for (uint32_t e = 0; e < n; ++e) {
            int64_t gap = 0;
            for (;;) {
              int g = bs.Next(gaps);
              gap += g;
              if (static_cast<uint32_t>(g) != escape) break;
            }
            int c = bs.Next(codes);
            position += gap + 1;
            if (position >= size) Refuse(name + ": " + tname + " addresses a weight beyond its " + std::to_string(size));
            if (static_cast<uint32_t>(c) >= k) Refuse(name + " is corrupt (a codebook index out of range)");
            dst[position] = codebook[c];
          }
          if (bs.end - bs.pos >= 8) Refuse(name + " is corrupt (a stream has bytes it does not use)");
          left -= n;
          start += sizes[i];
        }
      }
    } else {
      Refuse(name + ": " + tname + " has unknown kind " + std::to_string(kind));
    }
    DLDataType dl = dtype == 0 ? DLDataType{kDLFloat, 32, 1} : DLDataType{kDLInt, 8, 1};
    ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(dims), dl, DLDevice{kDLCPU, 0});
    if (dtype == 0) {
      std::memcpy(tensor.data_ptr(), values.data(), values.size() * 4);
    } else {
      int8_t* q = static_cast<int8_t*>(tensor.data_ptr());
      for (size_t i = 0; i < values.size(); ++i) {
        float v = values[i];
        if (!(v >= -128.0f && v <= 127.0f) || v != std::nearbyint(v)) {
          Refuse(name + ": " + tname + " holds values that are not int8");
        }
        q[i] = static_cast<int8_t>(v);
      }
    }
    out.emplace_back(tname, tensor);
  }
  if (rd.off != rd.end) Refuse(name + " has unexpected bytes after its last tensor");
  return out;
}

// Refuse an -o that would replace what this run reads: the input, bundle.json or a bundle file.
void CheckOutput(const std::string& output, const std::string& input, const Bundle& b) {
  struct stat out_st, in_st;
  if (!input.empty() && stat(output.c_str(), &out_st) == 0 && stat(input.c_str(), &in_st) == 0 &&
      out_st.st_dev == in_st.st_dev && out_st.st_ino == in_st.st_ino) {
    Refuse("-o " + output + " is the input " + input + ": it would be overwritten; choose another -o");
  }
  std::string real = RealPath(output);
  if (real.empty()) return;  // a new file: it cannot be one of the bundle's
  std::vector<std::string> listed = b.files;
  listed.push_back("bundle.json");
  for (const std::string& rel : listed) {
    if (real == RealPath(b.dir + "/" + rel)) {
      Refuse("-o " + output + " is the bundle's " + rel + ": it would be overwritten; choose another -o");
    }
  }
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// ------------------------------------------------------------------------ dtypes and .npy

struct DType {
  const char* name;
  const char* descr;  // numpy's array-protocol type string, little-endian
  DLDataType dl;
};

const DType kDTypes[] = {
    {"float32", "<f4", {kDLFloat, 32, 1}}, {"float16", "<f2", {kDLFloat, 16, 1}},
    {"float64", "<f8", {kDLFloat, 64, 1}}, {"int8", "|i1", {kDLInt, 8, 1}},
    {"uint8", "|u1", {kDLUInt, 8, 1}},     {"int32", "<i4", {kDLInt, 32, 1}},
    {"int64", "<i8", {kDLInt, 64, 1}},
};

const DType& DTypeByName(const std::string& name) {
  for (const DType& d : kDTypes) {
    if (name == d.name) return d;
  }
  Refuse("unsupported dtype " + name);
}

const DType& DTypeOf(DLDataType dl) {
  for (const DType& d : kDTypes) {
    if (d.dl.code == dl.code && d.dl.bits == dl.bits && d.dl.lanes == dl.lanes) return d;
  }
  Refuse("the model returned an unsupported dtype (code " + std::to_string(dl.code) + ", bits " +
         std::to_string(dl.bits) + ")");
}

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string NpyField(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) return "";
  size_t colon = header.find(':', at);
  size_t start = header.find_first_not_of(' ', colon + 1);
  size_t end = header[start] == '(' ? header.find(')', start) + 1
               : header[start] == '\'' ? header.find('\'', start + 1) + 1
                                       : header.find_first_of(",}", start);
  return header.substr(start, end - start);
}

// A .npy file (format 1.0-3.0, C order): its dtype descr, shape and raw bytes.
void ReadNpy(const std::string& path, std::string* descr, std::vector<int64_t>* shape, std::string* data) {
  std::string bytes = ReadText(path);
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) Refuse("cannot read " + path + " as a .npy array");
  int major = static_cast<unsigned char>(bytes[6]);
  size_t len, off;
  if (major == 1) {
    len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    off = 10;
  } else {
    if (bytes.size() < 12) Refuse("cannot read " + path + " as a .npy array");
    len = 0;
    for (int i = 0; i < 4; ++i) len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    off = 12;
  }
  if (off + len > bytes.size()) Refuse("cannot read " + path + " as a .npy array (truncated header)");
  std::string header = bytes.substr(off, len);
  std::string d = NpyField(header, "descr");
  if (d.size() < 2) Refuse("cannot read " + path + " as a .npy array (no descr)");
  *descr = d.substr(1, d.size() - 2);
  if (NpyField(header, "fortran_order") == "True") Refuse(path + " is in Fortran order; save it C-contiguous");
  std::string s = NpyField(header, "shape");
  shape->clear();
  for (size_t i = 1; i < s.size();) {
    size_t j = s.find_first_of(",)", i);
    std::string tok = s.substr(i, j - i);
    tok.erase(std::remove(tok.begin(), tok.end(), ' '), tok.end());
    if (!tok.empty()) shape->push_back(std::stoll(tok));
    i = j + 1;
  }
  *data = bytes.substr(off + len);
}

void WriteNpy(const std::string& path, const DType& dtype, const std::vector<int64_t>& shape, const void* data,
              size_t nbytes) {
  std::string dims;
  for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) dims += ",";
  std::string header = std::string("{'descr': '") + dtype.descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  header += std::string((64 - (10 + header.size() + 1) % 64) % 64, ' ') + "\n";
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) {
      std::remove(tmp.c_str());
      Refuse("cannot write " + path);
    }
    out.write("\x93NUMPY\x01\x00", 8);
    unsigned char len[2] = {static_cast<unsigned char>(header.size() & 0xff),
                            static_cast<unsigned char>(header.size() >> 8)};
    out.write(reinterpret_cast<char*>(len), 2);
    out << header;
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
    out.flush();
    if (!out) {  // a full disk or a size limit: no temp file left behind
      out.close();
      std::remove(tmp.c_str());
      Refuse("cannot write " + path + ": no space left on device or file too large");
    }
    out.close();
    if (!out) {
      std::remove(tmp.c_str());
      Refuse("cannot write " + path);
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    Refuse("cannot write " + path);
  }
}

// Point the loaded model's parallel loops at its chunk-claiming launcher (CPU artifacts carry
// tvmsqz_parallel_install, from tvmsqz/backends/cpu/parallel_launch.c): the same swap as the Python
// loaders; TVMSQZ_PARALLEL=static keeps TVM's own thread pool. RTLD_NOLOAD: never a second load.
void InstallParallelLaunch(const std::string& model_path) {
  const char* mode = std::getenv("TVMSQZ_PARALLEL");
  if (mode != nullptr && std::string(mode) == "static") return;
  void* handle = dlopen(model_path.c_str(), RTLD_NOLOAD | RTLD_LAZY);
  if (handle == nullptr) return;
  auto install = reinterpret_cast<int (*)()>(dlsym(handle, "tvmsqz_parallel_install"));
  if (install != nullptr) install();
  dlclose(handle);
}

// The seeded input both runners generate: splitmix64, uniform in [-1, 1) (docs/bundle.md).
void SeededInput(uint64_t seed, float* out, int64_t n) {
  uint64_t state = seed;
  for (int64_t i = 0; i < n; ++i) {
    state += 0x9E3779B97F4A7C15ULL;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    double u = static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);
    out[i] = static_cast<float>(2.0 * u - 1.0);
  }
}


int64_t PeakRssBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

std::vector<std::string> ReadLabels(const std::string& path) {
  std::vector<std::string> labels;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) labels.push_back(line);
  return labels;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out + "\"";
}

struct Options {
  std::string input, output;
  int repeat = 10, warmup = 1, threads = 0, top = 5;
  uint64_t seed = 0;
  bool json = false;
};

int ParseInt(const std::string& flag, const char* value, int min) {
  char* end = nullptr;
  long v = std::strtol(value, &end, 10);
  if (*value == '\0' || *end != '\0' || v < min) Refuse(flag + " wants an integer >= " + std::to_string(min));
  return static_cast<int>(v);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) Refuse(a + " needs a value");
      return argv[++i];
    };
    if (a == "--input" || a == "-i") o.input = value();
    else if (a == "-o" || a == "--output") o.output = value();
    else if (a == "--repeat") o.repeat = ParseInt(a, value(), 1);
    else if (a == "--warmup") o.warmup = ParseInt(a, value(), 0);
    else if (a == "--threads") o.threads = ParseInt(a, value(), 1);
    else if (a == "--top") o.top = ParseInt(a, value(), 1);
    else if (a == "--seed") o.seed = static_cast<uint64_t>(ParseInt(a, value(), 0));
    else if (a == "--json") o.json = true;
    else if (a == "-h" || a == "--help") {
      std::cout << "usage: tvmsqz-run [--input x.npy] [-o y.npy] [--repeat N] [--warmup N] [--threads N]"
                   " [--top K] [--seed S] [--json]\n";
      std::exit(0);
    } else {
      Refuse("unknown option " + a + " (see --help)");
    }
  }
  return o;
}

int Run(int argc, char** argv) {
  Options opt = ParseArgs(argc, argv);
  if (opt.threads > 0) setenv("TVM_NUM_THREADS", std::to_string(opt.threads).c_str(), 1);
  Bundle b = ReadBundle(BundleDir());
  if (!opt.output.empty()) CheckOutput(opt.output, opt.input, b);
  const DType& in_dtype = DTypeByName(b.input_dtype);
  int64_t n_in = NumElements(b.input_shape);
  ffi::Tensor x = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(b.input_shape), in_dtype.dl, DLDevice{kDLCPU, 0});
  size_t in_bytes = ffi::GetDataSize(x);
  std::string source = "seeded random, seed " + std::to_string(opt.seed);
  if (!opt.input.empty()) {
    std::string descr, data;
    std::vector<int64_t> shape;
    ReadNpy(opt.input, &descr, &shape, &data);
    if (shape != b.input_shape) {
      Refuse("input " + opt.input + " has shape " + ShapeText(shape) + ", the model expects " + ShapeText(b.input_shape));
    }
    if (descr != in_dtype.descr) {
      Refuse("input " + opt.input + " has dtype " + descr + ", the model expects " + b.input_dtype + " (" + in_dtype.descr + ")");
    }
    if (data.size() < in_bytes) Refuse("input " + opt.input + " is truncated");
    std::memcpy(x.data_ptr(), data.data(), in_bytes);
    source = opt.input;
  } else {
    if (b.input_dtype != "float32") Refuse("a seeded input is float32 only; pass --input x.npy");
    SeededInput(opt.seed, static_cast<float*>(x.data_ptr()), n_in);
  }

  std::string model_path = b.dir + "/" + b.model_file;
  std::optional<ffi::Module> lib, vm;
  ffi::Function main_fn;
  try {
    lib = ffi::Module::LoadFromFile(ffi::String(model_path));
    InstallParallelLaunch(model_path);
    vm = (*lib)->GetFunction("vm_load_executable", true).value()().cast<ffi::Module>();
    (*vm)->GetFunction("vm_initialization", false).value()(static_cast<int>(kDLCPU), 0, kAllocPooled);
    main_fn = (*vm)->GetFunction("main", false).value();
  } catch (const ffi::Error& e) {
    Refuse("cannot load " + model_path + " as a TVM artifact: " + std::string(e.message()));
  } catch (const std::exception& e) {
    Refuse("cannot load " + model_path + " as a TVM artifact: " + e.what());
  }

  // A --compress model: decode its weight file and run its load-time packing once (the tensors
  // main takes after its input), as tvmsqz.vm.bind_weights does.
  std::vector<ffi::Any> weights;
  double load_ms = 0.0;
  {
    auto loader = (*vm)->GetFunction("tvmsqz_load_params", true);
    if (b.weights_file.empty() != !loader.has_value()) {
      Refuse(b.weights_file.empty() ? "the model loads a weight file, and bundle.json names none"
                                    : "bundle.json names a weight file, and the model loads none");
    }
    if (loader.has_value()) {
      auto t0 = std::chrono::steady_clock::now();
      auto decoded = DecodeWeights(b.dir + "/" + b.weights_file);
      std::vector<std::string> names;
      for (const auto& d : decoded) names.push_back(d.first);
      if (names != b.weight_tensors) Refuse(b.weights_file + " holds other tensors than the model was built for");
      std::vector<int64_t> flat{static_cast<int64_t>(decoded.size())};
      for (const auto& d : decoded) {
        const DLTensor* t = d.second.GetDLTensorPtr();
        flat.push_back(t->ndim);
        flat.insert(flat.end(), t->shape, t->shape + t->ndim);
      }
      try {
        auto shapes_fn = (*vm)->GetFunction("tvmsqz_weight_shapes", true);
        ffi::Shape expected = shapes_fn.has_value() ? shapes_fn.value()().cast<ffi::Shape>() : ffi::Shape();
        if (std::vector<int64_t>(expected.begin(), expected.end()) != flat) {
          Refuse(b.weights_file + " holds tensors of other shapes than the model takes");
        }
        std::vector<ffi::AnyView> args;
        for (const auto& d : decoded) args.emplace_back(d.second);
        ffi::Any packed;
        ffi::Function load_fn = loader.value();
        load_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &packed);
        auto arr = packed.try_cast<ffi::Array<ffi::Any>>();
        if (!arr.has_value()) Refuse("the model's weight packing returned something other than a tuple");
        for (const ffi::Any& w : *arr) weights.push_back(w);
      } catch (const ffi::Error& e) {
        Refuse("cannot bind " + b.weights_file + " to the model: " + std::string(e.message()));
      }
      load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    }
  }
  std::vector<ffi::AnyView> main_args;
  main_args.emplace_back(x);
  for (const ffi::Any& w : weights) main_args.emplace_back(w);
  auto call_main = [&]() {
    ffi::Any out;
    main_fn.CallPacked(main_args.data(), static_cast<int32_t>(main_args.size()), &out);
    return out;
  };

  auto first_output = [](const ffi::Any& out) -> ffi::Tensor {
    if (auto t = out.try_cast<ffi::Tensor>()) return *t;
    if (auto arr = out.try_cast<ffi::Array<ffi::Any>>()) {
      if (arr->size() > 0) {
        if (auto t = (*arr)[0].try_cast<ffi::Tensor>()) return *t;
      }
    }
    Refuse("the model returned something other than a tensor");
  };
  std::optional<ffi::Tensor> result;
  std::vector<double> ms;
  try {
    for (int i = 0; i < opt.warmup; ++i) call_main();
    for (int i = 0; i < opt.repeat; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      ffi::Any out = call_main();
      auto t1 = std::chrono::steady_clock::now();
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      if (i + 1 == opt.repeat) result = first_output(out);
    }
  } catch (const ffi::Error& e) {
    Refuse("the model failed on this input: " + std::string(e.message()));
  }

  const DLTensor* y = result->GetDLTensorPtr();
  std::vector<int64_t> out_shape(y->shape, y->shape + y->ndim);
  const DType& out_dtype = DTypeOf(y->dtype);
  size_t out_bytes = ffi::GetDataSize(*y);
  const char* out_data = static_cast<const char*>(y->data) + y->byte_offset;
  if (!opt.output.empty()) WriteNpy(opt.output, out_dtype, out_shape, out_data, out_bytes);

  // top-k over the first sample of a float32 output
  std::vector<std::pair<int64_t, float>> top;
  if (std::string(out_dtype.name) == "float32" && !out_shape.empty()) {
    int64_t per = NumElements(out_shape) / std::max<int64_t>(1, out_shape[0]);
    const float* s = reinterpret_cast<const float*>(out_data);
    std::vector<int64_t> idx(per);
    for (int64_t i = 0; i < per; ++i) idx[i] = i;
    int k = static_cast<int>(std::min<int64_t>(opt.top, per));
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int64_t a, int64_t c) { return s[a] > s[c] || (s[a] == s[c] && a < c); });
    for (int i = 0; i < k; ++i) top.emplace_back(idx[i], s[idx[i]]);
  }
  std::vector<std::string> labels = ReadLabels(b.dir + "/" + b.labels_file);
  int64_t classes = out_shape.empty() ? 0 : NumElements(out_shape) / std::max<int64_t>(1, out_shape[0]);
  bool named = static_cast<int64_t>(labels.size()) == classes;

  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  double median = sorted.size() % 2 ? sorted[sorted.size() / 2]
                                    : 0.5 * (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]);
  double mean = 0;
  for (double v : ms) mean += v / ms.size();
  // numpy's default (linear) percentile, as tvmsqz.bench reports it
  double pos = 0.9 * (sorted.size() - 1);
  size_t lo = static_cast<size_t>(pos);
  double p90 = sorted[lo] + (pos - lo) * (sorted[std::min(lo + 1, sorted.size() - 1)] - sorted[lo]);

  std::printf("model %s (%s, %s), input %s %s %s (%s)\n", b.model_name.c_str(), b.target.c_str(), b.arch.c_str(),
              b.input_name.c_str(), ShapeText(b.input_shape).c_str(), b.input_dtype.c_str(), source.c_str());
  std::printf("output %s %s%s\n", ShapeText(out_shape).c_str(), out_dtype.name,
              opt.output.empty() ? "" : (" -> " + opt.output).c_str());
  for (size_t i = 0; i < top.size(); ++i) {
    std::printf("%2zu  %6lld  %12.5g  %s\n", i + 1, static_cast<long long>(top[i].first), top[i].second,
                named ? labels[top[i].first].c_str() : "");
  }
  std::printf("latency over %d runs: median %.3f ms, min %.3f ms, mean %.3f ms\n", opt.repeat, median, sorted[0], mean);
  if (opt.json) {
    int64_t rss = PeakRssBytes();  // -1 where /proc is not mounted (a bare chroot)
    std::printf("{\"runner\": \"cpp\", \"arch\": %s, \"output_shape\": %s, \"top\": [", JsonString(b.arch).c_str(),
                ShapeText(out_shape).c_str());
    for (size_t i = 0; i < top.size(); ++i) {
      std::printf("%s[%lld, %.9g]", i ? ", " : "", static_cast<long long>(top[i].first), top[i].second);
    }
    std::printf("], \"latency_ms\": {\"min\": %.6f, \"median\": %.6f, \"p90\": %.6f, \"mean\": %.6f, \"runs\": %d}, "
                "\"peak_rss_bytes\": %s, \"weights_load_ms\": %.3f}\n",
                sorted[0], median, p90, mean, opt.repeat, rss < 0 ? "null" : std::to_string(rss).c_str(), load_ms);
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const Refusal& r) {
    std::fprintf(stderr, "error: %s\n", r.message.c_str());
  } catch (const ffi::Error& e) {
    std::string msg = e.message();
    std::fprintf(stderr, "error: %s: %s\n", std::string(e.kind()).c_str(), msg.substr(0, msg.find('\n')).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 2;
}
