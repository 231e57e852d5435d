#include "worker/model/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace prunesvc::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";
constexpr size_t kMaxIndexBytes = 64 << 20;

// (modern prefix, legacy prefix). Order matters: the first match wins.
constexpr std::pair<std::string_view, std::string_view> kPrefixes[] = {
    {"model.language_model.", "language_model.model."},
    {"lm_head.", "language_model.lm_head."},
    {"model.vision_tower.", "vision_tower."},
    {"model.multi_modal_projector.", "multi_modal_projector."},
};

// Which layout a raw name belongs to, if any.
std::optional<WeightLayout> LayoutOf(std::string_view name) {
  for (const auto& [modern, legacy] : kPrefixes) {
    if (name.starts_with(modern)) return WeightLayout::kModern;
    if (name.starts_with(legacy)) return WeightLayout::kLegacy;
  }
  return std::nullopt;
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t limit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::string text;
  char buf[65536];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    text.append(buf, static_cast<size_t>(in.gcount()));
    if (text.size() > limit) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": larger than ", limit, " bytes"));
    }
  }
  if (in.bad()) return absl::InternalError(absl::StrCat(path, ": read error"));
  return text;
}

// A shard file name from the index must be a plain file name inside the model directory.
bool IsPlainFileName(absl::string_view name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find('/') == absl::string_view::npos && name.find('\0') == absl::string_view::npos;
}

// name (as in the file) → shard file name, from model.safetensors.index.json.
absl::StatusOr<std::map<std::string, std::string>> ReadIndex(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, kMaxIndexBytes));
  json index;
  try {
    index = json::parse(text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON: ", e.what()));
  }
  if (!index.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected a JSON object"));
  }
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": weight_map: missing or not a JSON object"));
  }
  if (wm->empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": weight_map is empty"));
  std::map<std::string, std::string> out;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string() || !IsPlainFileName(it.value().get<std::string>())) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": weight_map[\"", it.key(),
                       "\"]: expected a shard file name in the model directory"));
    }
    out[it.key()] = it.value().get<std::string>();
  }
  return out;
}

absl::Status AddTensor(const SafetensorsFile& file, const TensorInfo& info, Checkpoint* ckpt,
                       std::map<DType, uint64_t>* elements_by_dtype,
                       std::map<std::string, std::string>* source_of) {
  if (info.dtype == DType::kOther) {
    if (absl::EndsWith(info.name, ".position_ids")) {
      spdlog::warn("{}: skipping non-float buffer {} ({})", file.path(), info.name,
                   info.dtype_name);
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": tensor '", info.name, "' has dtype ", info.dtype_name,
                     ", which is not supported for weights (expected F32, F16 or BF16)"));
  }
  std::string canonical = CanonicalWeightName(info.name);
  auto [it, inserted] = source_of->emplace(canonical, info.name);
  if (!inserted) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.path(), ": tensor '", info.name, "' duplicates '", it->second, "' (both are '",
        canonical, "' once the weight-name prefixes are normalised)"));
  }
  try {
    at::Tensor t = at::empty(info.shape, at::TensorOptions().dtype(at::kFloat));
    RETURN_IF_ERROR(file.ReadAsFloat32(
        info, absl::Span<float>(t.data_ptr<float>(), static_cast<size_t>(t.numel()))));
    ckpt->tensors.emplace(std::move(canonical), std::move(t));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat(file.path(), ": tensor '", info.name, "': allocation failed: ", e.what()));
  }
  (*elements_by_dtype)[info.dtype] += info.num_elements();
  return absl::OkStatus();
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      return absl::InternalError(absl::StrCat(tmp, ": write failed"));
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", ec.message()));
  }
  return absl::OkStatus();
}

bool IsShardFileName(const std::string& name) {
  int a = 0, b = 0;
  char tail[32] = {0};
  return name.size() == std::string("model-00001-of-00001.safetensors").size() &&
         std::sscanf(name.c_str(), "model-%5d-of-%5d.%20s", &a, &b, tail) == 3 &&
         std::string(tail) == "safetensors";
}

}  // namespace

std::string_view WeightLayoutName(WeightLayout layout) {
  return layout == WeightLayout::kModern ? "modern" : "legacy";
}

std::string CanonicalWeightName(std::string_view name) {
  for (const auto& [modern, legacy] : kPrefixes) {
    if (name.starts_with(modern)) {
      return std::string(legacy).append(name.substr(modern.size()));
    }
    if (name.starts_with(legacy)) return std::string(name);
  }
  return std::string(name);
}

std::string LayoutWeightName(std::string_view canonical, WeightLayout layout) {
  if (layout == WeightLayout::kLegacy) return CanonicalWeightName(canonical);
  for (const auto& [modern, legacy] : kPrefixes) {
    if (canonical.starts_with(legacy)) {
      return std::string(modern).append(canonical.substr(legacy.size()));
    }
    if (canonical.starts_with(modern)) return std::string(canonical);
  }
  return std::string(canonical);
}

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& model_dir) {
  const std::string single = model_dir + "/" + kSingleFile;
  const std::string index_path = model_dir + "/" + kIndexFile;
  Checkpoint ckpt;
  std::map<DType, uint64_t> elements_by_dtype;
  std::map<std::string, std::string> source_of;  // canonical → name in the file
  std::error_code ec;

  if (fs::exists(single, ec)) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single));
    for (const TensorInfo& info : file->tensors()) {
      RETURN_IF_ERROR(AddTensor(*file, info, &ckpt, &elements_by_dtype, &source_of));
    }
    ckpt.metadata = file->metadata();
  } else if (fs::exists(index_path, ec)) {
    ASSIGN_OR_RETURN(auto weight_map, ReadIndex(index_path));
    std::map<std::string, std::vector<std::string>> by_shard;
    for (const auto& [name, shard] : weight_map) by_shard[shard].push_back(name);
    for (const auto& [shard, names] : by_shard) {
      const std::string shard_path = model_dir + "/" + shard;
      if (!fs::is_regular_file(shard_path, ec)) {
        return absl::NotFoundError(absl::StrCat(index_path, ": shard '", shard, "' (holding '",
                                                names.front(), "') does not exist in ", model_dir));
      }
      ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(shard_path));
      for (const std::string& name : names) {
        if (file->Find(name) == nullptr) {
          return absl::InvalidArgumentError(absl::StrCat(
              shard_path, ": tensor '", name, "' is missing (", kIndexFile, " maps it here)"));
        }
      }
      for (const TensorInfo& info : file->tensors()) {
        auto it = weight_map.find(info.name);
        if (it == weight_map.end()) {
          return absl::InvalidArgumentError(
              absl::StrCat(shard_path, ": tensor '", info.name, "' is not listed in ", kIndexFile));
        }
        if (it->second != shard) {
          return absl::InvalidArgumentError(
              absl::StrCat(shard_path, ": tensor '", info.name, "' also appears here, but ",
                           kIndexFile, " maps it to '", it->second, "' (duplicate name)"));
        }
        RETURN_IF_ERROR(AddTensor(*file, info, &ckpt, &elements_by_dtype, &source_of));
      }
      for (const auto& [k, v] : file->metadata()) ckpt.metadata.emplace(k, v);
    }
  } else {
    return absl::NotFoundError(
        absl::StrCat("no ", kSingleFile, " or ", kIndexFile, " in ", model_dir));
  }
  if (ckpt.tensors.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(model_dir, ": the checkpoint has no tensors"));
  }

  // Layout: all prefixed names must agree.
  std::optional<std::string> legacy_example, modern_example;
  for (const auto& [canonical, raw] : source_of) {
    std::optional<WeightLayout> l = LayoutOf(raw);
    if (l == WeightLayout::kLegacy && !legacy_example) legacy_example = raw;
    if (l == WeightLayout::kModern && !modern_example) modern_example = raw;
  }
  if (legacy_example && modern_example) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir, ": the checkpoint mixes weight-name layouts ('", *legacy_example,
                     "' is transformers<=4.51 style, '", *modern_example, "' is >=4.52 style)"));
  }
  ckpt.layout = modern_example ? WeightLayout::kModern : WeightLayout::kLegacy;

  // Dominant float dtype by element count; ties prefer the wider type.
  uint64_t best = 0;
  ckpt.source_dtype = DType::kF32;
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16}) {
    auto it = elements_by_dtype.find(d);
    if (it != elements_by_dtype.end() && it->second > best) {
      best = it->second;
      ckpt.source_dtype = d;
    }
  }
  if (elements_by_dtype.size() > 1) {
    spdlog::info("{}: mixed float dtypes; remembering {} (most parameters)", model_dir,
                 std::string(DTypeName(ckpt.source_dtype)));
  }
  return ckpt;
}

absl::Status SaveCheckpoint(const std::string& model_dir,
                            const std::map<std::string, at::Tensor>& tensors, DType dtype,
                            size_t max_shard_bytes, WeightLayout layout,
                            const std::map<std::string, std::string>& metadata) {
  if (dtype == DType::kOther) {
    return absl::InvalidArgumentError("SaveCheckpoint: dtype must be F32, F16 or BF16");
  }
  if (tensors.empty()) return absl::InvalidArgumentError("SaveCheckpoint: no tensors");
  const at::ScalarType scalar = dtype == DType::kF32   ? at::kFloat
                                : dtype == DType::kF16 ? at::kHalf
                                                       : at::kBFloat16;
  const size_t esize = DTypeSize(dtype);

  // Names as written, in write order (sorted by the written name, as the files will be).
  struct Item {
    std::string name;
    const at::Tensor* tensor;
    uint64_t bytes;
  };
  std::vector<Item> items;
  std::set<std::string> seen;
  for (const auto& [canonical, t] : tensors) {
    std::string name = LayoutWeightName(canonical, layout);
    if (!seen.insert(name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("SaveCheckpoint: two tensors map to the name '", name, "'"));
    }
    if (!t.defined() || !t.is_floating_point()) {
      return absl::InvalidArgumentError(
          absl::StrCat("SaveCheckpoint: tensor '", canonical, "' is undefined or not float"));
    }
    items.push_back({std::move(name), &t, static_cast<uint64_t>(t.numel()) * esize});
  }
  std::sort(items.begin(), items.end(),
            [](const Item& a, const Item& b) { return a.name < b.name; });

  // HF's greedy split: start a new shard when the next tensor would overflow the current one.
  std::vector<std::vector<const Item*>> shards(1);
  uint64_t current = 0, total = 0;
  for (const Item& item : items) {
    if (max_shard_bytes > 0 && !shards.back().empty() && current + item.bytes > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(&item);
    current += item.bytes;
    total += item.bytes;
  }

  std::error_code ec;
  fs::create_directories(model_dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create directory ", model_dir, ": ", ec.message()));
  }
  std::map<std::string, std::string> meta = metadata;
  meta.emplace("format", "pt");

  const size_t n = shards.size();
  std::set<std::string> written;
  json weight_map = json::object();
  for (size_t s = 0; s < n; ++s) {
    const std::string file_name = n == 1
                                      ? std::string(kSingleFile)
                                      : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, n);
    std::vector<at::Tensor> converted;  // keeps the bytes alive while writing this shard
    std::vector<WriteTensor> out;
    try {
      for (const Item* item : shards[s]) {
        at::Tensor c = item->tensor->detach().to(at::kCPU).to(scalar).contiguous();
        converted.push_back(c);
        WriteTensor w;
        w.name = item->name;
        w.dtype = dtype;
        w.shape.assign(c.sizes().begin(), c.sizes().end());
        w.data = absl::Span<const uint8_t>(static_cast<const uint8_t*>(c.data_ptr()),
                                           static_cast<size_t>(c.numel()) * esize);
        out.push_back(std::move(w));
        weight_map[item->name] = file_name;
      }
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("SaveCheckpoint: converting tensors for ", file_name,
                                              " failed: ", e.what()));
    }
    RETURN_IF_ERROR(WriteSafetensors(model_dir + "/" + file_name, out, meta));
    written.insert(file_name);
  }
  if (n > 1) {
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    RETURN_IF_ERROR(WriteTextFile(model_dir + "/" + kIndexFile, index.dump(2) + "\n"));
  }

  // Remove weight files a previous save left behind, so the directory has exactly one form.
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(model_dir, ec)) {
    const std::string name = entry.path().filename().string();
    const bool ours = name == kSingleFile || name == kIndexFile || IsShardFileName(name);
    if (ours && !written.count(name) && !(n > 1 && name == kIndexFile)) {
      stale.push_back(entry.path());
    }
  }
  for (const fs::path& p : stale) fs::remove(p, ec);
  return absl::OkStatus();
}

}  // namespace prunesvc::model
