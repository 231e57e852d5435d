// libFuzzer target for the search checkpoint reader (server/search_checkpoint.h
// ParseSearchCheckpoint, with SearchState::FromJson of common/evolution.h): what the scheduler
// reads back from its job store to resume a search. Build with -DPRUNESVC_FUZZ=ON and clang;
// seeds (real checkpoints written by SearchCheckpointToJson, and variants) in
// server/testdata/checkpoint_corpus.
//
// Input: the checkpoint's text (JSON), as JobStore::Checkpoint holds it. Any input must give a
// checkpoint or DATA_LOSS, never a crash or an exception (ASan/UBSan). An accepted checkpoint must
// survive a round trip: SearchCheckpointToJson of it parses again, to the same text (a violation
// aborts, i.e. is a finding).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "server/search_checkpoint.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "checkpoint_fuzz: invariant violated: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto checkpoint = prunesvc::server::ParseSearchCheckpoint(text);
  if (!checkpoint.ok()) {
    Check(absl::IsDataLoss(checkpoint.status()), "a rejected checkpoint is not DATA_LOSS");
    return 0;
  }
  const std::string written = prunesvc::server::SearchCheckpointToJson(*checkpoint);
  auto back = prunesvc::server::ParseSearchCheckpoint(written);
  if (!back.ok()) {
    std::fprintf(stderr, "checkpoint_fuzz: %s\n", back.status().ToString().c_str());
  }
  Check(back.ok(), "an accepted checkpoint, written again, does not parse");
  Check(prunesvc::server::SearchCheckpointToJson(*back) == written,
        "an accepted checkpoint, written again, reads back differently");
  return 0;
}
