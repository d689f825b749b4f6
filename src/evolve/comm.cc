#include "evolve/comm.h"

#include <cstdlib>

#ifdef AMALGAM_WITH_MPI
#include <mpi.h>
#endif

namespace amalgam::evolve {

#ifdef AMALGAM_WITH_MPI
namespace {

class MpiComm : public Comm {
 public:
  MpiComm() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~MpiComm() override { MPI_Finalize(); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void sum(std::vector<double>& values) override {
    MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_DOUBLE, MPI_SUM,
                  MPI_COMM_WORLD);
  }
  bool any(bool value) override {
    int v = value ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return v != 0;
  }

 private:
  int rank_ = 0, size_ = 1;
};

}  // namespace

bool mpi_available() { return true; }

std::unique_ptr<Comm> make_comm(int* argc, char*** argv) {
  // Started by mpirun / srun? Otherwise stay a plain local process: a singleton MPI_Init costs
  // time and may refuse to run in containers.
  const bool launched =
      std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
  if (!launched) return std::make_unique<Comm>();
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) MPI_Init(argc, argv);
  return std::make_unique<MpiComm>();
}
#else
bool mpi_available() { return false; }

std::unique_ptr<Comm> make_comm(int*, char***) { return std::make_unique<Comm>(); }
#endif

}  // namespace amalgam::evolve
