// LLaVA-1.5 tokenizer: a sentencepiece `tokenizer.model` plus the added tokens llava-hf keeps
// outside sentencepiece (`<image>` 32000, `<pad>` 32001), and the prompt templates of
// docs/llava.md. Encoding reproduces HF's slow LlamaTokenizer with legacy=True, which is also what
// llava-hf's fast tokenizer (tokenizer.json) does:
//   - the text is split on added/special token strings (leftmost, longest match), as HF's
//     PreTrainedTokenizer.tokenize does with its trie;
//   - each non-empty text segment is encoded by sentencepiece on its own, so every segment gets
//     sentencepiece's dummy prefix "▁" — also a segment right after `<image>` ("\nWhat" →
//     29871 13 5618 with LLaVA's model); empty segments (text starting/ending with `<image>`,
//     `<image><image>`) add nothing;
//   - whitespace next to an added token is stripped only when that token's tokenizer_config.json
//     entry says lstrip/rstrip (llava-hf: false);
//   - BOS first when add_bos_token (default true), EOS last when add_eos_token (default false).
// tokenizer_config.json's `legacy` flag is ignored: llava-hf runs the fast tokenizer, whose
// tokenizer.json applies the per-segment dummy prefix above (docs/llava.md's test vector).
// Torch-free. Thread-safety: immutable after Load; all methods are const and thread-safe.
#ifndef PRUNESVC_WORKER_MODEL_TOKENIZER_H_
#define PRUNESVC_WORKER_MODEL_TOKENIZER_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace prunesvc::model {

class SentencePieceModel;

// A token the HF tokenizer matches as a whole before sentencepiece sees the text.
struct AddedToken {
  std::string content;
  int id = -1;
  bool lstrip = false;  // strip whitespace to the token's left
  bool rstrip = false;  // strip whitespace to the token's right
};

// Prompt + answer tokenized as one text; the answer's tokens are ids[answer_begin, answer_end).
// Invariant: 0 < answer_begin < answer_end == ids.size().
struct EncodedSample {
  std::vector<int> ids;
  int answer_begin = 0;
  int answer_end = 0;
};

enum class PaddingSide { kLeft, kRight };

class Tokenizer {
 public:
  // Reads MODEL_DIR/tokenizer.model (required) and MODEL_DIR/added_tokens.json and/or
  // MODEL_DIR/tokenizer_config.json (`added_tokens_decoder`, `bos_token`, `eos_token`,
  // `unk_token`, `pad_token`, `add_bos_token`, `add_eos_token`, `padding_side`).
  // Errors name the file: missing/corrupt model, malformed JSON, an added id that collides with a
  // different sentencepiece piece, added ids above the sentencepiece range that are not
  // consecutive, one content with two ids, special tokens not in the vocabulary, no `<image>`.
  // pad: `pad_token` when given (null → none), else the added token "<pad>" if present.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir);
  ~Tokenizer();

  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  int unk_id() const { return unk_id_; }
  std::optional<int> pad_id() const { return pad_id_; }
  int image_token_id() const { return image_token_id_; }
  // sentencepiece pieces + added tokens beyond them (LLaVA-1.5: 32002). The model's embedding
  // (text_config.vocab_size) may be larger.
  int vocab_size() const { return vocab_size_; }
  int sentencepiece_size() const { return sp_size_; }
  bool add_bos_token() const { return add_bos_; }
  bool add_eos_token() const { return add_eos_; }
  PaddingSide padding_side() const { return padding_side_; }
  const std::vector<AddedToken>& added_tokens() const { return added_; }

  absl::StatusOr<std::string> IdToPiece(int id) const;
  // Detokenizes generated ids, skipping BOS/EOS/pad/image and other control tokens.
  // Out-of-range ids → InvalidArgument.
  absl::StatusOr<std::string> Decode(absl::Span<const int> ids) const;

  // Tokenizes `text` as llava-hf does (see the file comment), BOS/EOS per the config.
  absl::StatusOr<std::vector<int>> EncodePrompt(std::string_view text) const;

  // Tokenizes prompt + answer_text as ONE text (BOS per config, never EOS) and locates the
  // answer: the ids of `prompt` alone must be a prefix of the ids of the whole text. When
  // sentencepiece merges across the boundary (e.g. a prompt ending in a letter and an answer
  // starting with one), this returns InvalidArgument naming `label` (e.g. the sample id) rather
  // than guessing — the templates end in "ASSISTANT:" and answers start with " ", so this does
  // not happen with them. Also an error: an empty answer, or answer tokens that are `<image>` or
  // pad.
  absl::StatusOr<EncodedSample> EncodeForScoring(std::string_view prompt,
                                                 std::string_view answer_text,
                                                 std::string_view label = {}) const;

  // The token id of the answer " A", " B", … (the first `count` letters, count ≤ 26) as it
  // follows the multiple-choice template's "ASSISTANT:". Multiple-choice scoring reads one
  // logit per letter, so each must be a single token; otherwise InvalidArgument listing the
  // letters that are not.
  absl::StatusOr<std::vector<int>> LetterTokenIds(int count = 26) const;

 private:
  Tokenizer() = default;
  absl::StatusOr<std::vector<int>> Encode(std::string_view text, bool add_eos) const;

  std::unique_ptr<SentencePieceModel> sp_;
  std::vector<AddedToken> added_;      // from the files, sorted by id
  std::vector<AddedToken> splitters_;  // added_ ∪ special-token strings, matched in text
  int sp_size_ = 0;
  int vocab_size_ = 0;
  int bos_id_ = -1;
  int eos_id_ = -1;
  int unk_id_ = 0;
  std::optional<int> pad_id_;
  int image_token_id_ = -1;
  bool add_bos_ = true;
  bool add_eos_ = false;
  PaddingSide padding_side_ = PaddingSide::kLeft;
};

// Letter of option `index` ('A' + index); '?' outside 0..25 (callers validate ≤ 26 options).
char OptionLetter(int index);

// docs/llava.md templates (llava-hf model-card format, no system prompt).
// "USER: <image>\n{question}\nA. {o0}\nB. {o1}…\nAnswer with the option's letter from the given
// choices directly. ASSISTANT:"
std::string MultipleChoicePrompt(std::string_view question,
                                 const std::vector<std::string>& options);
// "USER: <image>\n{question}\nAnswer the question using a single word or phrase. ASSISTANT:"
std::string OpenAnswerPrompt(std::string_view question);
// The text scored after either prompt: " " + answer (a letter for multiple choice).
std::string AnswerText(std::string_view answer);

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_TOKENIZER_H_
