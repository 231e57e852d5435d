// libFuzzer target for the API's JobSpec validation (common/job_spec_proto.h JobSpecFromProto,
// which runs JobSpec::Validate of common/job_spec.h): what SubmitJob does with a client's
// prune.v1.JobSpec. Build with -DPRUNESVC_FUZZ=ON and clang; seeds in
// common/testdata/job_spec_corpus.
//
// Input: the first byte picks the encoding of the rest: even → a serialized prune.v1.JobSpec
// (binary wire format, as gRPC delivers it), odd → the same message in protobuf text format.
// Any input must give a JobSpec or an error, never a crash (ASan/UBSan). A spec that is accepted
// must also hold these (a violation aborts, i.e. is a finding):
//   - JobSpecToProto then JobSpecFromProto gives it back unchanged (what the scheduler stores is
//     what it reads), and a second JobSpecToProto gives the same message;
//   - Validate() accepts it under both field namings (API and prune-local flags);
// and the accessors the scheduler calls next (ToSearchConfig, the report JSON, BuildPolicySpace on
// a small fixed model) run on it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/flops.h"
#include "common/job_spec.h"
#include "common/job_spec_proto.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/message_differencer.h"
#include "prune/v1/job.pb.h"

namespace {

namespace pb = ::prune::v1;

// Text-format syntax errors are expected; they must not flood the fuzzer's output.
class SilentErrors : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int, google::protobuf::io::ColumnNumber, const std::string&) override {}
  void AddWarning(int, google::protobuf::io::ColumnNumber, const std::string&) override {}
};

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "job_spec_fuzz: invariant violated: %s\n", what);
    std::abort();
  }
}

// A 4-layer model small enough that BuildPolicySpace stays fast for any accepted spec.
prunesvc::FlopsModelDims SmallDims() {
  prunesvc::FlopsModelDims d;
  d.vision = {.width = 16, .mlp_width = 32, .layers_run = 1, .tokens = 5, .patch_size = 4};
  d.image_tokens = 4;
  d.projector_in = 16;
  d.projector_hidden = 32;
  d.projector_out = 32;
  for (int i = 0; i < 4; ++i) d.decoder.push_back({32, 32, 16, 64});
  d.vocab = 50;
  return d;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Proto3 string fields with invalid UTF-8 log an error per parse; silence protobuf's log.
  static auto* silencer = new google::protobuf::LogSilencer;
  (void)silencer;
  if (size < 1) return 0;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  pb::JobSpec proto;
  if (data[0] & 1) {
    google::protobuf::TextFormat::Parser parser;
    SilentErrors errors;
    parser.RecordErrorsTo(&errors);
    if (!parser.ParseFromString(rest, &proto)) return 0;
  } else if (!proto.ParseFromString(rest)) {
    return 0;
  }

  // The reference helpers on whatever strings arrived.
  (void)prunesvc::IsContentId(proto.dataset_id());
  (void)prunesvc::FileUriPath(proto.model_uri(), "model_uri");

  absl::StatusOr<prunesvc::JobSpec> spec = prunesvc::JobSpecFromProto(proto);
  if (!spec.ok()) return 0;

  const pb::JobSpec stored = prunesvc::JobSpecToProto(*spec);
  absl::StatusOr<prunesvc::JobSpec> back = prunesvc::JobSpecFromProto(stored);
  Check(back.ok(), "JobSpecFromProto(JobSpecToProto(spec)) fails");
  Check(*back == *spec, "JobSpecFromProto(JobSpecToProto(spec)) != spec");
  Check(google::protobuf::util::MessageDifferencer::Equals(prunesvc::JobSpecToProto(*back), stored),
        "JobSpecToProto is not stable over a round trip");
  Check(spec->Validate(prunesvc::FieldNaming::kProto).ok(), "accepted spec fails Validate()");
  Check(spec->Validate(prunesvc::FieldNaming::kFlag).ok(),
        "accepted spec fails Validate(FieldNaming::kFlag)");

  (void)spec->searching();
  (void)spec->EffectiveRatioChoices();
  (void)spec->EffectiveFinalMaskMethod();
  (void)spec->ToSearchConfig(16);
  (void)prunesvc::EtaReportJson(*spec, spec->eta.value_or(0.0)).dump();
  (void)prunesvc::SearchOptionsJson(*spec, {}).dump();
  const prunesvc::TokenStats stats{
      .mean_tokens = 20, .mean_tokens_sq = 420, .mean_answer_tokens = 1};
  (void)prunesvc::BuildPolicySpace(*spec, SmallDims(), stats,
                                   std::vector<prunesvc::DecoderLayerHeads>(4, {4, 2, 8}));
  return 0;
}
