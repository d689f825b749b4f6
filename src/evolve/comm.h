// How the ranks of a distributed search talk: every rank runs the same deterministic optimiser,
// evaluates its share of each generation (candidate i on rank i mod size) and the fitness vectors
// are summed across ranks, so every rank tells the optimiser the same values. Nothing but
// fitness values crosses the network; each rank loads the models once, from its own copy.
#pragma once

#include <memory>
#include <vector>

namespace amalgam::evolve {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const { return 0; }
  virtual int size() const { return 1; }
  // Elementwise sum of `values` over the ranks, in place, on every rank.
  virtual void sum(std::vector<double>& values) { (void)values; }
  // Whether any rank says true (a stop request seen by one rank stops all).
  virtual bool any(bool value) { return value; }
};

// MPI when the program was built with it and started by mpirun with more than one rank;
// otherwise a single local rank.
std::unique_ptr<Comm> make_comm(int* argc, char*** argv);
bool mpi_available();

}  // namespace amalgam::evolve
