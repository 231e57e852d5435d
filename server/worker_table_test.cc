#include "server/worker_table.h"

#include "gtest/gtest.h"

namespace prunesvc::server {
namespace {

prune::v1::WorkerInfo Info(const std::string& address) {
  prune::v1::WorkerInfo info;
  info.set_address(address);
  info.set_device("cpu");
  return info;
}

TEST(WorkerTableTest, RegisterHeartbeatLoseAndForget) {
  FakeClock clock;
  WorkerTableOptions opts;
  opts.lost_after = absl::Seconds(5);
  opts.forget_after = absl::Seconds(60);
  WorkerTable table(opts, &clock);

  auto a = table.Register(Info("127.0.0.1:5001"));
  auto b = table.Register(Info("127.0.0.1:5002"));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  ASSERT_EQ(table.List().size(), 2u);

  clock.Advance(absl::Seconds(4));
  ASSERT_TRUE(table.Heartbeat(*a, prune::v1::WORKER_BUSY, {"m1"}).ok());
  clock.Advance(absl::Seconds(2));  // b silent for 6 s > lost_after
  auto list = table.List();
  EXPECT_EQ(list[0].state(), prune::v1::WORKER_BUSY);
  EXPECT_EQ(list[0].cached_models(0), "m1");
  EXPECT_EQ(list[1].state(), prune::v1::WORKER_LOST);
  EXPECT_EQ(table.CountByState()[prune::v1::WORKER_LOST], 1);

  clock.Advance(absl::Seconds(70));
  EXPECT_TRUE(table.List().empty());
  EXPECT_EQ(table.Heartbeat(*a, prune::v1::WORKER_IDLE, {}).code(), absl::StatusCode::kNotFound);
}

TEST(WorkerTableTest, ReRegistrationFromSameAddressReplaces) {
  FakeClock clock;
  WorkerTable table({}, &clock);
  auto a = table.Register(Info("127.0.0.1:5001"));
  auto a2 = table.Register(Info("127.0.0.1:5001"));
  ASSERT_TRUE(a.ok() && a2.ok());
  EXPECT_NE(*a, *a2);
  EXPECT_EQ(table.List().size(), 1u);

  prune::v1::WorkerInfo keep = Info("127.0.0.1:6000");
  keep.set_worker_id("w-77");
  EXPECT_EQ(*table.Register(keep), "w-77");
}

TEST(WorkerTableTest, RejectsBadRegistrations) {
  FakeClock clock;
  WorkerTable table({}, &clock);
  for (const char* addr : {"", "host", ":80", "h:0", "h:70000", "h:x"}) {
    auto r = table.Register(Info(addr));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << addr;
    EXPECT_NE(r.status().message().find("host:port"), std::string::npos);
  }
  prune::v1::WorkerInfo no_device = Info("h:1");
  no_device.clear_device();
  EXPECT_FALSE(table.Register(no_device).ok());
}

}  // namespace
}  // namespace prunesvc::server
