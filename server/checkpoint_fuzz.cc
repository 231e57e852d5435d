// libFuzzer target for the search checkpoint reader (server/search_checkpoint.h
// ParseSearchCheckpoint, with SearchState::FromJson of common/evolution.h): what the scheduler
// reads back from its job store to resume a search. Build with -DPRUNESVC_FUZZ=ON and clang;
// seeds (real checkpoints written by SearchCheckpointToJson, and variants) in
// server/testdata/checkpoint_corpus.
//
// Input: the checkpoint as JobStore::Checkpoint holds it: its head (JSON) up to the first NUL
// byte, then its log records separated by NULs (no NUL: a head alone, the whole-text form). Any
// input must give a checkpoint or DATA_LOSS, never a crash or an exception (ASan/UBSan). An
// accepted checkpoint must survive two round trips to the same text (a violation aborts, i.e. is
// a finding): SearchCheckpointToJson of it parses again, and so does the head and log that a fresh
// CheckpointLog writes for it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

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
  const std::string input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> parts;
  for (size_t begin = 0;;) {
    const size_t nul = input.find('\0', begin);
    parts.push_back(input.substr(begin, nul == std::string::npos ? nul : nul - begin));
    if (nul == std::string::npos) break;
    begin = nul + 1;
  }
  const std::string head = parts.front();
  parts.erase(parts.begin());
  auto checkpoint = prunesvc::server::ParseSearchCheckpoint(head, parts);
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
  const prunesvc::server::CheckpointDelta delta = prunesvc::server::CheckpointLog().Delta(
      checkpoint->state, checkpoint->projector_blobs, checkpoint->evaluated,
      checkpoint->evaluations, checkpoint->sample_order);
  auto logged = prunesvc::server::ParseSearchCheckpoint(delta.head, delta.records);
  Check(logged.ok(), "an accepted checkpoint, written as head and log, does not parse");
  Check(prunesvc::server::SearchCheckpointToJson(*logged) == written,
        "an accepted checkpoint, written as head and log, reads back differently");
  return 0;
}
