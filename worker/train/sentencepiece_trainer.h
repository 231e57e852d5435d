// Narrow wrapper around Debian's libsentencepiece_train (0.1.97) C++ trainer API. Like
// worker/model/sentencepiece_model.h, the sentencepiece header is included only in the .cc: it
// declares `namespace absl { using std::string_view; }`, which clashes with Debian abseil's own
// absl::string_view class. This interface therefore uses std types only (no absl::Status).
// Internal to prunesvc_train; use TrainTokenizer (tokenizer_trainer.h) instead.
// Thread-safety: sentencepiece's trainer keeps global state (its pretokenizer hook and logging);
// do not train two models concurrently in one process.
#ifndef PRUNESVC_WORKER_TRAIN_SENTENCEPIECE_TRAINER_H_
#define PRUNESVC_WORKER_TRAIN_SENTENCEPIECE_TRAINER_H_

#include <map>
#include <string>
#include <vector>

namespace prunesvc::train {

// Trains a sentencepiece model on `sentences` with the trainer flags in `flags` (e.g.
// {"vocab_size", "446"}). On success returns true and sets *serialized_model to the ModelProto
// bytes and *num_pieces to its piece count; otherwise returns false and sets *error.
bool TrainSentencePiece(const std::vector<std::string>& sentences,
                        const std::map<std::string, std::string>& flags,
                        std::string* serialized_model, int* num_pieces, std::string* error);

}  // namespace prunesvc::train

#endif  // PRUNESVC_WORKER_TRAIN_SENTENCEPIECE_TRAINER_H_
