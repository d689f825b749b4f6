#include "core/fs.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/fatal_signal.h"
#include "core/log.h"

namespace amalgam::core {

namespace fs = std::filesystem;

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void fsync_path(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open for sync: {}", path.string(), std::strerror(errno));
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (rc != 0) fail("{}: fsync failed: {}", path.string(), std::strerror(e));
}

void pwrite_all(int fd, const void* data, size_t size, uint64_t offset, const fs::path& path,
                std::string_view tensor) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = n < 0 ? std::strerror(errno) : "no progress";
      if (tensor.empty()) fail("{}: write failed: {}", path.string(), why);
      fail("{}: writing tensor '{}' failed: {}", path.string(), tensor, why);
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

void write_text_file(const fs::path& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot create: {}", path.string(), std::strerror(errno));
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      fail("{}: write failed: {}", path.string(), std::strerror(e));
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    fail("{}: write failed: {}", path.string(), std::strerror(errno));
  }
}

namespace {

// ".NAME.tmp-XXXXXXXX" (and its ".old" twin) beside the target whose lock nobody holds: left by a
// run that was killed. A staging directory held by a live run is left alone.
void remove_abandoned_staging(const fs::path& parent, const std::string& name) {
  const std::string prefix = "." + name + ".tmp-";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(parent, ec)) {
    const std::string file = entry.path().filename().string();
    if (file.rfind(prefix, 0) != 0 || !entry.is_directory(ec)) continue;
    const int fd = ::open(entry.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) continue;
    const bool free = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
    if (free) {
      std::error_code rm;
      const uintmax_t removed = fs::remove_all(entry.path(), rm);
      if (!rm) {
        warn("removed {} ({} files), left by an earlier run that was killed before it finished",
             entry.path().string(), removed);
      }
    }
    ::close(fd);
  }
}

}  // namespace

void write_file_atomic(const fs::path& path, const std::string& text) {
  const fs::path target = fs::absolute(path);
  if (fs::is_directory(target)) fail("{}: is a directory", path.string());
  std::random_device rd;
  const fs::path tmp =
      target.parent_path() / fmt::format(".{}.tmp-{:08x}", target.filename().string(), rd());
  try {
    write_text_file(tmp, text);
  } catch (const Error& e) {
    std::error_code ec;
    fs::remove(tmp, ec);
    // Name the file the user asked for, not the hidden one.
    std::string message = e.what();
    const std::string hidden = tmp.string();
    if (message.rfind(hidden, 0) == 0) message = path.string() + message.substr(hidden.size());
    throw Error(message);
  }
  std::error_code ec;
  fs::rename(tmp, target, ec);
  if (ec) {
    fs::remove(tmp, ec);
    fail("{}: cannot write: {}", path.string(), ec.message());
  }
}

StagedDirectory::StagedDirectory(const fs::path& target, bool force)
    : target_(fs::absolute(target).lexically_normal()), force_(force) {
  if (target_.filename().empty()) target_ = target_.parent_path();
  std::error_code ec;
  if (fs::exists(target_, ec)) {
    if (!fs::is_directory(target_)) fail("{}: exists and is not a directory", target_.string());
    if (!fs::is_empty(target_) && !force_) {
      fail("{}: output directory exists and is not empty (use --force to replace it)",
           target_.string());
    }
  }
  fs::path parent = target_.parent_path();
  fs::create_directories(parent, ec);
  if (ec) fail("{}: cannot create: {}", parent.string(), ec.message());
  remove_abandoned_staging(parent, target_.filename().string());
  std::random_device rd;
  staging_ = parent / fmt::format(".{}.tmp-{:08x}", target_.filename().string(), rd());
  fs::create_directory(staging_, ec);
  if (ec) fail("{}: cannot create: {}", staging_.string(), ec.message());
  lock_fd_ = ::open(staging_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (lock_fd_ >= 0) ::flock(lock_fd_, LOCK_EX | LOCK_NB);
  signal_slot_ = register_staging(staging_.string());
}

StagedDirectory::~StagedDirectory() {
  release_slot(signal_slot_);
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(staging_, ec);
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

std::string StagedDirectory::user_message(std::string message) const {
  const std::string hidden = staging_.string(), shown = target_.string();
  for (size_t at = message.find(hidden); at != std::string::npos;
       at = message.find(hidden, at + shown.size())) {
    message.replace(at, hidden.size(), shown);
  }
  return message;
}

void StagedDirectory::commit() {
  std::error_code ec;
  fs::path old;
  if (fs::exists(target_, ec)) {
    // Move the old output aside first so that a failed rename never loses both.
    old = staging_;
    old += ".old";
    fs::rename(target_, old, ec);
    if (ec) fail("{}: cannot replace: {}", target_.string(), ec.message());
  }
  fs::rename(staging_, target_, ec);
  if (ec) {
    if (!old.empty()) fs::rename(old, target_);
    fail("{}: cannot rename output into place: {}", target_.string(), ec.message());
  }
  committed_ = true;
  release_slot(signal_slot_);
  signal_slot_ = -1;
  if (!old.empty()) fs::remove_all(old, ec);
  fsync_path(target_.parent_path());
}

}  // namespace amalgam::core
