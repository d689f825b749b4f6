// SIGBUS: reading a memory-mapped input whose file was truncated (by another program, or a
// network file system losing it) raises SIGBUS, which would kill the process with no message and
// leave the staging directory of the output behind. The handler names the file the faulting
// address belongs to, removes the staging directories of outputs in progress, and exits with
// status 1. Only async-signal-safe calls run inside it: the registries below are fixed arrays of
// atomically published entries, filled outside the handler.
#pragma once

#include <cstddef>
#include <string>

namespace amalgam::core {

void install_fatal_signal_handler();

// A mapping of `path`; returns a slot to release (or -1 when the registry is full).
int register_mapping(const void* data, size_t size, const std::string& path);
// A staging directory to remove if the process dies of SIGBUS.
int register_staging(const std::string& path);
void release_slot(int slot);

}  // namespace amalgam::core
