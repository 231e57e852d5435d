#include "worker/model/tokenizer.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace prunesvc::model {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Env(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : fallback;
}

// PRUNESVC_SOURCE_DIR (compile definition) backs up the environment variable, which ctest may
// not pass through.
std::string RefScript() {
  return Env("PRUNESVC_SOURCE", PRUNESVC_SOURCE_DIR) +
         std::string("/worker/model/tokenizer_test_ref.py");
}

int RunRef(const std::string& args) {
  const std::string cmd =
      absl::StrCat(Env("PRUNESVC_PYTHON", "/usr/bin/python3"), " ", RefScript(), " ", args);
  return std::system(cmd.c_str());
}

fs::path MakeTempDir(const std::string& tag) {
  std::string templ = (fs::path(::testing::TempDir()) / ("tok_" + tag + "_XXXXXX")).string();
  const char* made = mkdtemp(templ.data());
  EXPECT_NE(made, nullptr);
  return fs::path(templ);
}

void WriteFile(const fs::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// One small sentencepiece model per test binary, trained by the Python reference script with
// LLaMA-like settings (byte fallback, identity normalization, whitespace kept, no "\n" in the
// training text, so "\n" becomes the byte piece <0x0A> as in LLaMA).
class TokenizerTest : public ::testing::Test {
 protected:
  // Training failures are reported by SetUp as test failures (an ASSERT here would only make
  // ctest count the tests as skipped).
  static void SetUpTestSuite() {
    dir_ = new fs::path(MakeTempDir("model"));
    trained_ = RunRef("train " + dir_->string()) == 0;
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*dir_, ec);
    delete dir_;
  }
  void SetUp() override {
    ASSERT_TRUE(trained_) << "tokenizer_test_ref.py train failed (see stderr)";
    auto tok = Tokenizer::Load(dir_->string());
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = std::move(*tok);
  }
  // A copy of the model dir whose files the test may overwrite.
  fs::path CopyModel() {
    fs::path d = MakeTempDir("copy");
    for (const auto& e : fs::directory_iterator(*dir_)) fs::copy(e.path(), d / e.path().filename());
    return d;
  }

  static fs::path* dir_;
  static bool trained_;
  std::unique_ptr<Tokenizer> tok_;
};
fs::path* TokenizerTest::dir_ = nullptr;
bool TokenizerTest::trained_ = false;

TEST_F(TokenizerTest, Accessors) {
  const int n = tok_->sentencepiece_size();
  EXPECT_EQ(n, 600);
  EXPECT_EQ(tok_->vocab_size(), n + 2);
  EXPECT_EQ(tok_->image_token_id(), n);
  EXPECT_EQ(tok_->pad_id(), n + 1);
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_id(), 2);
  EXPECT_EQ(tok_->unk_id(), 0);
  EXPECT_TRUE(tok_->add_bos_token());
  EXPECT_FALSE(tok_->add_eos_token());
  EXPECT_EQ(tok_->padding_side(), PaddingSide::kLeft);
  EXPECT_EQ(*tok_->IdToPiece(n), "<image>");
  EXPECT_EQ(*tok_->IdToPiece(n + 1), "<pad>");
  EXPECT_EQ(*tok_->IdToPiece(13), "<0x0A>");
  EXPECT_FALSE(tok_->IdToPiece(n + 2).ok());
  EXPECT_FALSE(tok_->IdToPiece(-1).ok());
}

// The structure of docs/llava.md's test vector: BOS, "USER: " → ... "▁" (LLaMA 29871), <image>,
// then the next segment gets its own dummy prefix: "▁" then the newline byte <0x0A> (LLaMA 13).
TEST_F(TokenizerTest, DesignVectorStructure) {
  auto ids = tok_->EncodePrompt("USER: <image>\nWhat's the content of the image?\nASSISTANT:");
  ASSERT_TRUE(ids.ok()) << ids.status();
  std::vector<std::string> pieces;
  for (int id : *ids) pieces.push_back(*tok_->IdToPiece(id));
  ASSERT_GE(pieces.size(), 8u);
  EXPECT_EQ((*ids)[0], tok_->bos_id());
  EXPECT_THAT(std::vector<std::string>(pieces.begin() + 1, pieces.begin() + 7),
              ElementsAre("▁USER", ":", "▁", "<image>", "▁", "<0x0A>"));
}

TEST_F(TokenizerTest, EmptySegmentsAddNothing) {
  const int img = tok_->image_token_id();
  const int bos = tok_->bos_id();
  EXPECT_THAT(*tok_->EncodePrompt(""), ElementsAre(bos));
  EXPECT_THAT(*tok_->EncodePrompt("<image>"), ElementsAre(bos, img));
  EXPECT_THAT(*tok_->EncodePrompt("<image><image>"), ElementsAre(bos, img, img));
  // A space-only segment is not empty: it is encoded (dummy prefix + space).
  auto ids = *tok_->EncodePrompt("<image> <image>");
  EXPECT_GT(ids.size(), 3u);
  EXPECT_EQ(ids.front(), bos);
  EXPECT_EQ(ids[1], img);
  EXPECT_EQ(ids.back(), img);
}

std::vector<std::string> ParityPrompts() {
  std::vector<std::string> p = {
      "USER: <image>\nWhat's the content of the image?\nASSISTANT:",
      "",
      "<image>",
      "<image><image>",
      "<image>\n<image>",
      "ends with image <image>",
      "<image>starts with image",
      "no image at all",
      "  leading spaces and trailing   ",
      "\n",
      "\n\n\nmany\n\nnewlines\n",
      "tabs\tand\ttabs",
      "USER: <image>\n\nASSISTANT:",
      "café naïve über — 東京 图片 😀 🙂 ünïcödé",
      "rare chars: ©®™ ∑∫ ßẞ ǅ ﬁ",
      "literal <pad> in text",
      "literal <s> and </s> and <unk>",
      "almost <imag> <image <Image> < image>",
      "<image><pad><image>",
      "x<image>y<image>z",
      "USER: <image>\nHow many shapes?\nAnswer the question using a single word or phrase. "
      "ASSISTANT: three",
      "'quotes' \"double\" `back`",
      "numbers 0123456789 3.14159 -42",
      "▁already▁has▁underscores▁",
      "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
  };
  p.push_back(MultipleChoicePrompt("What colour is the shape?", {"red", "blue", "green"}));
  p.push_back(MultipleChoicePrompt("", {"a", "b"}));
  p.push_back(MultipleChoicePrompt("Which one?\nThink.", {"café", "東京", "😀", "x y z"}));
  p.push_back(MultipleChoicePrompt("Where is it?", {"left", "right", "top", "bottom"}) + " B");
  p.push_back(OpenAnswerPrompt("What colour is the shape?"));
  p.push_back(OpenAnswerPrompt(""));
  p.push_back(OpenAnswerPrompt("What is in the <image>?") + " a red circle");
  std::vector<std::string> letters26;
  for (int i = 0; i < 26; ++i) letters26.push_back(std::string(1, char('a' + i)));
  p.push_back(MultipleChoicePrompt("many options", letters26) + " Z");
  for (const char* q : {"How many circles are there?", "Is the star left of the square?",
                        "What shape is at the top?", "Count the red shapes.", "?", " ",
                        "trailing newline\n", "\ttab first"}) {
    p.push_back(OpenAnswerPrompt(q));
    p.push_back(OpenAnswerPrompt(q) + " yellow triangle");
    p.push_back(MultipleChoicePrompt(q, {"one", "two", "three", "four"}) + " C");
  }
  return p;
}

// C++ EncodePrompt equals the Python reference (HF slow LlamaTokenizer legacy rule) exactly.
TEST_F(TokenizerTest, MatchesPythonReference) {
  const std::vector<std::string> prompts = ParityPrompts();
  ASSERT_GE(prompts.size(), 50u);
  const fs::path work = MakeTempDir("parity");
  WriteFile(work / "in.json", nlohmann::json(prompts).dump());
  ASSERT_EQ(RunRef(absl::StrCat("encode ", dir_->string(), " ", (work / "in.json").string(), " ",
                                (work / "out.json").string())),
            0);
  const auto ref = nlohmann::json::parse(ReadFile(work / "out.json"));
  ASSERT_EQ(ref.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto ids = tok_->EncodePrompt(prompts[i]);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, ref[i].get<std::vector<int>>()) << "prompt " << i << ": " << prompts[i];
  }
  fs::remove_all(work);
}

TEST_F(TokenizerTest, EncodeForScoringLocatesAnswer) {
  const std::string prompt = MultipleChoicePrompt("What colour?", {"red", "blue", "green"});
  auto enc = tok_->EncodeForScoring(prompt, AnswerText("B"), "s1");
  ASSERT_TRUE(enc.ok()) << enc.status();
  EXPECT_EQ(enc->answer_end, static_cast<int>(enc->ids.size()));
  EXPECT_EQ(enc->answer_end - enc->answer_begin, 1);
  EXPECT_EQ(*tok_->IdToPiece(enc->ids[enc->answer_begin]), "▁B");
  auto whole = tok_->EncodePrompt(prompt + " B");
  EXPECT_EQ(enc->ids, *whole);  // one text, no EOS
  auto alone = tok_->EncodePrompt(prompt);
  EXPECT_EQ(static_cast<size_t>(enc->answer_begin), alone->size());

  auto open = tok_->EncodeForScoring(OpenAnswerPrompt("What?"), AnswerText("a red circle"));
  ASSERT_TRUE(open.ok()) << open.status();
  EXPECT_GT(open->answer_end - open->answer_begin, 1);
  auto tail = *tok_->Decode(absl::MakeConstSpan(open->ids).subspan(open->answer_begin));
  EXPECT_EQ(tail, "a red circle");  // sentencepiece drops the leading dummy-prefix space
}

TEST_F(TokenizerTest, EncodeForScoringRejectsMergesAndBadAnswers) {
  // "▁Answer" is one piece of this model, so "...Ans" + "wer" cannot be split at the boundary.
  auto merged = tok_->EncodeForScoring("USER: Ans", "wer", "sample-7");
  ASSERT_FALSE(merged.ok());
  EXPECT_THAT(std::string(merged.status().message()), HasSubstr("sample-7"));
  EXPECT_THAT(std::string(merged.status().message()), HasSubstr("merges"));
  EXPECT_FALSE(tok_->EncodeForScoring("USER:", "", "s").ok());
  auto img = tok_->EncodeForScoring("USER:", " <image>", "s9");
  ASSERT_FALSE(img.ok());
  EXPECT_THAT(std::string(img.status().message()), HasSubstr("s9"));
}

TEST_F(TokenizerTest, LetterTokenIds) {
  auto letters = tok_->LetterTokenIds();
  ASSERT_TRUE(letters.ok()) << letters.status();
  ASSERT_EQ(letters->size(), 26u);
  for (int i = 0; i < 26; ++i) {
    EXPECT_EQ(*tok_->IdToPiece((*letters)[i]), absl::StrCat("▁", std::string(1, 'A' + i)));
  }
  EXPECT_EQ(tok_->LetterTokenIds(4)->size(), 4u);
  EXPECT_FALSE(tok_->LetterTokenIds(0).ok());
  EXPECT_FALSE(tok_->LetterTokenIds(27).ok());
}

TEST_F(TokenizerTest, LetterTokenIdsErrorListsMissingLetters) {
  const fs::path d = MakeTempDir("noletters");
  ASSERT_EQ(RunRef("train " + d.string() + " --no-letters"), 0);
  auto tok = Tokenizer::Load(d.string());
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto letters = (*tok)->LetterTokenIds();
  ASSERT_FALSE(letters.ok());
  EXPECT_THAT(std::string(letters.status().message()), HasSubstr("one token"));
  EXPECT_THAT(std::string(letters.status().message()),
              HasSubstr("Q"));  // no word in that corpus is "Q"
  fs::remove_all(d);
}

TEST_F(TokenizerTest, DecodeSkipsSpecialTokens) {
  auto ids = *tok_->EncodePrompt("<image>hello world<pad>");
  ids.push_back(tok_->eos_id());
  EXPECT_EQ(*tok_->Decode(ids), "hello world");
  auto round = *tok_->EncodePrompt("café 東京\nline two");
  EXPECT_EQ(*tok_->Decode(round), "café 東京\nline two");
  EXPECT_FALSE(tok_->Decode(std::vector<int>{5, tok_->vocab_size()}).ok());
  EXPECT_FALSE(tok_->Decode(std::vector<int>{-3}).ok());
}

TEST_F(TokenizerTest, WorksWithAddedTokensJsonOnly) {
  const fs::path d = CopyModel();
  fs::remove(d / "tokenizer_config.json");
  auto tok = Tokenizer::Load(d.string());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->image_token_id(), tok_->image_token_id());
  EXPECT_EQ((*tok)->pad_id(), tok_->pad_id());
  EXPECT_EQ(*(*tok)->EncodePrompt("USER: <image>\nhi"), *tok_->EncodePrompt("USER: <image>\nhi"));
  fs::remove_all(d);
}

// llava-hf's tokenizer_config.json may say "legacy": false; the per-segment rule still applies.
TEST_F(TokenizerTest, LegacyFlagDoesNotChangeSegmentation) {
  const fs::path d = CopyModel();
  auto cfg = nlohmann::json::parse(ReadFile(d / "tokenizer_config.json"));
  cfg["legacy"] = false;
  WriteFile(d / "tokenizer_config.json", cfg.dump());
  auto tok = Tokenizer::Load(d.string());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string text = "USER: <image>\nWhat's the content of the image?\nASSISTANT:";
  EXPECT_EQ(*(*tok)->EncodePrompt(text), *tok_->EncodePrompt(text));
  fs::remove_all(d);
}

TEST_F(TokenizerTest, ConfigOnlyAndLstripRstrip) {
  const fs::path d = CopyModel();
  fs::remove(d / "added_tokens.json");
  auto cfg = nlohmann::json::parse(ReadFile(d / "tokenizer_config.json"));
  const std::string img = std::to_string(tok_->image_token_id());
  cfg["added_tokens_decoder"][img]["lstrip"] = true;
  cfg["added_tokens_decoder"][img]["rstrip"] = true;
  WriteFile(d / "tokenizer_config.json", cfg.dump());
  auto tok = Tokenizer::Load(d.string());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(*(*tok)->EncodePrompt("USER: <image>\n hi"), *tok_->EncodePrompt("USER:<image>hi"));
  fs::remove_all(d);
}

struct BadCase {
  std::string name;
  std::string file;     // file to overwrite ("" = remove tokenizer.model)
  std::string content;  // new content
  std::string expect;   // substring of the error
};

TEST_F(TokenizerTest, BadInputsGiveClearErrors) {
  const std::string model = ReadFile(*dir_ / "tokenizer.model");
  const int n = tok_->sentencepiece_size();
  const std::vector<BadCase> cases = {
      {"missing model", "tokenizer.model", "<remove>", "tokenizer.model: no such file"},
      {"empty model", "tokenizer.model", "", "tokenizer.model"},
      {"garbage model", "tokenizer.model", std::string(1000, '\x07'), "tokenizer.model"},
      {"truncated model", "tokenizer.model", model.substr(0, model.size() / 2), "tokenizer.model"},
      {"added not json", "added_tokens.json", "{\"<image>\": ", "added_tokens.json: malformed"},
      {"added not object", "added_tokens.json", "[1,2]", "added_tokens.json: not a JSON object"},
      {"added id not int", "added_tokens.json", "{\"<image>\": \"x\"}", "not an integer"},
      {"added collides", "added_tokens.json", "{\"<image>\": 5}", "different piece"},
      {"added gap", "added_tokens.json",
       absl::StrCat("{\"<image>\": ", n, ", \"<pad>\": ", n + 1, ", \"<x>\": ", n + 5, "}"),
       "not consecutive"},
      {"added conflicts with config", "added_tokens.json",
       absl::StrCat("{\"<image>\": ", n + 1, ", \"<pad>\": ", n, "}"), "added_tokens.json"},
      {"config not json", "tokenizer_config.json", "{,}", "tokenizer_config.json: malformed"},
      {"config bad key", "tokenizer_config.json",
       "{\"added_tokens_decoder\": {\"x1\": {\"content\": \"<image>\"}}}", "not an integer id"},
      {"config bad entry", "tokenizer_config.json",
       "{\"added_tokens_decoder\": {\"7\": \"<image>\"}}", "string \"content\""},
      {"config bad bos", "tokenizer_config.json", "{\"bos_token\": \"<nope>\"}",
       "bos_token \"<nope>\" is not in the vocabulary"},
      {"config bos wrong type", "tokenizer_config.json", "{\"bos_token\": 3}", "bos_token"},
      {"config add_bos not bool", "tokenizer_config.json", "{\"add_bos_token\": \"yes\"}",
       "add_bos_token"},
      {"config padding side", "tokenizer_config.json", "{\"padding_side\": \"middle\"}",
       "padding_side"},
  };
  for (const auto& c : cases) {
    const fs::path d = CopyModel();
    if (c.content == "<remove>") {
      fs::remove(d / c.file);
    } else {
      WriteFile(d / c.file, c.content);
    }
    auto tok = Tokenizer::Load(d.string());
    EXPECT_FALSE(tok.ok()) << c.name;
    if (!tok.ok()) EXPECT_THAT(std::string(tok.status().message()), HasSubstr(c.expect)) << c.name;
    fs::remove_all(d);
  }
  // No <image> anywhere.
  const fs::path d = CopyModel();
  fs::remove(d / "tokenizer_config.json");
  WriteFile(d / "added_tokens.json", absl::StrCat("{\"<pad>\": ", n, "}"));
  auto tok = Tokenizer::Load(d.string());
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("<image>"));
  fs::remove_all(d);
  EXPECT_FALSE(Tokenizer::Load("/nonexistent/dir").ok());
}

TEST(PromptTemplateTest, Formats) {
  EXPECT_EQ(MultipleChoicePrompt("What colour?", {"red", "blue"}),
            "USER: <image>\nWhat colour?\nA. red\nB. blue\nAnswer with the option's letter "
            "from the given choices directly. ASSISTANT:");
  EXPECT_EQ(OpenAnswerPrompt("How many?"),
            "USER: <image>\nHow many?\nAnswer the question using a single word or phrase. "
            "ASSISTANT:");
  EXPECT_EQ(AnswerText("B"), " B");
  EXPECT_EQ(OptionLetter(0), 'A');
  EXPECT_EQ(OptionLetter(25), 'Z');
  EXPECT_EQ(OptionLetter(26), '?');
}

}  // namespace
}  // namespace prunesvc::model

namespace prunesvc::model {
namespace {

std::string RepoDir() { return Env("PRUNESVC_SOURCE", PRUNESVC_SOURCE_DIR); }

// Issue 18: HF transformers' slow LlamaTokenizer (what LlavaProcessor uses for a model without a
// tokenizer.json, like models/tiny-llava-shapes) must tokenize as llava-eval does. The ids in
// testdata/hf_tokenizer_ids.json were produced with transformers 4.45.1 (not installable here):
// `legacy_true` with LlamaTokenizer(legacy=True), `as_configured` with the "legacy": false the
// model shipped until issue 18. llava-eval's ids must equal `legacy_true`, the committed
// tokenizer_config.json must say "legacy": true, and the two HF settings must really differ (so
// the flag matters and the fixture is what it claims).
TEST(HfTokenizerIdsTest, TheCommittedModelTokenizesAsHfLegacyTrue) {
  const std::string model = RepoDir() + "/models/tiny-llava-shapes";
  auto tok = Tokenizer::Load(model);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const nlohmann::json fixture =
      nlohmann::json::parse(ReadFile(RepoDir() + "/worker/model/testdata/hf_tokenizer_ids.json"));
  ASSERT_GE(fixture["cases"].size(), 3u);
  int differing = 0;
  for (const nlohmann::json& c : fixture["cases"]) {
    const std::string prompt = c["prompt"];
    auto ids = (*tok)->EncodePrompt(prompt);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, c["legacy_true"].get<std::vector<int>>()) << prompt;
    differing += c["legacy_true"] != c["as_configured"];
  }
  EXPECT_GT(differing, 0);
  const nlohmann::json config = nlohmann::json::parse(ReadFile(model + "/tokenizer_config.json"));
  EXPECT_EQ(config.value("legacy", false), true)
      << "tokenizer_config.json must say \"legacy\": true (HF's slow tokenizer then segments "
         "as the model was trained)";
}

}  // namespace
}  // namespace prunesvc::model
