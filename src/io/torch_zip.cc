#include "io/torch_zip.h"

#include <algorithm>
#include <limits>
#include <set>

#include "core/error.h"

namespace amalgam::io {

namespace {

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint64_t kLocalHeaderSize = 30;
constexpr uint64_t kCentralHeaderSize = 46;
constexpr uint64_t kEndSize = 22;
constexpr uint64_t kZip64EndSize = 56;
constexpr uint64_t kZip64LocatorSize = 20;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint32_t kMax32 = 0xffffffff;
constexpr uint16_t kMax16 = 0xffff;

uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t le64(const uint8_t* p) {
  return static_cast<uint64_t>(le32(p)) | (static_cast<uint64_t>(le32(p + 4)) << 32);
}

// True when [offset, offset + n) lies inside [0, limit).
bool fits(uint64_t offset, uint64_t n, uint64_t limit) {
  return offset <= limit && n <= limit - offset;
}

struct Directory {
  uint64_t entries = 0;
  uint64_t offset = 0;
  uint64_t size = 0;
  uint64_t end = 0;  // where the records after the central directory begin
};

Directory find_directory(const uint8_t* data, uint64_t size, const std::string& path) {
  // The end record is the last thing in the file, followed only by its comment.
  uint64_t eocd = std::numeric_limits<uint64_t>::max();
  if (size >= kEndSize) {
    const uint64_t lowest = size - kEndSize > kMax16 ? size - kEndSize - kMax16 : 0;
    for (uint64_t at = size - kEndSize + 1; at-- > lowest;) {
      if (le32(data + at) == kEndSig && at + kEndSize + le16(data + at + 20) == size) {
        eocd = at;
        break;
      }
    }
  }
  if (eocd == std::numeric_limits<uint64_t>::max()) {
    fail(
        "{}: not a complete ZIP archive: no end-of-central-directory record (truncated or "
        "damaged file?)",
        path);
  }
  const uint8_t* e = data + eocd;
  if (le16(e + 4) != 0 || le16(e + 6) != 0) fail("{}: multi-disk ZIP archives are not read", path);
  Directory dir{le16(e + 10), le32(e + 16), le32(e + 12), eocd};
  if (le16(e + 8) != le16(e + 10)) fail("{}: multi-disk ZIP archives are not read", path);

  // torch.save writes ZIP64 end records always; other writers only for large archives.
  if (eocd >= kZip64LocatorSize && le32(data + eocd - kZip64LocatorSize) == kZip64LocatorSig) {
    const uint8_t* loc = data + eocd - kZip64LocatorSize;
    const uint64_t z64 = le64(loc + 8);
    if (le32(loc + 4) != 0 || le32(loc + 16) > 1) {
      fail("{}: multi-disk ZIP archives are not read", path);
    }
    if (!fits(z64, kZip64EndSize, eocd - kZip64LocatorSize) || le32(data + z64) != kZip64EndSig) {
      fail("{}: damaged ZIP archive: the ZIP64 end record at byte {} is missing", path, z64);
    }
    const uint8_t* r = data + z64;
    if (le32(r + 16) != 0 || le32(r + 20) != 0 || le64(r + 24) != le64(r + 32)) {
      fail("{}: multi-disk ZIP archives are not read", path);
    }
    dir = Directory{le64(r + 32), le64(r + 48), le64(r + 40), z64};
  } else if (dir.entries == kMax16 || dir.offset == kMax32 || dir.size == kMax32) {
    fail("{}: damaged ZIP archive: ZIP64 sizes without a ZIP64 end record", path);
  }
  if (!fits(dir.offset, dir.size, dir.end)) {
    fail(
        "{}: damaged ZIP archive: the central directory (byte {}, {} bytes) lies outside the "
        "file",
        path, dir.offset, dir.size);
  }
  if (dir.entries > dir.size / kCentralHeaderSize) {
    fail("{}: damaged ZIP archive: {} entries cannot fit in a {}-byte central directory", path,
         dir.entries, dir.size);
  }
  return dir;
}

// Replaces the 32-bit fields that are saturated with the values of the ZIP64 extra field.
void read_zip64_extra(const uint8_t* extra, uint64_t n, ZipEntry& entry, bool size_is_max,
                      bool offset_is_max, const std::string& path) {
  uint64_t at = 0;
  while (at < n) {
    if (n - at < 4) fail("{}: entry '{}': damaged extra field", path, entry.name);
    const uint16_t id = le16(extra + at);
    const uint16_t len = le16(extra + at + 2);
    if (len > n - at - 4) fail("{}: entry '{}': damaged extra field", path, entry.name);
    if (id == kZip64ExtraId) {
      const uint8_t* f = extra + at + 4;
      uint64_t left = len;
      auto next = [&](const char* what) {
        if (left < 8) fail("{}: entry '{}': ZIP64 field lacks the {}", path, entry.name, what);
        const uint64_t v = le64(f);
        f += 8;
        left -= 8;
        return v;
      };
      if (size_is_max) {
        entry.size = next("uncompressed size");
        if (next("compressed size") != entry.size) {
          fail("{}: entry '{}': stored entry with different compressed and uncompressed sizes",
               path, entry.name);
        }
      }
      if (offset_is_max) entry.header_offset = next("header offset");
      return;
    }
    at += 4 + static_cast<uint64_t>(len);
  }
  if (size_is_max || offset_is_max) {
    fail("{}: entry '{}': saturated size or offset without a ZIP64 field", path, entry.name);
  }
}

}  // namespace

std::vector<ZipEntry> read_zip_directory(const uint8_t* data, uint64_t size,
                                         const std::string& path) {
  const Directory dir = find_directory(data, size, path);
  std::vector<ZipEntry> entries;
  entries.reserve(dir.entries);
  std::set<std::string> names;
  const uint64_t cd_end = dir.offset + dir.size;
  uint64_t at = dir.offset;
  for (uint64_t i = 0; i < dir.entries; ++i) {
    if (!fits(at, kCentralHeaderSize, cd_end) || le32(data + at) != kCentralHeaderSig) {
      fail("{}: damaged ZIP archive: central directory entry {} is missing", path, i);
    }
    const uint8_t* h = data + at;
    const uint16_t flags = le16(h + 8);
    const uint16_t method = le16(h + 10);
    const uint64_t name_len = le16(h + 28);
    const uint64_t extra_len = le16(h + 30);
    const uint64_t comment_len = le16(h + 32);
    if (!fits(at + kCentralHeaderSize, name_len + extra_len + comment_len, cd_end)) {
      fail("{}: damaged ZIP archive: central directory entry {} overruns the directory", path, i);
    }
    ZipEntry entry;
    entry.name.assign(reinterpret_cast<const char*>(h + kCentralHeaderSize), name_len);
    if (entry.name.empty() || entry.name.find('\0') != std::string::npos) {
      fail("{}: damaged ZIP archive: entry {} has an invalid name", path, i);
    }
    if (flags & 0x41) fail("{}: entry '{}' is encrypted", path, entry.name);
    if (method != 0) {
      fail(
          "{}: entry '{}' is compressed (method {}); torch.save stores its records "
          "uncompressed, and only such archives can be mapped in place",
          path, entry.name, method);
    }
    if (le16(h + 34) != 0 && le16(h + 34) != kMax16) {
      fail("{}: entry '{}' lies on another disk", path, entry.name);
    }
    entry.crc32 = le32(h + 16);
    const uint32_t comp32 = le32(h + 20);
    const uint32_t size32 = le32(h + 24);
    if (comp32 != size32) {
      fail("{}: entry '{}': stored entry with different compressed and uncompressed sizes", path,
           entry.name);
    }
    entry.size = size32;
    entry.header_offset = le32(h + 42);
    read_zip64_extra(h + kCentralHeaderSize + name_len, extra_len, entry, size32 == kMax32,
                     le32(h + 42) == kMax32, path);
    if (!names.insert(entry.name).second) fail("{}: entry '{}' appears twice", path, entry.name);

    // The local header repeats the name; the data follows it and its extra field.
    const uint64_t lh = entry.header_offset;
    if (!fits(lh, kLocalHeaderSize, dir.offset) || le32(data + lh) != kLocalHeaderSig) {
      fail("{}: entry '{}': no local header at byte {} (truncated or damaged file?)", path,
           entry.name, lh);
    }
    const uint64_t local_name = le16(data + lh + 26);
    const uint64_t local_extra = le16(data + lh + 28);
    if (le16(data + lh + 8) != 0) fail("{}: entry '{}' is compressed", path, entry.name);
    if (!fits(lh + kLocalHeaderSize, local_name + local_extra, dir.offset) ||
        local_name != name_len ||
        !std::equal(entry.name.begin(), entry.name.end(), data + lh + kLocalHeaderSize)) {
      fail("{}: entry '{}': its local header does not match the central directory", path,
           entry.name);
    }
    entry.data_offset = lh + kLocalHeaderSize + local_name + local_extra;
    if (!fits(entry.data_offset, entry.size, dir.offset)) {
      fail(
          "{}: entry '{}': its {} bytes at byte {} run past the archive data (truncated or "
          "damaged file?)",
          path, entry.name, entry.size, entry.data_offset);
    }
    entries.push_back(std::move(entry));
    at += kCentralHeaderSize + name_len + extra_len + comment_len;
  }

  // Entries must not share bytes: a record is then exactly the file range it claims.
  std::vector<const ZipEntry*> by_offset;
  for (const auto& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const ZipEntry* a, const ZipEntry* b) {
    return a->header_offset < b->header_offset;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const ZipEntry& prev = *by_offset[i - 1];
    if (prev.data_offset + prev.size > by_offset[i]->header_offset) {
      fail("{}: damaged ZIP archive: entries '{}' and '{}' overlap", path, prev.name,
           by_offset[i]->name);
    }
  }
  return entries;
}

}  // namespace amalgam::io
