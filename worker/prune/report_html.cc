#include "worker/prune/report_html.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace prunesvc::prune {
namespace {

using json = nlohmann::json;

constexpr double kWidth = 720, kHeight = 300;
constexpr double kLeft = 64, kRight = 24, kTop = 28, kBottom = 48;
constexpr char kSearchColour[] = "#4c78a8";
constexpr char kAccentColour[] = "#f58518";
constexpr char kFrontColour[] = "#54a24b";
constexpr char kUniformColour[] = "#e45756";

std::string Esc(const std::string& s) {
  return absl::StrReplaceAll(s, {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}});
}

double Num(const json& j, const char* key, double fallback = NAN) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_number()) return fallback;
  return j[key].get<double>();
}

std::string Text(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key)) return "";
  const json& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  return v.dump();
}

// A linear map from [lo, hi] to pixels.
struct Axis {
  double lo, hi, from, to;
  double operator()(double v) const {
    return hi == lo ? (from + to) / 2 : from + (v - lo) / (hi - lo) * (to - from);
  }
};

// lo/hi padded by 5 % and never empty.
std::pair<double, double> Range(const std::vector<double>& v, double floor_lo = -INFINITY,
                                double ceil_hi = INFINITY) {
  double lo = INFINITY, hi = -INFINITY;
  for (double x : v) {
    if (std::isfinite(x)) lo = std::min(lo, x), hi = std::max(hi, x);
  }
  if (!std::isfinite(lo)) return {0, 1};
  const double pad = hi > lo ? 0.05 * (hi - lo) : std::max(0.05, std::abs(hi) * 0.05);
  return {std::max(floor_lo, lo - pad), std::min(ceil_hi, hi + pad)};
}

// Frame, ticks and labels of a chart; returns the opening of the SVG.
std::string Frame(const std::string& id, const std::string& title, const Axis& x, const Axis& y,
                  const std::string& x_label, const std::string& y_label, int x_ticks = 5) {
  std::string s = absl::StrFormat(
      "<svg id=\"%s\" class=\"chart\" viewBox=\"0 0 %.0f %.0f\" width=\"%.0f\" height=\"%.0f\" "
      "role=\"img\" aria-label=\"%s\" xmlns=\"http://www.w3.org/2000/svg\">\n"
      "<text x=\"%.0f\" y=\"18\" class=\"title\">%s</text>\n",
      id, kWidth, kHeight, kWidth, kHeight, Esc(title), kLeft, Esc(title));
  absl::StrAppendFormat(&s,
                        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"axis\"/>\n"
                        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"axis\"/>\n",
                        kLeft, kHeight - kBottom, kWidth - kRight, kHeight - kBottom, kLeft, kTop,
                        kLeft, kHeight - kBottom);
  for (int i = 0; i <= 4; ++i) {
    const double v = y.lo + (y.hi - y.lo) * i / 4.0;
    absl::StrAppendFormat(&s,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">%.3g"
                          "</text>\n",
                          kLeft, y(v), kWidth - kRight, y(v), kLeft - 6, y(v) + 4, v);
  }
  for (int i = 0; x_ticks > 0 && i <= x_ticks; ++i) {
    const double v = x.lo + (x.hi - x.lo) * i / double(x_ticks);
    absl::StrAppendFormat(&s,
                          "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" "
                          "text-anchor=\"middle\">%.3g</text>\n",
                          x(v), kHeight - kBottom + 16, v);
  }
  absl::StrAppendFormat(&s,
                        "<text x=\"%.1f\" y=\"%.1f\" class=\"label\" "
                        "text-anchor=\"middle\">%s</text>\n"
                        "<text x=\"14\" y=\"%.1f\" class=\"label\" text-anchor=\"middle\" "
                        "transform=\"rotate(-90 14 %.1f)\">%s</text>\n",
                        (kLeft + kWidth - kRight) / 2, kHeight - 10, Esc(x_label),
                        (kTop + kHeight - kBottom) / 2, (kTop + kHeight - kBottom) / 2,
                        Esc(y_label));
  return s;
}

std::string Polyline(const std::vector<std::pair<double, double>>& pts, const char* colour,
                     const char* cls) {
  std::string s = absl::StrCat("<polyline class=\"", cls, "\" fill=\"none\" stroke=\"", colour,
                               "\" stroke-width=\"2\" points=\"");
  for (const auto& [x, y] : pts) absl::StrAppendFormat(&s, "%.1f,%.1f ", x, y);
  return s + "\"/>\n";
}

std::string Legend(const std::vector<std::pair<std::string, std::string>>& items) {
  std::string s;
  double x = kLeft + 8;
  for (const auto& [colour, name] : items) {
    absl::StrAppendFormat(&s,
                          "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"%s\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" class=\"legend\">%s</text>\n",
                          x, kTop + 4, colour, x + 14, kTop + 13, Esc(name));
    x += 24 + 7.0 * double(name.size());
  }
  return s;
}

// Best accuracy (left scale) and best fitness (normalized to the same frame, its own labels in
// the legend) per generation.
std::string GenerationsChart(const json& history) {
  std::vector<double> gens, acc, fit;
  for (const json& g : history) {
    gens.push_back(Num(g, "generation"));
    acc.push_back(Num(g, "best_accuracy"));
    fit.push_back(Num(g, "best_fitness"));
  }
  const Axis x{gens.front(), std::max(gens.back(), gens.front() + 1), kLeft + 8,
               kWidth - kRight - 8};
  auto [alo, ahi] = Range(acc, 0, 1);
  const Axis y{alo, ahi, kHeight - kBottom, kTop + 8};
  auto [flo, fhi] = Range(fit);
  const Axis yf{flo, fhi, kHeight - kBottom, kTop + 8};
  std::string s = Frame("chart-generations", "The search, generation by generation", x, y,
                        "generation", "accuracy (search samples)",
                        // One tick per generation (integers) while they fit.
                        int(x.hi - x.lo) <= 12 ? int(x.hi - x.lo) : 6);
  std::vector<std::pair<double, double>> pa, pf;
  for (size_t i = 0; i < gens.size(); ++i) {
    pa.push_back({x(gens[i]), y(acc[i])});
    pf.push_back({x(gens[i]), yf(fit[i])});
  }
  absl::StrAppend(&s, Polyline(pa, kSearchColour, "series-accuracy"),
                  Polyline(pf, kAccentColour, "series-fitness"));
  for (const auto& [px, py] : pa) {
    absl::StrAppendFormat(&s, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px, py,
                          kSearchColour);
  }
  absl::StrAppend(
      &s,
      Legend({{kSearchColour, "accuracy of the fittest policy"},
              {kAccentColour, absl::StrFormat("best fitness (%.3g to %.3g, scaled)", flo, fhi)}}),
      "</svg>\n");
  return s;
}

// Kept fraction (1 − ratio) per unit.
std::string PolicyChart(const json& units) {
  const size_t n = units.size();
  const Axis x{0, double(n), kLeft + 4, kWidth - kRight};
  const Axis y{0, 1, kHeight - kBottom, kTop + 8};
  std::string s = Frame("chart-policy", "Kept weights per unit (1 − pruning ratio)", x, y, "unit",
                        "kept fraction", 0);
  const double w = (x.to - x.from) / double(n);
  for (size_t i = 0; i < n; ++i) {
    const double kept = 1.0 - Num(units[i], "ratio", 0);
    const double top = y(kept);
    absl::StrAppendFormat(&s,
                          "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
                          "height=\"%.1f\" fill=\"%s\"><title>%s: kept %.3f</title></rect>\n",
                          x(double(i)) + w * 0.1, top, w * 0.8, y(0) - top, kSearchColour,
                          Esc(Text(units[i], "name")), kept);
    if (n <= 16) {
      absl::StrAppendFormat(&s,
                            "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" "
                            "text-anchor=\"middle\">%s</text>\n",
                            x(double(i)) + w / 2, kHeight - kBottom + 16,
                            Esc(Text(units[i], "name")));
    }
  }
  return s + "</svg>\n";
}

// Accuracy vs FLOPs ratio of the distinct evaluated policies, their Pareto front (the most
// accurate policy at or below each FLOPs ratio), the budget, the pick and UNIFORM.
std::string ParetoChart(const json& report) {
  std::map<std::string, std::pair<double, double>> points;  // hash → (flops, accuracy)
  for (const json& e : report["evaluated"]) {
    const double f = Num(e, "flops_ratio"), a = Num(e, "accuracy");
    if (std::isfinite(f) && std::isfinite(a)) points[Text(e, "hash")] = {f, a};
  }
  if (points.empty()) return "";
  std::vector<std::pair<double, double>> sorted;
  for (const auto& [h, p] : points) sorted.push_back(p);
  std::sort(sorted.begin(), sorted.end());
  std::vector<double> fs, as;
  for (const auto& [f, a] : sorted) fs.push_back(f), as.push_back(a);
  const json& uniform = report.value("uniform_point", json());
  const double uf = Num(uniform, "flops_ratio"), ua = Num(uniform, "accuracy");
  const double budget = Num(report, "flops_budget");
  if (std::isfinite(uf)) fs.push_back(uf), as.push_back(ua);
  if (std::isfinite(budget)) fs.push_back(budget);
  auto [flo, fhi] = Range(fs, 0, 1);
  auto [alo, ahi] = Range(as, 0, 1);
  const Axis x{flo, fhi, kLeft + 8, kWidth - kRight - 8};
  const Axis y{alo, ahi, kHeight - kBottom, kTop + 8};
  std::string s = Frame("chart-pareto", "Every evaluated policy: accuracy against FLOPs", x, y,
                        "FLOPs ratio (of dense)", "accuracy (search samples)");
  for (const auto& [f, a] : sorted) {
    absl::StrAppendFormat(&s,
                          "<circle class=\"evaluated\" cx=\"%.1f\" cy=\"%.1f\" r=\"3\" "
                          "fill=\"%s\" fill-opacity=\"0.45\"/>\n",
                          x(f), y(a), kSearchColour);
  }
  std::vector<std::pair<double, double>> front;
  double best = -INFINITY;
  for (const auto& [f, a] : sorted) {
    if (a > best) {
      if (!front.empty()) front.push_back({x(f), front.back().second});  // a step
      front.push_back({x(f), y(a)});
      best = a;
    }
  }
  absl::StrAppend(&s, Polyline(front, kFrontColour, "pareto-front"));
  if (std::isfinite(budget)) {
    absl::StrAppendFormat(&s,
                          "<line class=\"budget\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                          "stroke=\"#888\" stroke-dasharray=\"4 3\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" "
                          "text-anchor=\"end\">budget %.3g</text>\n",
                          x(budget), kTop + 8, x(budget), kHeight - kBottom, x(budget) - 4,
                          kHeight - kBottom - 8, budget);
  }
  const json& best_j = report.value("search", json::object()).value("best", json());
  const double bf = Num(best_j, "flops_ratio_nominal", Num(best_j, "flops_ratio"));
  const double ba = Num(best_j, "accuracy");
  std::vector<std::pair<std::string, std::string>> legend = {{kSearchColour, "evaluated"},
                                                             {kFrontColour, "Pareto front"}};
  if (std::isfinite(bf) && std::isfinite(ba)) {
    absl::StrAppendFormat(&s,
                          "<circle class=\"chosen\" cx=\"%.1f\" cy=\"%.1f\" r=\"7\" fill=\"none\" "
                          "stroke=\"%s\" stroke-width=\"2.5\"/>\n",
                          x(bf), y(ba), kAccentColour);
    legend.push_back({kAccentColour, "the search's pick"});
  }
  if (std::isfinite(uf) && std::isfinite(ua)) {
    absl::StrAppendFormat(&s,
                          "<rect class=\"uniform\" x=\"%.1f\" y=\"%.1f\" width=\"10\" "
                          "height=\"10\" fill=\"%s\" transform=\"rotate(45 %.1f %.1f)\"/>\n",
                          x(uf) - 5, y(ua) - 5, kUniformColour, x(uf), y(ua));
    legend.push_back({kUniformColour, "UNIFORM"});
  }
  absl::StrAppend(&s, Legend(legend), "</svg>\n");
  return s;
}

// A number with `decimals` decimals ("—" when absent); decimals < 0: three significant digits.
std::string Cell(double v, int decimals) {
  if (!std::isfinite(v)) return "—";
  return decimals < 0 ? absl::StrFormat("%.3g", v) : absl::StrFormat("%.*f", decimals, v);
}

std::string DenseVsPruned(const json& report) {
  const json& d = report.value("dense", json::object());
  const json& p = report.value("pruned", json::object());
  const double dense_flops = Num(d, "flops");
  std::string s = "<table id=\"dense-vs-pruned\"><tr><th></th><th>dense</th><th>pruned</th></tr>\n";
  auto row = [&](const std::string& name, double a, double b, int decimals) {
    absl::StrAppend(&s, "<tr><td>", Esc(name), "</td><td>", Cell(a, decimals), "</td><td>",
                    Cell(b, decimals), "</td></tr>\n");
  };

  row(absl::StrCat("accuracy (", Text(report, "accuracy_set"), " set)"), Num(d, "accuracy"),
      Num(p, "accuracy"), 4);
  row("mean answer loss", Num(d, "loss"), Num(p, "loss"), 4);
  row("FLOPs ratio", 1.0, Num(report, "flops_ratio"), 4);
  row("GFLOPs per sample", dense_flops / 1e9, Num(p, "flops") / 1e9, 3);
  row("parameters", Num(d, "params"), Num(p, "params"), 0);
  row("latency (ms per batch)", Num(d, "latency_ms"), Num(p, "latency_ms"), 2);
  return s + "</table>\n";
}

std::string Provenance(const json& report) {
  std::string s = "<table id=\"provenance\">\n";
  const json& prov = report.value("provenance", json::object());
  for (const auto& [k, v] : prov.items()) {
    if (v.is_object() || v.is_array()) continue;
    absl::StrAppend(&s, "<tr><td>", Esc(k), "</td><td><code>",
                    Esc(v.is_string() ? v.get<std::string>() : v.dump()), "</code></td></tr>\n");
  }
  return s + "</table>\n";
}

constexpr char kStyle[] = R"(
body { font-family: sans-serif; max-width: 780px; margin: 24px auto; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; border-bottom: 1px solid #ddd;
  text-align: left; font-size: 14px; }
.chart { display: block; margin: 8px 0; }
.chart .title { font-size: 14px; font-weight: bold; } .chart .tick { font-size: 11px; fill: #555; }
.chart .label { font-size: 12px; fill: #333; } .chart .legend { font-size: 12px; }
.chart .axis { stroke: #333; } .chart .grid { stroke: #eee; }
.note { color: #555; font-size: 13px; }
)";

}  // namespace

std::string ReportHtml(const json& report) {
  const json& policy = report.value("policy", json::object());
  std::string out = absl::StrCat(
      "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<title>prunesvc report</title><style>",
      kStyle, "</style></head><body>\n<h1>Pruning report</h1>\n<p>", Esc(Text(report, "strategy")),
      " · ", Esc(Text(report, "granularity")), " · FLOPs budget ",
      Cell(Num(report, "flops_budget"), -1), ", reached ", Cell(Num(report, "flops_ratio"), 4),
      " · model <code>", Esc(Text(report.value("provenance", json::object()), "model_dir")),
      "</code></p>\n");
  absl::StrAppend(&out, "<h2>Dense vs pruned</h2>\n", DenseVsPruned(report));
  const json& history = report.value("history", json::array());
  if (history.is_array() && !history.empty()) {
    absl::StrAppend(&out, "<h2>Search</h2>\n", GenerationsChart(history));
  }
  if (policy.contains("units") && policy["units"].is_array() && !policy["units"].empty()) {
    absl::StrAppend(&out, "<h2>Policy</h2>\n", PolicyChart(policy["units"]));
  }
  if (report.contains("evaluated") && report["evaluated"].is_array()) {
    const std::string pareto = ParetoChart(report);
    if (!pareto.empty()) {
      absl::StrAppend(&out, "<h2>Accuracy against FLOPs</h2>\n", pareto,
                      "<p class=\"note\">Accuracy on the search samples under the projector each "
                      "policy was scored with; UNIFORM is one ratio for every unit at the budget, "
                      "scored the same way under the final projector.</p>\n");
    }
  }
  absl::StrAppend(&out, "<h2>Provenance</h2>\n", Provenance(report), "</body></html>\n");
  return out;
}

}  // namespace prunesvc::prune
