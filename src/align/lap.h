// Linear assignment (the square LAP): the permutation p maximising sum_i score(i, p(i)).
// Debian packages no maintained LAP solver, so this is the shortest-augmenting-path method of
// Jonker and Volgenant (dual potentials, Dijkstra-like row insertion), O(n^3), in fp64.
#pragma once

#include <cstdint>
#include <vector>

namespace amalgam::align {

// score is row-major (n, n). Returns perm with perm[i] = the column assigned to row i.
// Fails on a non-finite score (names the row and column).
std::vector<int64_t> solve_lap_max(const std::vector<double>& score, int64_t n);

// sum_i score(i, perm[i]).
double assignment_score(const std::vector<double>& score, int64_t n,
                        const std::vector<int64_t>& perm);

}  // namespace amalgam::align
