// Fitness curves as an SVG line chart (fitness.svg of a search run): one polyline per series over
// the generations, axes with a few labelled ticks, a legend. No dependencies.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace amalgam::evolve {

struct Series {
  std::string label;
  std::string color;                     // CSS colour
  std::vector<std::optional<double>> y;  // per generation; nullopt: no point
};

std::string line_chart_svg(const std::string& title, const std::string& y_label,
                           const std::vector<Series>& series);

}  // namespace amalgam::evolve
