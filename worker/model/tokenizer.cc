#include "worker/model/tokenizer.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/model/sentencepiece_model.h"

namespace prunesvc::model {
namespace {

using json = nlohmann::json;

// tokenizer.model for LLaMA is ~0.5 MB and the JSON files are KBs; the caps only stop a wrong
// path (e.g. a weight shard) from being slurped.
constexpr uintmax_t kMaxModelBytes = 64ull << 20;
constexpr uintmax_t kMaxJsonBytes = 16ull << 20;

// Reads a whole file. NotFound when it does not exist (callers decide whether that is fatal).
absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path, uintmax_t max_bytes) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) {
    return absl::NotFoundError(absl::StrCat(path.string(), ": no such file"));
  }
  if (!std::filesystem::is_regular_file(status)) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not a regular file"));
  }
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) return absl::InternalError(absl::StrCat(path.string(), ": ", ec.message()));
  if (size > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), ": ", size, " bytes is more than the limit ", max_bytes));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InternalError(
        absl::StrCat(path.string(), ": cannot open: ", std::strerror(errno)));
  }
  std::string data(static_cast<size_t>(size), '\0');
  in.read(data.data(), static_cast<std::streamsize>(size));
  if (static_cast<uintmax_t>(in.gcount()) != size) {
    return absl::InternalError(absl::StrCat(path.string(), ": short read"));
  }
  return data;
}

absl::StatusOr<std::optional<json>> ReadOptionalJson(const std::filesystem::path& path) {
  auto data = ReadFile(path, kMaxJsonBytes);
  if (absl::IsNotFound(data.status())) return std::optional<json>();
  if (!data.ok()) return data.status();
  try {
    json j = json::parse(*data);
    if (!j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not a JSON object"));
    }
    return std::optional<json>(std::move(j));
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": malformed JSON: ", e.what()));
  }
}

absl::StatusOr<bool> OptionalBool(const json& config, const std::string& file, const char* key,
                                  bool default_value) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return default_value;
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": field \"", key, "\" is not a boolean"));
  }
  return it->get<bool>();
}

// A special-token entry: absent → nullopt-of-nullopt ("use the default"); null → explicitly
// none; a string or {"content": string}.
struct SpecialTokenField {
  bool present = false;
  std::optional<std::string> content;
};

absl::StatusOr<SpecialTokenField> SpecialToken(const json& config, const std::string& file,
                                               const char* key) {
  SpecialTokenField out;
  auto it = config.find(key);
  if (it == config.end()) return out;
  out.present = true;
  if (it->is_null()) return out;
  if (it->is_string()) {
    out.content = it->get<std::string>();
  } else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    out.content = (*it)["content"].get<std::string>();
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": field \"", key, "\" is neither a string nor an object with a string \"content\""));
  }
  if (out.content->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": field \"", key, "\" is empty"));
  }
  return out;
}

// Debian's abseil has its own absl::string_view class (not std's), which StrCat takes.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

}  // namespace

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir) {
  const std::filesystem::path dir(model_dir);
  const std::filesystem::path model_path = dir / "tokenizer.model";
  ASSIGN_OR_RETURN(std::string model_bytes, ReadFile(model_path, kMaxModelBytes));
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  std::string sp_error;
  tok->sp_ = SentencePieceModel::FromSerialized(model_bytes, &sp_error);
  if (tok->sp_ == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_path.string(), ": not a valid sentencepiece model: ", sp_error));
  }
  const SentencePieceModel& sp = *tok->sp_;
  tok->sp_size_ = sp.size();
  tok->unk_id_ = sp.unk_id();

  // Added tokens; tokenizer_config.json's added_tokens_decoder first (it carries lstrip/rstrip),
  // then added_tokens.json. Both may list the same token; they must agree.
  const std::string config_file = (dir / "tokenizer_config.json").string();
  const std::string added_file = (dir / "added_tokens.json").string();
  ASSIGN_OR_RETURN(std::optional<json> config, ReadOptionalJson(config_file));
  ASSIGN_OR_RETURN(std::optional<json> added_json, ReadOptionalJson(added_file));

  std::map<int, AddedToken> by_id;
  std::map<std::string, int> by_content;
  auto add = [&](const std::string& file, AddedToken t) -> absl::Status {
    if (t.content.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": added token ", t.id, " is empty"));
    }
    if (t.id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": added token \"", t.content, "\" has negative id ", t.id));
    }
    if (t.id < tok->sp_size_) {
      const std::string piece = sp.IdToPiece(t.id);
      if (piece != t.content) {
        return absl::InvalidArgumentError(absl::StrCat(
            file, ": added token \"", t.content, "\" has id ", t.id,
            " which tokenizer.model already uses for the different piece \"", piece, "\""));
      }
    }
    if (auto it = by_content.find(t.content); it != by_content.end() && it->second != t.id) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": added token \"", t.content, "\" has id ", t.id, " but also id ", it->second));
    }
    if (auto it = by_id.find(t.id); it != by_id.end()) {
      if (it->second.content != t.content) {
        return absl::InvalidArgumentError(absl::StrCat(
            file, ": id ", t.id, " is both \"", it->second.content, "\" and \"", t.content, "\""));
      }
      return absl::OkStatus();  // same token listed twice: keep the first (it has the flags)
    }
    by_content[t.content] = t.id;
    by_id[t.id] = std::move(t);
    return absl::OkStatus();
  };

  if (config) {
    // `legacy` is deliberately ignored: llava-hf's processors use the fast tokenizer, whose
    // tokenizer.json prepends "▁" to every text segment — the rule docs/llava.md's test vector
    // shows (`<image>` then 29871 13) — whatever the slow tokenizer's `legacy` flag says.
    if (auto it = config->find("added_tokens_decoder"); it != config->end() && !it->is_null()) {
      if (!it->is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(config_file, ": field \"added_tokens_decoder\" is not an object"));
      }
      for (const auto& [key, value] : it->items()) {
        AddedToken t;
        size_t used = 0;
        try {
          t.id = std::stoi(key, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used == 0 || used != key.size()) {
          return absl::InvalidArgumentError(absl::StrCat(
              config_file, ": added_tokens_decoder key \"", key, "\" is not an integer id"));
        }
        if (!value.is_object() || !value.contains("content") || !value["content"].is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(config_file, ": added_tokens_decoder[\"", key,
                           "\"] is not an object with a string \"content\""));
        }
        t.content = value["content"].get<std::string>();
        for (const char* flag : {"lstrip", "rstrip"}) {
          auto f = value.find(flag);
          if (f == value.end() || f->is_null()) continue;
          if (!f->is_boolean()) {
            return absl::InvalidArgumentError(absl::StrCat(config_file, ": added_tokens_decoder[\"",
                                                           key, "\"].", flag, " is not a boolean"));
          }
          (std::strcmp(flag, "lstrip") == 0 ? t.lstrip : t.rstrip) = f->get<bool>();
        }
        RETURN_IF_ERROR(add(config_file, std::move(t)));
      }
    }
  }
  if (added_json) {
    for (const auto& [content, value] : added_json->items()) {
      if (!value.is_number_integer()) {
        return absl::InvalidArgumentError(
            absl::StrCat(added_file, ": the id of \"", content, "\" is not an integer"));
      }
      const int64_t id = value.get<int64_t>();
      if (id < 0 || id > (1 << 30)) {
        return absl::InvalidArgumentError(
            absl::StrCat(added_file, ": the id of \"", content, "\" is out of range: ", id));
      }
      RETURN_IF_ERROR(add(added_file, AddedToken{content, static_cast<int>(id)}));
    }
  }
  // Ids past the sentencepiece range extend the vocabulary and must be consecutive (as HF
  // requires), so vocab_size() covers exactly the ids that exist.
  int next = tok->sp_size_;
  for (const auto& [id, t] : by_id) {
    if (id < tok->sp_size_) continue;
    if (id != next) {
      return absl::InvalidArgumentError(absl::StrCat(
          "added tokens of ", model_dir, " are not consecutive after the ", tok->sp_size_,
          " sentencepiece pieces: \"", t.content, "\" has id ", id, ", expected ", next));
    }
    ++next;
  }
  tok->vocab_size_ = next;
  for (auto& [id, t] : by_id) tok->added_.push_back(t);

  // Special tokens.
  const json empty = json::object();
  const json& cfg = config ? *config : empty;
  auto resolve = [&](const char* key, const SpecialTokenField& field, int default_id,
                     std::optional<int>* out) -> absl::Status {
    if (!field.present) {
      if (default_id >= 0) *out = default_id;
      return absl::OkStatus();
    }
    if (!field.content) return absl::OkStatus();  // explicitly null
    const std::string& content = *field.content;
    if (auto it = by_content.find(content); it != by_content.end()) {
      *out = it->second;
      return absl::OkStatus();
    }
    const int id = sp.PieceToId(content);
    if (id < 0 || id >= tok->sp_size_ || (sp.IsUnknown(id) && sp.IdToPiece(id) != content)) {
      return absl::InvalidArgumentError(
          absl::StrCat(config_file, ": ", key, " \"", content, "\" is not in the vocabulary"));
    }
    *out = id;
    return absl::OkStatus();
  };
  std::optional<int> bos, eos, unk, pad;
  ASSIGN_OR_RETURN(auto bos_field, SpecialToken(cfg, config_file, "bos_token"));
  ASSIGN_OR_RETURN(auto eos_field, SpecialToken(cfg, config_file, "eos_token"));
  ASSIGN_OR_RETURN(auto unk_field, SpecialToken(cfg, config_file, "unk_token"));
  ASSIGN_OR_RETURN(auto pad_field, SpecialToken(cfg, config_file, "pad_token"));
  RETURN_IF_ERROR(resolve("bos_token", bos_field, sp.bos_id(), &bos));
  RETURN_IF_ERROR(resolve("eos_token", eos_field, sp.eos_id(), &eos));
  RETURN_IF_ERROR(resolve("unk_token", unk_field, sp.unk_id(), &unk));
  const auto pad_added = by_content.find("<pad>");
  RETURN_IF_ERROR(resolve("pad_token", pad_field,
                          pad_added != by_content.end() ? pad_added->second : -1, &pad));
  ASSIGN_OR_RETURN(tok->add_bos_, OptionalBool(cfg, config_file, "add_bos_token", true));
  ASSIGN_OR_RETURN(tok->add_eos_, OptionalBool(cfg, config_file, "add_eos_token", false));
  if (tok->add_bos_ && !bos) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir, ": add_bos_token is set but there is no BOS token"));
  }
  if (!eos) {
    return absl::InvalidArgumentError(absl::StrCat(model_dir, ": there is no EOS token"));
  }
  tok->bos_id_ = bos.value_or(-1);
  tok->eos_id_ = *eos;
  tok->unk_id_ = unk.value_or(sp.unk_id());
  tok->pad_id_ = pad;
  if (auto it = cfg.find("padding_side"); it != cfg.end() && !it->is_null()) {
    if (*it == "left") {
      tok->padding_side_ = PaddingSide::kLeft;
    } else if (*it == "right") {
      tok->padding_side_ = PaddingSide::kRight;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(config_file, ": field \"padding_side\" must be \"left\" or \"right\""));
    }
  }
  const auto image = by_content.find("<image>");
  if (image == by_content.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        model_dir, ": no \"<image>\" added token in added_tokens.json or tokenizer_config.json"));
  }
  tok->image_token_id_ = image->second;

  // Strings matched in the text before sentencepiece: every added token plus the special-token
  // strings (HF registers those as added tokens too, so a literal "<s>" in a question becomes
  // BOS there as well).
  tok->splitters_ = tok->added_;
  for (const auto& [field, id] : {std::pair{&bos_field, bos}, std::pair{&eos_field, eos},
                                  std::pair{&unk_field, unk}, std::pair{&pad_field, pad}}) {
    if (!id) continue;
    const std::string content =
        field->content ? *field->content : (*id < tok->sp_size_ ? sp.IdToPiece(*id) : "");
    if (content.empty() || by_content.count(content)) continue;
    tok->splitters_.push_back(AddedToken{content, *id});
    by_content[content] = *id;
  }
  return tok;
}

absl::StatusOr<std::string> Tokenizer::IdToPiece(int id) const {
  if (id >= 0 && id < sp_size_) return sp_->IdToPiece(id);
  for (const auto& t : added_) {
    if (t.id == id) return t.content;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab_size_, ")"));
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int> ids) const {
  std::string out;
  std::vector<int> run;  // consecutive sentencepiece ids, decoded together
  auto flush = [&]() -> absl::Status {
    if (run.empty()) return absl::OkStatus();
    std::string text, error;
    if (!sp_->Decode(run, &text, &error)) {
      return absl::InternalError(absl::StrCat("sentencepiece decode failed: ", error));
    }
    out += text;
    run.clear();
    return absl::OkStatus();
  };
  for (int id : ids) {
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab_size_, ")"));
    }
    if (id == bos_id_ || id == eos_id_ || id == image_token_id_ || (pad_id_ && id == *pad_id_)) {
      continue;
    }
    if (id < sp_size_) {
      if (!sp_->IsControl(id)) run.push_back(id);
      continue;
    }
    RETURN_IF_ERROR(flush());
    ASSIGN_OR_RETURN(std::string piece, IdToPiece(id));
    out += piece;
  }
  RETURN_IF_ERROR(flush());
  return out;
}

absl::StatusOr<std::vector<int>> Tokenizer::Encode(std::string_view text, bool add_eos) const {
  // Split into (text, added token) parts: at each position the longest added token that matches
  // there; text between matches is a segment.
  struct Part {
    std::string_view text;
    const AddedToken* token = nullptr;
  };
  std::vector<Part> parts;
  size_t seg_start = 0;
  for (size_t i = 0; i < text.size();) {
    const AddedToken* best = nullptr;
    for (const auto& t : splitters_) {
      if (text.compare(i, t.content.size(), t.content) == 0 &&
          (best == nullptr || t.content.size() > best->content.size())) {
        best = &t;
      }
    }
    if (best == nullptr) {
      ++i;
      continue;
    }
    if (i > seg_start) parts.push_back({text.substr(seg_start, i - seg_start)});
    parts.push_back({{}, best});
    i += best->content.size();
    seg_start = i;
  }
  if (seg_start < text.size()) parts.push_back({text.substr(seg_start)});
  // lstrip/rstrip as HF applies them to the neighbouring segments.
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].token == nullptr) continue;
    if (parts[i].token->rstrip && i + 1 < parts.size() && parts[i + 1].token == nullptr) {
      std::string_view& r = parts[i + 1].text;
      while (!r.empty() && IsSpace(r.front())) r.remove_prefix(1);
    }
    if (parts[i].token->lstrip && i > 0 && parts[i - 1].token == nullptr) {
      std::string_view& l = parts[i - 1].text;
      while (!l.empty() && IsSpace(l.back())) l.remove_suffix(1);
    }
  }
  std::vector<int> ids;
  if (add_bos_) ids.push_back(bos_id_);
  for (const Part& p : parts) {
    if (p.token != nullptr) {
      ids.push_back(p.token->id);
      continue;
    }
    if (p.text.empty()) continue;  // HF skips empty segments: no lone dummy prefix
    std::vector<int> seg;
    std::string error;
    if (!sp_->Encode(p.text, &seg, &error)) {
      return absl::InvalidArgumentError(absl::StrCat("sentencepiece encode failed: ", error));
    }
    ids.insert(ids.end(), seg.begin(), seg.end());
  }
  if (add_eos) ids.push_back(eos_id_);
  return ids;
}

absl::StatusOr<std::vector<int>> Tokenizer::EncodePrompt(std::string_view text) const {
  return Encode(text, add_eos_);
}

absl::StatusOr<EncodedSample> Tokenizer::EncodeForScoring(std::string_view prompt,
                                                          std::string_view answer_text,
                                                          std::string_view label) const {
  const std::string who =
      label.empty() ? std::string("answer") : absl::StrCat(Av(label), ": answer");
  if (answer_text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(who, " is empty"));
  }
  ASSIGN_OR_RETURN(std::vector<int> prompt_ids, Encode(prompt, /*add_eos=*/false));
  EncodedSample out;
  ASSIGN_OR_RETURN(out.ids, Encode(absl::StrCat(Av(prompt), Av(answer_text)), /*add_eos=*/false));
  const bool is_prefix = prompt_ids.size() < out.ids.size() &&
                         std::equal(prompt_ids.begin(), prompt_ids.end(), out.ids.begin());
  if (!is_prefix) {
    return absl::InvalidArgumentError(absl::StrCat(
        who, " \"", Av(answer_text),
        "\" does not tokenize separately from the end of the prompt (sentencepiece merges across "
        "the boundary), so its tokens cannot be scored"));
  }
  out.answer_begin = static_cast<int>(prompt_ids.size());
  out.answer_end = static_cast<int>(out.ids.size());
  for (int i = out.answer_begin; i < out.answer_end; ++i) {
    if (out.ids[i] == image_token_id_ || (pad_id_ && out.ids[i] == *pad_id_)) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, " \"", Av(answer_text), "\" contains an <image> or pad token"));
    }
  }
  return out;
}

absl::StatusOr<std::vector<int>> Tokenizer::LetterTokenIds(int count) const {
  if (count < 1 || count > 26) {
    return absl::InvalidArgumentError(absl::StrCat("letter count ", count, " is not in 1..26"));
  }
  // The exact context the letters are scored in: the multiple-choice template's end.
  const std::string prompt = MultipleChoicePrompt("?", {"x", "y"});
  std::vector<int> ids;
  std::vector<std::string> bad;
  for (int i = 0; i < count; ++i) {
    const char letter = OptionLetter(i);
    auto enc = EncodeForScoring(prompt, AnswerText(std::string(1, letter)));
    if (!enc.ok() || enc->answer_end - enc->answer_begin != 1) {
      bad.push_back(std::string(1, letter));
      continue;
    }
    ids.push_back(enc->ids[enc->answer_begin]);
  }
  if (!bad.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.model does not encode \" X\" after \"ASSISTANT:\" as one token "
                     "for X in: ",
                     absl::StrJoin(bad, " "), " (multiple-choice scoring needs one token each)"));
  }
  return ids;
}

char OptionLetter(int index) { return index >= 0 && index < 26 ? char('A' + index) : '?'; }

std::string MultipleChoicePrompt(std::string_view question,
                                 const std::vector<std::string>& options) {
  std::string out = absl::StrCat("USER: <image>\n", Av(question), "\n");
  for (size_t i = 0; i < options.size(); ++i) {
    absl::StrAppend(&out, std::string(1, OptionLetter(static_cast<int>(i))), ". ", options[i],
                    "\n");
  }
  absl::StrAppend(&out, "Answer with the option's letter from the given choices directly. ",
                  "ASSISTANT:");
  return out;
}

std::string OpenAnswerPrompt(std::string_view question) {
  return absl::StrCat("USER: <image>\n", Av(question),
                      "\nAnswer the question using a single word or phrase. ASSISTANT:");
}

std::string AnswerText(std::string_view answer) { return absl::StrCat(" ", Av(answer)); }

}  // namespace prunesvc::model
