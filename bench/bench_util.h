// Helpers shared by benchmarks that run the amalgam binary as a child and compare its wall time
// with an I/O floor: a child's wall time, CPU time and peak RSS (wait4), reading files through
// the page cache, and writing + fsyncing an output-sized file.
#pragma once

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fs.h"

namespace amalgam::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct RunResult {
  int status = -1;
  double seconds = 0;
  double cpu_seconds = 0;  // user + system
  long max_rss_kb = 0;
};

inline std::string load_average() {
  std::string s = core::read_text_file("/proc/loadavg");
  return s.substr(0, s.find(' '));
}

// Runs argv as a child (stdout and stderr to /dev/null when quiet; `env`: extra NAME=VALUE
// entries), returning its wall time, CPU time and peak RSS.
inline RunResult run(const std::vector<std::string>& argv, bool quiet = true,
                     const std::vector<std::string>& env = {}) {
  const auto start = Clock::now();
  pid_t pid = ::fork();
  if (pid < 0) fail("fork failed: {}", std::strerror(errno));
  if (pid == 0) {
    for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
    if (quiet) {
      const int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 1);
      ::dup2(null, 2);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    std::perror("execv");
    std::_Exit(127);
  }
  int status = 0;
  struct rusage usage {};
  ::wait4(pid, &status, 0, &usage);
  RunResult r;
  r.seconds = seconds_since(start);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.max_rss_kb = usage.ru_maxrss;
  auto secs = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6; };
  r.cpu_seconds = secs(usage.ru_utime) + secs(usage.ru_stime);
  return r;
}

// read() every file through a 16 MiB buffer; returns the seconds taken.
inline double read_files(const std::vector<std::filesystem::path>& files) {
  std::vector<char> buf(16 << 20);
  const auto start = Clock::now();
  for (const auto& f : files) {
    int fd = ::open(f.c_str(), O_RDONLY);
    if (fd < 0) fail("{}: cannot open", f.string());
    while (::read(fd, buf.data(), buf.size()) > 0) {
    }
    ::close(fd);
  }
  return seconds_since(start);
}

// Writes `bytes` to a new file in 16 MiB pieces and fsyncs it (with early_writeback, starting
// writeback every 64 MiB as amalgam's writers do); returns the seconds taken.
inline double write_and_sync(const std::filesystem::path& path, uint64_t bytes,
                             bool early_writeback) {
  std::vector<char> buf(16 << 20);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<char>(i * 131 + 7);
  const auto start = Clock::now();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("{}: cannot create", path.string());
  for (uint64_t done = 0; done < bytes;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), bytes - done));
    if (::write(fd, buf.data(), n) != static_cast<ssize_t>(n)) fail("write failed");
    done += n;
    if (early_writeback && done % (uint64_t{64} << 20) == 0) {
      ::sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    }
  }
  ::fsync(fd);
  ::close(fd);
  const double s = seconds_since(start);
  std::filesystem::remove(path);
  return s;
}

}  // namespace amalgam::bench
