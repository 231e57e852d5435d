#include "worker/prune/activation_cache.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

namespace prunesvc::prune {
namespace {

// 4 floats = 16 bytes per entry; 2 linears per layer, 3 layers.
at::Tensor Act(float v) { return at::full({4}, v, at::kFloat); }

TEST(ActivationCacheTest, DeepestFindsTheLongestKeptPrefixOfTheSameBatch) {
  ActivationCache cache(1 << 20, 2);
  const std::vector<double> a = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6};
  cache.Insert(0, a, 1, Act(1));
  cache.Insert(0, a, 2, Act(2));
  auto [l, t] = cache.Deepest(0, a, 2);
  EXPECT_EQ(l, 2);
  EXPECT_EQ(t[0].item<float>(), 2.0f);
  // Only the first `layer` layers are the key: another third layer finds the same entry.
  const std::vector<double> b = {0.1, 0.2, 0.3, 0.4, 0.9, 0.9};
  EXPECT_EQ(cache.Deepest(0, b, 2).first, 2);
  // A second layer that differs stops at the first.
  const std::vector<double> c = {0.1, 0.2, 0.3, 0.0, 0.5, 0.6};
  auto [lc, tc] = cache.Deepest(0, c, 2);
  EXPECT_EQ(lc, 1);
  EXPECT_EQ(tc[0].item<float>(), 1.0f);
  // max_layer bounds the search; another batch has nothing.
  EXPECT_EQ(cache.Deepest(0, a, 1).first, 1);
  EXPECT_EQ(cache.Deepest(16, a, 2).first, 0);
  EXPECT_FALSE(cache.Deepest(16, a, 2).second.defined());
  const std::vector<double> d = {0.0, 0.2, 0.3, 0.4, 0.5, 0.6};
  EXPECT_EQ(cache.Deepest(0, d, 2).first, 0);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.bytes(), 32);
}

TEST(ActivationCacheTest, EvictsTheLeastRecentlyUsedDownToTheBudget) {
  ActivationCache cache(32, 1);  // two entries
  const std::vector<double> a = {0.1, 0.5}, b = {0.2, 0.5}, c = {0.3, 0.5};
  cache.Insert(0, a, 1, Act(1));
  cache.Insert(0, b, 1, Act(2));
  EXPECT_EQ(cache.Deepest(0, a, 1).first, 1);  // a is now the most recently used
  cache.Insert(0, c, 1, Act(3));
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.bytes(), 32);
  EXPECT_EQ(cache.Deepest(0, b, 1).first, 0);  // evicted
  EXPECT_EQ(cache.Deepest(0, a, 1).first, 1);
  EXPECT_EQ(cache.Deepest(0, c, 1).first, 1);
  // The same key again replaces its entry (the bytes counted once).
  cache.Insert(0, c, 1, Act(4));
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.bytes(), 32);
  EXPECT_EQ(cache.Deepest(0, c, 1).second[0].item<float>(), 4.0f);
  // An entry larger than the whole budget is not kept, and evicts nothing.
  cache.Insert(0, b, 1, at::zeros({100}, at::kFloat));
  EXPECT_EQ(cache.bytes(), 32);
  EXPECT_EQ(cache.Deepest(0, b, 1).first, 0);
  EXPECT_EQ(cache.Deepest(0, a, 1).first, 1);
  cache.Clear();
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.bytes(), 0);
  EXPECT_EQ(cache.Deepest(0, a, 1).first, 0);
}

TEST(ActivationCacheTest, ABudgetOfZeroKeepsNothing) {
  ActivationCache cache(0, 1);
  const std::vector<double> a = {0.1};
  cache.Insert(0, a, 1, Act(1));
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.Deepest(0, a, 1).first, 0);
}

}  // namespace
}  // namespace prunesvc::prune
