#include "worker/model/image.h"

#include <png.h>
// jpeglib.h needs size_t and FILE declared first.
#include <jerror.h>
#include <jpeglib.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <new>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace prunesvc::model {
namespace {

// The decoders use libpng/libjpeg's setjmp/longjmp error handling. To keep that well-defined in
// C++, each setjmp lives in a small "Inner" function whose locals are all trivially destructible
// and which only touches state through a context pointer owned by the caller's frame.

absl::Status SizeError(absl::string_view source, absl::string_view format, uint64_t w, uint64_t h,
                       const DecodeOptions& options) {
  return absl::InvalidArgumentError(absl::StrCat(
      source, ": ", format, " image is ", w, "x", h, " pixels, over the limit of ",
      options.max_width, "x", options.max_height, " (DecodeOptions max_width/max_height)"));
}

// ---------------------------------------------------------------------------------------------
// PNG

struct PngReadContext {
  png_structp png = nullptr;
  png_infop info = nullptr;
  const uint8_t* data = nullptr;
  size_t size = 0;
  size_t pos = 0;
  const DecodeOptions* options = nullptr;
  // Outputs.
  char error[256] = {0};
  bool too_large = false;
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0;
  size_t rowbytes = 0;
  std::vector<uint8_t> raw;  // rows after png_set_packing; sized before png_read_image
  std::vector<png_bytep> rows;
  std::vector<uint8_t> palette;  // 256 RGB entries, PIL's ramp beyond PLTE
};

void PngErrorFn(png_structp png, png_const_charp msg) {
  auto* ctx = static_cast<PngReadContext*>(png_get_error_ptr(png));
  if (ctx->error[0] == '\0') std::snprintf(ctx->error, sizeof(ctx->error), "%s", msg);
  png_longjmp(png, 1);
}

void PngWarningFn(png_structp, png_const_charp) {
  // Warnings (bad ancillary CRC, unknown chunks) do not change the pixels PIL would decode.
}

void PngReadFn(png_structp png, png_bytep out, size_t n) {
  auto* ctx = static_cast<PngReadContext*>(png_get_io_ptr(png));
  if (n > ctx->size - ctx->pos) png_error(png, "unexpected end of data (file is truncated)");
  std::memcpy(out, ctx->data + ctx->pos, n);
  ctx->pos += n;
}

// Returns false on a libpng error (message in ctx->error) or a size-limit hit (ctx->too_large).
bool DecodePngInner(PngReadContext* ctx) {
  if (setjmp(png_jmpbuf(ctx->png))) return false;
  // Our own limit check below gives the clearer message; lift libpng's (1e6) out of the way.
  png_set_user_limits(ctx->png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
  png_set_read_fn(ctx->png, ctx, PngReadFn);
  png_read_info(ctx->png, ctx->info);
  int interlace = 0;
  png_get_IHDR(ctx->png, ctx->info, &ctx->width, &ctx->height, &ctx->bit_depth, &ctx->color_type,
               &interlace, nullptr, nullptr);
  if (ctx->width > static_cast<png_uint_32>(ctx->options->max_width) ||
      ctx->height > static_cast<png_uint_32>(ctx->options->max_height)) {
    ctx->too_large = true;
    return false;
  }
  // One sample per byte for 1/2/4-bit data, unscaled: we scale gray and look up palettes
  // ourselves, exactly as PIL's unpackers do. 16-bit samples stay 16-bit (big-endian).
  if (ctx->bit_depth < 8) png_set_packing(ctx->png);
  png_set_interlace_handling(ctx->png);
  png_read_update_info(ctx->png, ctx->info);
  ctx->rowbytes = png_get_rowbytes(ctx->png, ctx->info);
  if (ctx->color_type == PNG_COLOR_TYPE_PALETTE) {
    ctx->palette.resize(256 * 3);
    for (int i = 0; i < 256; ++i) {
      ctx->palette[i * 3] = ctx->palette[i * 3 + 1] = ctx->palette[i * 3 + 2] =
          static_cast<uint8_t>(i);
    }
    png_colorp plte = nullptr;
    int num = 0;
    if (png_get_PLTE(ctx->png, ctx->info, &plte, &num) & PNG_INFO_PLTE) {
      for (int i = 0; i < num && i < 256; ++i) {
        ctx->palette[i * 3] = plte[i].red;
        ctx->palette[i * 3 + 1] = plte[i].green;
        ctx->palette[i * 3 + 2] = plte[i].blue;
      }
    }
  }
  ctx->raw.resize(ctx->rowbytes * ctx->height);
  ctx->rows.resize(ctx->height);
  for (png_uint_32 y = 0; y < ctx->height; ++y) ctx->rows[y] = ctx->raw.data() + y * ctx->rowbytes;
  png_read_image(ctx->png, ctx->rows.data());
  return true;
}

absl::StatusOr<RgbImage> DecodePng(absl::Span<const uint8_t> bytes, absl::string_view source,
                                   const DecodeOptions& options) {
  PngReadContext ctx;
  ctx.data = bytes.data();
  ctx.size = bytes.size();
  ctx.options = &options;
  ctx.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, PngErrorFn, PngWarningFn);
  if (ctx.png == nullptr) return absl::InternalError("png_create_read_struct failed");
  ctx.info = png_create_info_struct(ctx.png);
  if (ctx.info == nullptr) {
    png_destroy_read_struct(&ctx.png, nullptr, nullptr);
    return absl::InternalError("png_create_info_struct failed");
  }
  bool ok = false;
  try {
    ok = DecodePngInner(&ctx);
  } catch (const std::bad_alloc&) {
    png_destroy_read_struct(&ctx.png, &ctx.info, nullptr);
    throw;  // DecodeImage turns it into RESOURCE_EXHAUSTED
  }
  png_destroy_read_struct(&ctx.png, &ctx.info, nullptr);
  if (ctx.too_large) return SizeError(source, "PNG", ctx.width, ctx.height, options);
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": cannot decode PNG: ", ctx.error[0] ? ctx.error : "unknown error"));
  }

  RgbImage out;
  out.width = static_cast<int>(ctx.width);
  out.height = static_cast<int>(ctx.height);
  out.pixels.resize(static_cast<size_t>(out.width) * out.height * 3);
  const bool wide = ctx.bit_depth == 16;
  for (int y = 0; y < out.height; ++y) {
    const uint8_t* row = ctx.rows[y];
    uint8_t* dst = out.pixels.data() + static_cast<size_t>(y) * out.width * 3;
    for (int x = 0; x < out.width; ++x, dst += 3) {
      switch (ctx.color_type) {
        case PNG_COLOR_TYPE_GRAY: {
          int v;
          if (wide) {
            // PIL opens 16-bit gray as mode "I"; convert("RGB") clamps to 0..255.
            const int v16 = (row[x * 2] << 8) | row[x * 2 + 1];
            v = v16 > 255 ? 255 : v16;
          } else {
            // Bit replication to 0..255, as PIL's "1"/"L;2"/"L;4" unpackers do.
            static constexpr int kScale[9] = {0, 255, 85, 0, 17, 0, 0, 0, 1};
            v = row[x] * kScale[ctx.bit_depth];
          }
          dst[0] = dst[1] = dst[2] = static_cast<uint8_t>(v);
          break;
        }
        case PNG_COLOR_TYPE_GRAY_ALPHA: {
          const uint8_t g = wide ? row[x * 4] : row[x * 2];
          dst[0] = dst[1] = dst[2] = g;
          break;
        }
        case PNG_COLOR_TYPE_RGB:
          for (int c = 0; c < 3; ++c) dst[c] = wide ? row[x * 6 + c * 2] : row[x * 3 + c];
          break;
        case PNG_COLOR_TYPE_RGB_ALPHA:
          for (int c = 0; c < 3; ++c) dst[c] = wide ? row[x * 8 + c * 2] : row[x * 4 + c];
          break;
        case PNG_COLOR_TYPE_PALETTE: {
          const uint8_t* p = ctx.palette.data() + row[x] * 3;
          dst[0] = p[0];
          dst[1] = p[1];
          dst[2] = p[2];
          break;
        }
        default:
          return absl::InvalidArgumentError(
              absl::StrCat(source, ": unsupported PNG color type ", ctx.color_type));
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// JPEG

struct JpegErrorManager {
  jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {0};
  bool truncated = false;
};

void JpegErrorExit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

void JpegEmitMessage(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // trace messages
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  // PIL refuses truncated files ("image file is truncated"); other corrupt-data warnings are
  // tolerated by both libjpeg and PIL, which then decode the same pixels.
  if (cinfo->err->msg_code == JWRN_JPEG_EOF) err->truncated = true;
  cinfo->err->num_warnings++;
}

struct JpegReadContext {
  jpeg_decompress_struct cinfo;
  JpegErrorManager err;
  const uint8_t* data = nullptr;
  size_t size = 0;
  const DecodeOptions* options = nullptr;
  bool created = false;
  bool too_large = false;
  bool unsupported_color = false;
  J_COLOR_SPACE color_space = JCS_UNKNOWN;
  int width = 0, height = 0, components = 0;
  std::vector<uint8_t> raw;
};

bool DecodeJpegInner(JpegReadContext* ctx) {
  ctx->cinfo.err = jpeg_std_error(&ctx->err.pub);
  ctx->err.pub.error_exit = JpegErrorExit;
  ctx->err.pub.emit_message = JpegEmitMessage;
  if (setjmp(ctx->err.jump)) return false;
  jpeg_create_decompress(&ctx->cinfo);
  ctx->created = true;
  jpeg_mem_src(&ctx->cinfo, ctx->data, static_cast<unsigned long>(ctx->size));
  jpeg_read_header(&ctx->cinfo, TRUE);
  if (ctx->err.truncated) return false;
  ctx->width = static_cast<int>(ctx->cinfo.image_width);
  ctx->height = static_cast<int>(ctx->cinfo.image_height);
  if (ctx->cinfo.image_width > static_cast<JDIMENSION>(ctx->options->max_width) ||
      ctx->cinfo.image_height > static_cast<JDIMENSION>(ctx->options->max_height)) {
    ctx->too_large = true;
    return false;
  }
  ctx->color_space = ctx->cinfo.jpeg_color_space;
  switch (ctx->cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE:
      ctx->cinfo.out_color_space = JCS_GRAYSCALE;
      break;
    case JCS_YCbCr:
    case JCS_RGB:
      ctx->cinfo.out_color_space = JCS_RGB;
      break;
    default:
      ctx->unsupported_color = true;
      return false;
  }
  // Everything else stays at libjpeg's defaults (JDCT_ISLOW, fancy upsampling), as in PIL.
  jpeg_start_decompress(&ctx->cinfo);
  ctx->components = ctx->cinfo.output_components;
  const size_t stride = static_cast<size_t>(ctx->cinfo.output_width) * ctx->components;
  ctx->raw.resize(stride * ctx->cinfo.output_height);
  while (ctx->cinfo.output_scanline < ctx->cinfo.output_height) {
    JSAMPROW row = ctx->raw.data() + stride * ctx->cinfo.output_scanline;
    jpeg_read_scanlines(&ctx->cinfo, &row, 1);
    if (ctx->err.truncated) return false;
  }
  return true;
}

absl::StatusOr<RgbImage> DecodeJpeg(absl::Span<const uint8_t> bytes, absl::string_view source,
                                    const DecodeOptions& options) {
  auto ctx = std::make_unique<JpegReadContext>();
  std::memset(&ctx->cinfo, 0, sizeof(ctx->cinfo));
  ctx->data = bytes.data();
  ctx->size = bytes.size();
  ctx->options = &options;
  bool ok = false;
  try {
    ok = DecodeJpegInner(ctx.get());
  } catch (const std::bad_alloc&) {
    if (ctx->created) jpeg_destroy_decompress(&ctx->cinfo);
    throw;  // DecodeImage turns it into RESOURCE_EXHAUSTED
  }
  if (ctx->created) jpeg_destroy_decompress(&ctx->cinfo);
  if (ctx->too_large) return SizeError(source, "JPEG", ctx->width, ctx->height, options);
  if (ctx->unsupported_color) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": JPEG color space ", static_cast<int>(ctx->color_space),
                     " (CMYK/YCCK) is not supported; convert the image to RGB or grayscale"));
  }
  if (ctx->err.truncated) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": cannot decode JPEG: premature end of data (file is truncated)"));
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        source,
        ": cannot decode JPEG: ", ctx->err.message[0] ? ctx->err.message : "unknown error"));
  }
  RgbImage out;
  out.width = static_cast<int>(ctx->cinfo.output_width);
  out.height = static_cast<int>(ctx->cinfo.output_height);
  if (ctx->components == 3) {
    out.pixels = std::move(ctx->raw);
  } else {
    out.pixels.resize(ctx->raw.size() * 3);
    for (size_t i = 0; i < ctx->raw.size(); ++i) {
      out.pixels[i * 3] = out.pixels[i * 3 + 1] = out.pixels[i * 3 + 2] = ctx->raw[i];
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// PNG writing

struct PngWriteContext {
  png_structp png = nullptr;
  png_infop info = nullptr;
  const RgbImage* image = nullptr;
  std::vector<uint8_t>* out = nullptr;
  char error[256] = {0};
};

void PngWriteErrorFn(png_structp png, png_const_charp msg) {
  auto* ctx = static_cast<PngWriteContext*>(png_get_error_ptr(png));
  if (ctx->error[0] == '\0') std::snprintf(ctx->error, sizeof(ctx->error), "%s", msg);
  png_longjmp(png, 1);
}

void PngWriteFn(png_structp png, png_bytep data, size_t n) {
  auto* ctx = static_cast<PngWriteContext*>(png_get_io_ptr(png));
  // The buffer was reserved for the worst case, so this does not reallocate (and cannot throw
  // through libpng's C frames) in practice; insert still handles growth correctly.
  ctx->out->insert(ctx->out->end(), data, data + n);
}

void PngFlushFn(png_structp) {}

bool EncodePngInner(PngWriteContext* ctx) {
  if (setjmp(png_jmpbuf(ctx->png))) return false;
  png_set_write_fn(ctx->png, ctx, PngWriteFn, PngFlushFn);
  png_set_IHDR(ctx->png, ctx->info, static_cast<png_uint_32>(ctx->image->width),
               static_cast<png_uint_32>(ctx->image->height), 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(ctx->png, 9);
  png_set_filter(ctx->png, PNG_FILTER_TYPE_BASE, PNG_FILTER_NONE);
  png_write_info(ctx->png, ctx->info);
  const size_t stride = static_cast<size_t>(ctx->image->width) * 3;
  for (int y = 0; y < ctx->image->height; ++y) {
    png_write_row(ctx->png, ctx->image->pixels.data() + stride * y);
  }
  png_write_end(ctx->png, nullptr);
  return true;
}

}  // namespace

absl::StatusOr<RgbImage> DecodeImage(absl::Span<const uint8_t> bytes, std::string_view source_view,
                                     const DecodeOptions& options) {
  const absl::string_view source_name(source_view.data(), source_view.size());
  if (bytes.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": image data is empty"));
  }
  if (options.max_width < 1 || options.max_height < 1) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": DecodeOptions limits ",
                                                   options.max_width, "x", options.max_height,
                                                   " must be positive"));
  }
  try {
    static constexpr uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (bytes.size() >= 8 && std::memcmp(bytes.data(), kPngSignature, 8) == 0) {
      return DecodePng(bytes, source_name, options);
    }
    if (bytes.size() >= 3 && bytes[0] == 0xff && bytes[1] == 0xd8 && bytes[2] == 0xff) {
      return DecodeJpeg(bytes, source_name, options);
    }
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(source_name, ": out of memory while decoding image"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      source_name, ": not a PNG or JPEG image (unrecognised signature, ", bytes.size(), " bytes)"));
}

absl::StatusOr<RgbImage> ReadImageFile(const std::string& path, const DecodeOptions& options) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot read image file: ", ec.message()));
  }
  if (size > static_cast<uint64_t>(options.max_file_bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": image file is ", size, " bytes, over the limit of ", options.max_file_bytes));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open image file"));
  std::vector<uint8_t> bytes(size);
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
  if (static_cast<uint64_t>(in.gcount()) != size) {
    return absl::DataLossError(absl::StrCat(path, ": short read of image file"));
  }
  return DecodeImage(bytes, path, options);
}

absl::StatusOr<std::vector<uint8_t>> EncodePng(const RgbImage& image) {
  if (!image.Valid()) {
    return absl::InvalidArgumentError(absl::StrCat("EncodePng: invalid image ", image.width, "x",
                                                   image.height, " with ", image.pixels.size(),
                                                   " bytes of pixels"));
  }
  std::vector<uint8_t> out;
  PngWriteContext ctx;
  ctx.image = &image;
  ctx.out = &out;
  try {
    // Worst case: raw rows (+1 filter byte each), zlib's stored-block overhead, chunk headers.
    const size_t raw = (static_cast<size_t>(image.width) * 3 + 1) * image.height;
    out.reserve(raw + raw / 1000 + 64 * 1024);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("EncodePng: out of memory");
  }
  ctx.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, PngWriteErrorFn, nullptr);
  if (ctx.png == nullptr) return absl::InternalError("png_create_write_struct failed");
  ctx.info = png_create_info_struct(ctx.png);
  if (ctx.info == nullptr) {
    png_destroy_write_struct(&ctx.png, nullptr);
    return absl::InternalError("png_create_info_struct failed");
  }
  const bool ok = EncodePngInner(&ctx);
  png_destroy_write_struct(&ctx.png, &ctx.info);
  if (!ok) return absl::InternalError(absl::StrCat("EncodePng: libpng error: ", ctx.error));
  return out;
}

absl::Status WritePng(const std::string& path, const RgbImage& image) {
  auto bytes = EncodePng(image);
  if (!bytes.ok()) return bytes.status();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::PermissionDeniedError(absl::StrCat(tmp, ": cannot open for writing"));
    out.write(reinterpret_cast<const char*>(bytes->data()),
              static_cast<std::streamsize>(bytes->size()));
    out.flush();
    if (!out) return absl::DataLossError(absl::StrCat(tmp, ": write failed"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot rename temporary file"));
  }
  return absl::OkStatus();
}

}  // namespace prunesvc::model
