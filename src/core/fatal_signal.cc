#include "core/fatal_signal.h"

#include <sys/syscall.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

namespace amalgam::core {

namespace {

struct Entry {
  const char* begin = nullptr;  // null for a staging directory
  size_t size = 0;
  char path[4096] = {};
};

constexpr int kSlots = 256;
Entry g_entries[kSlots];
std::atomic<bool> g_used[kSlots];

int claim(const void* data, size_t size, const std::string& path) {
  for (int i = 0; i < kSlots; ++i) {
    bool expected = false;
    if (!g_used[i].load(std::memory_order_relaxed) &&
        g_used[i].compare_exchange_strong(expected, true)) {
      Entry& e = g_entries[i];
      e.begin = static_cast<const char*>(data);
      e.size = size;
      std::strncpy(e.path, path.c_str(), sizeof(e.path) - 1);
      e.path[sizeof(e.path) - 1] = '\0';
      std::atomic_thread_fence(std::memory_order_release);
      return i;
    }
  }
  return -1;
}

void say(const char* text) {
  ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

// Removes `name` under `parent_fd` and what it holds, with system calls only (getdents64 into a
// stack buffer; no allocation). Depth-limited: a staging directory holds files and at most a few
// levels of stage directories.
void remove_tree(int parent_fd, const char* name, int depth) {
  if (::unlinkat(parent_fd, name, 0) == 0 || depth > 4) return;
  const int fd = ::openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return;
  alignas(8) char buffer[4096];
  for (;;) {
    const long n = ::syscall(SYS_getdents64, fd, buffer, sizeof(buffer));
    if (n <= 0) break;
    for (long at = 0; at < n;) {
      // struct linux_dirent64: u64 inode, s64 offset, u16 record length, u8 type, name.
      unsigned short length;
      std::memcpy(&length, buffer + at + 16, sizeof(length));
      const char* entry = buffer + at + 19;
      if (std::strcmp(entry, ".") != 0 && std::strcmp(entry, "..") != 0) {
        remove_tree(fd, entry, depth + 1);
      }
      at += length;
    }
  }
  ::close(fd);
  ::unlinkat(parent_fd, name, AT_REMOVEDIR);
}

extern "C" void on_sigbus(int, siginfo_t* info, void*) {
  const char* addr = static_cast<const char*>(info->si_addr);
  const char* file = nullptr;
  for (int i = 0; i < kSlots; ++i) {
    if (!g_used[i].load(std::memory_order_acquire)) continue;
    const Entry& e = g_entries[i];
    if (e.begin != nullptr && addr >= e.begin && addr < e.begin + e.size) file = e.path;
  }
  say("error: ");
  if (file != nullptr) {
    say(file);
    say(": the file shrank while it was being read (truncated or replaced by another program); "
        "nothing was written\n");
  } else {
    say("bus error (SIGBUS) reading memory-mapped data; nothing was written\n");
  }
  for (int i = 0; i < kSlots; ++i) {
    if (!g_used[i].load(std::memory_order_acquire)) continue;
    const Entry& e = g_entries[i];
    if (e.begin == nullptr) remove_tree(AT_FDCWD, e.path, 0);
  }
  ::_exit(1);
}

}  // namespace

void install_fatal_signal_handler() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGBUS, &sa, nullptr);
}

int register_mapping(const void* data, size_t size, const std::string& path) {
  return claim(data, size, path);
}

int register_staging(const std::string& path) { return claim(nullptr, 0, path); }

void release_slot(int slot) {
  if (slot >= 0 && slot < kSlots) g_used[slot].store(false, std::memory_order_release);
}

}  // namespace amalgam::core
