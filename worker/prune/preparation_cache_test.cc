#include "worker/prune/preparation_cache.h"

#include <memory>

#include "gtest/gtest.h"

namespace prunesvc::prune {
namespace {

std::shared_ptr<const Preparation> Make(double loss) {
  auto p = std::make_shared<Preparation>();
  p->dense_search.loss = loss;
  return p;
}

// An entry is found while a job holds it or while it is among the `keep` most recently used;
// the first publisher of a key wins (a second job that prepared meanwhile uses the first's).
TEST(PreparationCacheTest, EntriesLiveWhileHeldOrKeptAndTheFirstPublisherWins) {
  PreparationCache none(0);
  EXPECT_EQ(none.Find("a"), nullptr);
  {
    std::shared_ptr<const Preparation> held = none.Publish("a", Make(1));
    EXPECT_EQ(none.Find("a"), held);  // a job holds it
    EXPECT_EQ(none.Publish("a", Make(2)), held);
    EXPECT_EQ(none.Find("a")->dense_search.loss, 1.0);
  }
  EXPECT_EQ(none.Find("a"), nullptr);  // nobody holds it, none kept
  EXPECT_EQ(none.counts().hits, 2);
  EXPECT_EQ(none.counts().misses, 2);

  PreparationCache one(1);
  one.Publish("a", Make(1));  // kept although nobody holds it
  ASSERT_NE(one.Find("a"), nullptr);
  one.Publish("b", Make(2));  // the kept one is now b
  EXPECT_EQ(one.Find("a"), nullptr);
  EXPECT_EQ(one.Find("b")->dense_search.loss, 2.0);
  std::shared_ptr<const Preparation> held = one.Find("b");
  one.Publish("c", Make(3));       // b leaves the kept list but a job holds it
  EXPECT_EQ(one.Find("b"), held);  // ... which makes it the kept one again
  EXPECT_EQ(one.Find("c"), nullptr);
}

}  // namespace
}  // namespace prunesvc::prune
