#include "common/status_macros.h"

#include <memory>
#include <string>

#include "gtest/gtest.h"

namespace prunesvc {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(h, Half(h));
  return h;
}

absl::Status CheckEven(int x) {
  RETURN_IF_ERROR(Half(x).status());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<int>> MakeBox(bool ok) {
  if (!ok) return absl::NotFoundError("no box");
  return std::make_unique<int>(7);
}

absl::StatusOr<int> Unbox(bool ok) {
  ASSIGN_OR_RETURN(auto box, MakeBox(ok));  // move-only value
  return *box;
}

TEST(StatusMacrosTest, PropagatesErrorsAndValues) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_EQ(CheckEven(3).message(), "odd");
  EXPECT_EQ(*Unbox(true), 7);
  EXPECT_EQ(Unbox(false).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace prunesvc
