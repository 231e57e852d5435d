// report.html from synthetic reports (worker/prune/report_html.h): every chart present with its
// data, the Pareto front against a brute-force count, nothing fetched, text escaped,
// deterministic. tests/python/report_html_test.py renders a real artifact's page in Chromium.
#include "worker/prune/report_html.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace prunesvc::prune {
namespace {

using json = nlohmann::json;

int Count(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos;
       at = haystack.find(needle, at + 1)) {
    ++n;
  }
  return n;
}

// The vertex count of the polyline with class `cls`.
int PolylineVertices(const std::string& html, const std::string& cls) {
  const size_t at = html.find(absl::StrCat("class=\"", cls, "\""));
  if (at == std::string::npos) return -1;
  const size_t p = html.find("points=\"", at) + 8;
  const std::string points = html.substr(p, html.find('"', p) - p);
  return int(std::vector<std::string>(absl::StrSplit(points, ' ', absl::SkipEmpty())).size());
}

json Report() {
  json r = {{"strategy", "EFFICIENTLLAVA"},
            {"granularity", "UNSTRUCTURED"},
            {"flops_budget", 0.5},
            {"flops_ratio", 0.49},
            {"accuracy_set", "eval"},
            {"dense", {{"accuracy", 0.95}, {"loss", 0.1}, {"flops", 1.9e8}, {"params", 1000}}},
            {"pruned", {{"accuracy", 0.9}, {"loss", 0.2}, {"flops", 0.93e8}, {"params", 600}}},
            {"uniform_point", {{"flops_ratio", 0.5}, {"accuracy", 0.85}, {"loss", 0.3}}},
            {"search", {{"best", {{"flops_ratio_nominal", 0.48}, {"accuracy", 0.93}}}}},
            {"provenance", {{"model_dir", "/m/<tiny>"}, {"seed", 3}}}};
  r["history"] = json::array();
  for (int g = 0; g < 4; ++g) {
    r["history"].push_back(
        {{"generation", g}, {"best_accuracy", 0.8 + 0.03 * g}, {"best_fitness", 0.5 - 0.05 * g}});
  }
  r["policy"] = {{"units", json::array()}};
  for (int u = 0; u < 6; ++u) {
    r["policy"]["units"].push_back({{"name", absl::StrCat("layers.", u)}, {"ratio", 0.1 * u}});
  }
  r["policy"]["units"][0]["name"] = "<b>";
  // 20 policies with distinct FLOPs, one evaluated twice, one without numbers (an old report).
  r["evaluated"] = json::array();
  for (int i = 0; i < 20; ++i) {
    const double f = 0.3 + 0.01 * i, a = 0.5 + 0.4 * std::abs(std::sin(1.7 * i));
    r["evaluated"].push_back(
        {{"hash", absl::StrCat("h", i)}, {"flops_ratio", f}, {"accuracy", a}, {"loss", 1 - a}});
  }
  r["evaluated"].push_back(r["evaluated"][3]);
  r["evaluated"].push_back({{"hash", "old"}, {"projector_version", 0}});
  return r;
}

TEST(ReportHtmlTest, EveryChartIsThereWithItsData) {
  const json r = Report();
  const std::string html = ReportHtml(r);
  for (const char* id :
       {"chart-generations", "chart-policy", "chart-pareto", "dense-vs-pruned", "provenance"}) {
    EXPECT_EQ(Count(html, absl::StrCat("id=\"", id, "\"")), 1) << id;
  }
  EXPECT_EQ(Count(html, "class=\"evaluated\""), 20);  // distinct policies with numbers
  EXPECT_EQ(Count(html, "class=\"bar\""), 6);
  EXPECT_EQ(PolylineVertices(html, "series-accuracy"), 4);
  EXPECT_EQ(Count(html, "class=\"uniform\""), 1);
  EXPECT_EQ(Count(html, "class=\"chosen\""), 1);
  EXPECT_EQ(Count(html, "class=\"budget\""), 1);
  // The front: a policy is on it when it is more accurate than every cheaper one (brute force);
  // drawn as steps, k points give 2k − 1 vertices.
  int k = 0;
  for (int i = 0; i < 20; ++i) {
    bool dominated = false;
    for (int j = 0; j < i; ++j) {  // FLOPs grow with the index
      dominated |= r["evaluated"][j]["accuracy"] >= r["evaluated"][i]["accuracy"];
    }
    k += !dominated;
  }
  EXPECT_EQ(PolylineVertices(html, "pareto-front"), 2 * k - 1);
  // Self-contained and escaped.
  EXPECT_FALSE(absl::StrContains(html, "<script"));
  EXPECT_FALSE(absl::StrContains(html, "src="));
  EXPECT_FALSE(absl::StrContains(html, "href="));
  EXPECT_FALSE(absl::StrContains(html, "<b>"));
  EXPECT_TRUE(absl::StrContains(html, "&lt;b&gt;"));
  EXPECT_TRUE(absl::StrContains(html, "/m/&lt;tiny&gt;"));
  EXPECT_EQ(ReportHtml(r), html);  // deterministic
}

TEST(ReportHtmlTest, MissingDataLeavesItsChartOut) {
  json r = Report();
  r.erase("history");
  r.erase("uniform_point");
  for (json& e : r["evaluated"]) e.erase("accuracy");  // a report from before issue 18
  const std::string html = ReportHtml(r);
  EXPECT_FALSE(absl::StrContains(html, "chart-generations"));
  EXPECT_FALSE(absl::StrContains(html, "chart-pareto"));
  EXPECT_TRUE(absl::StrContains(html, "chart-policy"));
  EXPECT_TRUE(absl::StrContains(html, "dense-vs-pruned"));
  EXPECT_FALSE(absl::StrContains(ReportHtml(json::object()), "<svg"));  // nothing: no charts
}

}  // namespace
}  // namespace prunesvc::prune
