// The block writer (core/block_writer.h): pieces in any order, sizes and threads make exactly the
// file they describe, whether their blocks are gathered in memory or (past the buffer limit)
// written straight through; a missing piece and a failed write are errors naming the file.
#include "core/block_writer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <random>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "test_util.h"

namespace amalgam {
namespace {

using core::BlockWriter;
using testing::TempDir;

struct Piece {
  uint64_t offset;
  size_t size;
};

// Cuts [0, size) into pieces of 1 byte to 3 blocks, shuffled.
std::vector<Piece> random_pieces(uint64_t size, std::mt19937& rng) {
  std::vector<Piece> pieces;
  std::uniform_int_distribution<uint64_t> length(1, 3 * BlockWriter::kBlock);
  for (uint64_t off = 0; off < size;) {
    const uint64_t n = std::min(size - off, rng() % 4 == 0 ? uint64_t{1} + rng() % 100 : length(rng));
    pieces.push_back({off, static_cast<size_t>(n)});
    off += n;
  }
  std::shuffle(pieces.begin(), pieces.end(), rng);
  return pieces;
}

std::vector<uint8_t> pattern(uint64_t size) {
  std::vector<uint8_t> bytes(size);
  for (uint64_t i = 0; i < size; ++i) bytes[i] = static_cast<uint8_t>(i * 2654435761u >> 13);
  return bytes;
}

// Writes `pieces` of `content` with `threads` threads, then checks the file.
void write_and_check(const std::vector<uint8_t>& content, const std::vector<Piece>& pieces,
                     int threads) {
  TempDir dir;
  const auto path = dir / "f.bin";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  {
    BlockWriter writer(fd, content.size(), path);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        for (size_t i = t; i < pieces.size(); i += threads) {
          writer.write(pieces[i].offset, content.data() + pieces[i].offset, pieces[i].size,
                       "data");
        }
      });
    }
    for (auto& w : workers) w.join();
    writer.check_complete();
  }
  ::close(fd);
  const std::string written = core::read_text_file(path);
  ASSERT_EQ(written.size(), content.size());
  EXPECT_TRUE(std::equal(content.begin(), content.end(),
                         reinterpret_cast<const uint8_t*>(written.data())));
}

TEST(BlockWriter, PiecesInAnyOrderMakeTheFile) {
  std::mt19937 rng(3);
  // Sizes around block edges, a file smaller than a block, and one of many blocks.
  for (uint64_t size : {uint64_t{1}, uint64_t{4097}, BlockWriter::kBlock - 1, BlockWriter::kBlock,
                        BlockWriter::kBlock + 1, 7 * BlockWriter::kBlock + 12345}) {
    SCOPED_TRACE(size);
    const auto content = pattern(size);
    write_and_check(content, random_pieces(size, rng), 1);
    write_and_check(content, random_pieces(size, rng), 4);
  }
}

// More incomplete blocks than kMaxBuffered at once: the later ones are written straight through
// and the file is still exact.
TEST(BlockWriter, PastTheBufferLimitPiecesGoStraightThrough) {
  const uint64_t blocks = 2 * BlockWriter::kMaxBuffered + 3;
  const uint64_t size = blocks * BlockWriter::kBlock;
  const auto content = pattern(size);
  std::vector<Piece> pieces;
  const uint64_t half = BlockWriter::kBlock / 2;
  for (uint64_t b = 0; b < blocks; ++b) pieces.push_back({b * BlockWriter::kBlock, half});
  for (uint64_t b = 0; b < blocks; ++b) pieces.push_back({b * BlockWriter::kBlock + half, half});
  write_and_check(content, pieces, 1);
}

TEST(BlockWriter, MissingBytesAndFailedWritesAreErrors) {
  TempDir dir;
  const auto path = dir / "f.bin";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  const auto content = pattern(3 * BlockWriter::kBlock);
  BlockWriter writer(fd, content.size(), path);
  writer.write(0, content.data(), content.size() - 1, "data");  // the last byte never comes
  try {
    writer.check_complete();
    ADD_FAILURE() << "an incomplete file passed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
  EXPECT_THROW(writer.write(content.size() - 1, content.data(), 2, "data"), Error);  // past the end
  ::close(fd);

  const int read_only = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(read_only, 0);
  BlockWriter refused(read_only, BlockWriter::kBlock, path);
  try {
    refused.write(0, content.data(), BlockWriter::kBlock, "tensor 'w'");
    ADD_FAILURE() << "a write to a read-only descriptor passed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path.string() + ": writing tensor 'w' failed"),
              std::string::npos)
        << e.what();
  }
  ::close(read_only);
}

}  // namespace
}  // namespace amalgam
