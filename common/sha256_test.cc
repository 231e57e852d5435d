#include "common/sha256.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace prunesvc {
namespace {

// NIST FIPS 180-4 example vectors (csrc.nist.gov "SHA256.pdf", "SHA2_Additional.pdf").
TEST(Sha256Test, NistVectors) {
  EXPECT_EQ(Sha256Hex(std::string_view("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(std::string_view("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex(std::string_view("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, SpanOverloadMatchesStringOverload) {
  const std::vector<uint8_t> bytes = {'a', 'b', 'c'};
  EXPECT_EQ(Sha256Hex(absl::MakeConstSpan(bytes)), Sha256Hex(std::string_view("abc")));
}

// Incremental updates in every split of a message spanning several blocks give the one-shot
// digest (exercises the partial-buffer paths and the 55/56/64-byte padding boundaries).
TEST(Sha256Test, IncrementalMatchesOneShot) {
  for (size_t len : {0, 1, 55, 56, 63, 64, 65, 119, 120, 200}) {
    std::string msg;
    for (size_t i = 0; i < len; ++i) msg.push_back(static_cast<char>((i * 131 + 7) & 0xff));
    const std::string expected = Sha256Hex(std::string_view(msg));
    for (size_t split = 0; split <= len; split += 13) {
      Sha256 h;
      h.Update(std::string_view(msg).substr(0, split));
      h.Update(std::string_view(msg).substr(split));
      EXPECT_EQ(DigestHex(h.Final()), expected) << "len=" << len << " split=" << split;
    }
  }
}

// A copy of a hasher that has seen a prefix continues from it on its own: each copy finishing a
// different suffix gives the one-shot digest of prefix + suffix, and the original is untouched
// (the evaluation cache's keys hash their shared prefix once this way).
TEST(Sha256Test, CopiedPrefixStateMatchesOneShot) {
  const std::string prefix(150, 'p');  // more than two blocks, a partial one buffered
  Sha256 after_prefix;
  after_prefix.Update(std::string_view(prefix));
  for (const std::string suffix : {std::string(""), std::string("x"), std::string(200, 's')}) {
    Sha256 h = after_prefix;
    h.Update(std::string_view(suffix));
    EXPECT_EQ(DigestHex(h.Final()), Sha256Hex(std::string_view(prefix + suffix))) << suffix.size();
  }
  EXPECT_EQ(DigestHex(after_prefix.Final()), Sha256Hex(std::string_view(prefix)));
}

TEST(Sha256Test, FinalResetsForReuse) {
  Sha256 h;
  h.Update(std::string_view("garbage"));
  (void)h.Final();
  h.Update(std::string_view("abc"));
  EXPECT_EQ(DigestHex(h.Final()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

}  // namespace
}  // namespace prunesvc
