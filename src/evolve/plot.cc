#include "evolve/plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace amalgam::evolve {

std::string line_chart_svg(const std::string& title, const std::string& y_label,
                           const std::vector<Series>& series) {
  constexpr double kW = 720, kH = 420, kLeft = 70, kRight = 170, kTop = 40, kBottom = 50;
  size_t n = 0;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto& s : series) {
    n = std::max(n, s.y.size());
    for (const auto& v : s.y) {
      if (v && std::isfinite(*v)) {
        lo = std::min(lo, *v);
        hi = std::max(hi, *v);
      }
    }
  }
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  if (hi - lo < 1e-12) lo -= 0.5, hi += 0.5;
  const double pad = 0.05 * (hi - lo);
  lo -= pad;
  hi += pad;
  const double pw = kW - kLeft - kRight, ph = kH - kTop - kBottom;
  auto x_of = [&](size_t i) { return kLeft + (n > 1 ? pw * i / double(n - 1) : pw / 2); };
  auto y_of = [&](double v) { return kTop + ph * (hi - v) / (hi - lo); };

  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
      "fill=\"white\"/>\n<text x=\"{}\" y=\"22\" font-size=\"15\">{}</text>\n",
      kW, kH, kLeft, title);
  svg += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>\n", kLeft,
      kTop, pw, ph);
  for (int t = 0; t <= 4; ++t) {
    const double v = lo + (hi - lo) * t / 4.0;
    svg += fmt::format(
        "<line x1=\"{0}\" x2=\"{1}\" y1=\"{2:.1f}\" y2=\"{2:.1f}\" stroke=\"#eee\"/>"
        "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5:.3g}</text>\n",
        kLeft, kLeft + pw, y_of(v), kLeft - 6, y_of(v) + 4, v);
  }
  const size_t step = std::max<size_t>(1, (n + 7) / 8);
  for (size_t i = 0; i < n; i += step) {
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", x_of(i),
                       kTop + ph + 18, i + 1);
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">generation</text>\n",
                     kLeft + pw / 2, kH - 10);
  svg += fmt::format(
      "<text transform=\"translate(18,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
      kTop + ph / 2, y_label);
  for (size_t k = 0; k < series.size(); ++k) {
    const Series& s = series[k];
    std::string points;
    for (size_t i = 0; i < s.y.size(); ++i) {
      if (s.y[i] && std::isfinite(*s.y[i])) {
        points += fmt::format("{:.1f},{:.1f} ", x_of(i), y_of(*s.y[i]));
      }
    }
    svg += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n",
                       points, s.color);
    const double ly = kTop + 14 + 18.0 * k;
    svg += fmt::format(
        "<line x1=\"{0}\" x2=\"{1}\" y1=\"{2}\" y2=\"{2}\" stroke=\"{3}\" stroke-width=\"3\"/>"
        "<text x=\"{4}\" y=\"{5}\">{6}</text>\n",
        kLeft + pw + 12, kLeft + pw + 32, ly, s.color, kLeft + pw + 38, ly + 4, s.label);
  }
  return svg + "</svg>\n";
}

}  // namespace amalgam::evolve
