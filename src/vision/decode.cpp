// Decoding to RGB as PIL's Image.open(f).convert("RGB") (Pillow 9.4) gives it:
// JPEG: libjpeg-turbo defaults (ISLOW IDCT, fancy upsampling); CMYK via PIL's formula.
// PNG: grey/palette expanded, alpha dropped (not composited), 16-bit channels keep their high
// byte, except 16-bit greyscale which PIL opens as mode "I" and clamps to 0..255.
// WebP: libwebp, alpha dropped.
#include <cstddef>
#include <cstdio>
// clang-format off
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
#include <png.h>
#include <webp/decode.h>

#include <algorithm>
#include <csetjmp>
#include <cstring>
#include <fstream>

#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/image.h"

namespace vlmo {
namespace {

void check_size(int64_t w, int64_t h, const std::string& name, const DecodeOptions& opt) {
  if (w <= 0 || h <= 0) throw Error(cat(name, ": image has no pixels (", w, "x", h, ")"));
  if (w * h > opt.max_pixels)
    throw Error(cat(name, ": image is ", w, "x", h, " = ", w * h, " pixels, over the limit of ", opt.max_pixels,
                    " (decompression bomb guard; raise max_pixels to allow it)"));
  if (opt.max_side > 0 && std::max(w, h) > opt.max_side)
    throw Error(cat(name, ": image is ", w, "x", h, " pixels, a side longer than the limit of ", opt.max_side,
                    " pixels (resizing cost guard)"));
}

// ---- JPEG ------------------------------------------------------------------------------------

struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool premature_end = false;
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

// Warnings are not fatal (as in PIL), except running out of data: PIL raises "image file is
// truncated" unless LOAD_TRUNCATED_IMAGES is set, so we refuse truncated files too.
void jpeg_warning(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) reinterpret_cast<JpegError*>(cinfo->err)->premature_end = true;
}

uint8_t muldiv255(int a, int b) {
  const int t = a * b + 128;
  return static_cast<uint8_t>(((t >> 8) + t) >> 8);
}

Image decode_jpeg(const std::string& bytes, const std::string& name, const DecodeOptions& opt) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  err.mgr.emit_message = jpeg_warning;
  Image img;
  std::vector<uint8_t> scanline;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    throw Error(cat(name, ": corrupt JPEG (", err.message, ")"));
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<unsigned long>(bytes.size()));
  jpeg_save_markers(&cinfo, JPEG_APP0 + 14, 0xffff);  // Adobe marker (CMYK inversion)
  jpeg_read_header(&cinfo, TRUE);
  check_size(cinfo.image_width, cinfo.image_height, name, opt);
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  const bool grey = cinfo.jpeg_color_space == JCS_GRAYSCALE;
  cinfo.out_color_space = cmyk ? JCS_CMYK : grey ? JCS_GRAYSCALE : JCS_RGB;
  if (opt.target_size > 0) {
    const unsigned shorter = std::min(cinfo.image_width, cinfo.image_height);
    unsigned denom = 1;
    while (denom < 8 && shorter / (denom * 2) >= static_cast<unsigned>(opt.target_size)) denom *= 2;
    cinfo.scale_num = 1;
    cinfo.scale_denom = denom;
    cinfo.dct_method = JDCT_IFAST;
    cinfo.do_fancy_upsampling = FALSE;
  }
  jpeg_start_decompress(&cinfo);
  img.width = static_cast<int>(cinfo.output_width);
  img.height = static_cast<int>(cinfo.output_height);
  img.rgb.resize(static_cast<size_t>(img.width) * img.height * 3);
  if (grey || cmyk) scanline.resize(static_cast<size_t>(img.width) * cinfo.output_components);
  const bool adobe = cinfo.saw_Adobe_marker;
  while (cinfo.output_scanline < cinfo.output_height) {
    const int y = static_cast<int>(cinfo.output_scanline);
    uint8_t* out = img.row(y);
    // RGB output goes straight into the image; grey and CMYK through a scanline buffer.
    JSAMPROW rows[1] = {grey || cmyk ? scanline.data() : out};
    if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) break;
    if (grey) {
      for (int x = 0; x < img.width; ++x) out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = scanline[x];
    } else if (cmyk) {
      for (int x = 0; x < img.width; ++x) {
        uint8_t c[4];
        for (int k = 0; k < 4; ++k) c[k] = adobe ? 255 - scanline[4 * x + k] : scanline[4 * x + k];
        const int nk = 255 - c[3];
        for (int k = 0; k < 3; ++k) out[3 * x + k] = static_cast<uint8_t>(nk - muldiv255(c[k], nk));
      }
    }
  }
  if (err.premature_end || cinfo.output_scanline < cinfo.output_height) {
    jpeg_destroy_decompress(&cinfo);
    throw Error(cat(name, ": truncated JPEG (image file is truncated)"));
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return img;
}

// ---- PNG -------------------------------------------------------------------------------------

struct PngSource {
  const std::string* bytes;
  size_t pos;
};

void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > src->bytes->size() - src->pos) png_error(png, "unexpected end of file (truncated)");
  std::memcpy(out, src->bytes->data() + src->pos, n);
  src->pos += n;
}

void png_fail(png_structp png, png_const_charp msg) {
  auto* message = static_cast<std::string*>(png_get_error_ptr(png));
  *message = msg;
  png_longjmp(png, 1);
}

void png_warn(png_structp, png_const_charp) {}

Image decode_png(const std::string& bytes, const std::string& name, const DecodeOptions& opt) {
  std::string message;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &message, png_fail, png_warn);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) throw Error(cat(name, ": out of memory creating the PNG decoder"));
  PngSource src{&bytes, 0};
  Image img;
  std::vector<uint8_t> pixels;
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw Error(cat(name, ": corrupt PNG (", message, ")"));
  }
  png_set_read_fn(png, &src, png_read_mem);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  png_read_info(png, info);
  const auto w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  check_size(w, h, name, opt);
  const int depth = png_get_bit_depth(png, info), type = png_get_color_type(png, info);
  const bool grey16 = depth == 16 && type == PNG_COLOR_TYPE_GRAY;
  if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16 && !grey16) png_set_strip_16(png);  // keeps the high byte, as PIL's ;16B
  if (grey16) png_set_swap(png);                      // host order, to clamp like PIL's "I"
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const size_t row_bytes = png_get_rowbytes(png, info);
  const int channels = png_get_channels(png, info);
  pixels.resize(row_bytes * h);
  rows.resize(h);
  for (png_uint_32 y = 0; y < h; ++y) rows[y] = pixels.data() + y * row_bytes;
  png_read_image(png, rows.data());
  png_destroy_read_struct(&png, &info, nullptr);

  img.width = static_cast<int>(w);
  img.height = static_cast<int>(h);
  img.rgb.resize(static_cast<size_t>(w) * h * 3);
  for (png_uint_32 y = 0; y < h; ++y) {
    const uint8_t* in = rows[y];
    uint8_t* out = img.row(static_cast<int>(y));
    for (png_uint_32 x = 0; x < w; ++x) {
      if (grey16) {
        uint16_t v;
        std::memcpy(&v, in + 2 * x, 2);
        out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = static_cast<uint8_t>(v > 255 ? 255 : v);
      } else if (channels <= 2) {  // grey (+ alpha, dropped)
        out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = in[channels * x];
      } else {  // RGB (+ alpha, dropped)
        std::memcpy(out + 3 * x, in + channels * x, 3);
      }
    }
  }
  return img;
}

// ---- WebP ------------------------------------------------------------------------------------

Image decode_webp(const std::string& bytes, const std::string& name, const DecodeOptions& opt) {
  WebPBitstreamFeatures features;
  if (WebPGetFeatures(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), &features) != VP8_STATUS_OK)
    throw Error(cat(name, ": corrupt WebP header"));
  if (features.has_animation) throw Error(cat(name, ": animated WebP is not supported"));
  check_size(features.width, features.height, name, opt);
  Image img;
  img.width = features.width;
  img.height = features.height;
  img.rgb.resize(static_cast<size_t>(img.width) * img.height * 3);
  if (!WebPDecodeRGBInto(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), img.rgb.data(), img.rgb.size(),
                         img.width * 3))
    throw Error(cat(name, ": corrupt or truncated WebP"));
  return img;
}

}  // namespace

Image decode_image(const std::string& bytes, const std::string& name, const DecodeOptions& opt) {
  if (bytes.empty()) throw Error(cat(name, ": empty file (0 bytes)"));
  auto starts = [&](const char* magic, size_t n, size_t at = 0) {
    return bytes.size() >= at + n && std::memcmp(bytes.data() + at, magic, n) == 0;
  };
  if (starts("\xFF\xD8\xFF", 3)) return decode_jpeg(bytes, name, opt);
  if (starts("\x89PNG\r\n\x1a\n", 8)) return decode_png(bytes, name, opt);
  if (starts("RIFF", 4) && starts("WEBP", 4, 8)) return decode_webp(bytes, name, opt);
  throw Error(cat(name, ": unsupported image format (expected JPEG, PNG or WebP)"));
}

Image read_image(const std::string& path, const DecodeOptions& opt) {
  const std::string bytes = read_input(path, "image");
  return decode_image(bytes, path, opt);
}

}  // namespace vlmo
