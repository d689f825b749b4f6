// File-system helpers for writing outputs safely: a staging directory next to the target that is
// renamed into place only when everything in it is complete and synced.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace amalgam::core {

std::string read_text_file(const std::filesystem::path& path);
// Writes a file, fsyncs it. Throws with the path on failure (e.g. a full disk).
void write_text_file(const std::filesystem::path& path, const std::string& text);
void fsync_path(const std::filesystem::path& path);
// Writes all `size` bytes at `offset` of the open file `fd` (the file `path`), retrying short and
// interrupted writes. Throws with the path, and the tensor when one is named, on failure (e.g.
// "out/model.safetensors: writing tensor 'x' failed: No space left on device").
void pwrite_all(int fd, const void* data, size_t size, uint64_t offset,
                const std::filesystem::path& path, std::string_view tensor = {});
// A result file written whole or not at all: the text goes to a hidden file beside `path`,
// which is synced and renamed over `path`; on failure (a full disk) nothing is left and an
// existing `path` is untouched.
void write_file_atomic(const std::filesystem::path& path, const std::string& text);

// Output directory written atomically: files go to a hidden staging directory beside `target`;
// commit() renames it to `target` (replacing an existing one only when `force`). Destroyed
// without commit(), the staging directory is removed, so a failure leaves no partial output.
// A run killed outright (kill -9, power loss) cannot clean up: its staging directory is then
// found by the next run writing the same target, which removes it (with a warning) once it
// is sure no live run holds it (each run holds a flock on its own staging directory).
class StagedDirectory {
 public:
  StagedDirectory(const std::filesystem::path& target, bool force);
  ~StagedDirectory();
  StagedDirectory(const StagedDirectory&) = delete;
  StagedDirectory& operator=(const StagedDirectory&) = delete;

  const std::filesystem::path& path() const { return staging_; }
  void commit();
  // `message` with the hidden staging path replaced by the target the user asked for, so that
  // errors name the output (".../out/model.safetensors: No space left on device").
  std::string user_message(std::string message) const;

 private:
  std::filesystem::path target_;
  std::filesystem::path staging_;
  bool force_;
  bool committed_ = false;
  int lock_fd_ = -1;
  int signal_slot_ = -1;  // removed by the SIGBUS handler if an input vanishes mid-write  // flock
                          // on the staging directory: held while this run owns it
};

}  // namespace amalgam::core
