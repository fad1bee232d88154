//! Photo preprocessing shared by training, evaluation, `classify` and the browser demo.
//!
//! Two input sizes are supported:
//! - 84: resize to 96x96 with bilinear filtering (aspect ratio not kept), centre-crop 84x84.
//!   This is the standard protocol for the Conv4 backbone.
//! - 224: resize the shorter side to 256 with bilinear filtering, centre-crop 224x224.
//!
//! Both are followed by ImageNet normalisation, and in training by a horizontal flip with
//! probability 0.5. Downscaling uses a filter whose support widens with the scale factor, which
//! is what PIL's bilinear resize (and so torchvision's) does.

use image::imageops::{self, FilterType};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use std::io::Cursor;
use std::path::Path;

/// Per-channel mean of ImageNet photos in RGB order, on the 0..1 scale.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel standard deviation of ImageNet photos in RGB order, on the 0..1 scale.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The largest width or height accepted, in pixels. Larger photos are rejected before decoding
/// so that a crafted file cannot exhaust memory.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// The side of the square network input, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub enum ImageSize {
    /// 84x84, cropped from a 96x96 resize.
    S84,
    /// 224x224, cropped from a resize of the shorter side to 256.
    S224,
}

impl ImageSize {
    /// Returns the side in pixels.
    pub fn pixels(self) -> u32 {
        match self {
            ImageSize::S84 => 84,
            ImageSize::S224 => 224,
        }
    }

    /// Returns the number of `f32` values of one normalised CHW image.
    pub fn num_values(self) -> usize {
        let side = self.pixels() as usize;
        3 * side * side
    }
}

impl TryFrom<u32> for ImageSize {
    type Error = String;

    fn try_from(pixels: u32) -> Result<Self, Self::Error> {
        match pixels {
            84 => Ok(ImageSize::S84),
            224 => Ok(ImageSize::S224),
            _ => Err(format!("invalid image size {pixels}; expected 84 or 224")),
        }
    }
}

impl From<ImageSize> for u32 {
    fn from(size: ImageSize) -> u32 {
        size.pixels()
    }
}

/// Errors raised while turning file bytes into a network input.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PreprocessError {
    #[error("the file is empty")]
    Empty,
    #[error("not a supported image format (expected JPEG, PNG, BMP, GIF, WebP or TIFF)")]
    UnknownFormat,
    #[error("the JPEG data is truncated (no end-of-image marker)")]
    TruncatedJpeg,
    #[error("the image is {width}x{height} pixels, larger than the {max}-pixel limit per side")]
    TooLarge { width: u32, height: u32, max: u32 },
    #[error(
        "the image is {width}x{height} pixels ({megapixels:.0} megapixels), more than the {max_megapixels:.0}-megapixel limit"
    )]
    TooManyPixels {
        width: u32,
        height: u32,
        megapixels: f64,
        max_megapixels: f64,
    },
    #[error("the image has no pixels")]
    NoPixels,
    #[error("decoding failed: {0}")]
    Decode(String),
}

/// Decodes an image file's bytes, of any colour mode, into RGB, turned upright as its EXIF
/// orientation tag indicates.
///
/// # Errors
/// Empty input, an unknown format, a truncated JPEG, a photo over [`MAX_IMAGE_SIDE`] and any
/// decoder error.
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage, PreprocessError> {
    decode_image_within(bytes, u64::MAX)
}

/// Decodes like [`decode_image`], and also rejects photos of more than `max_pixels` pixels
/// before decoding them. The browser build uses it to keep a photo within WebAssembly's memory.
///
/// # Errors
/// Those of [`decode_image`], and [`PreprocessError::TooManyPixels`].
pub fn decode_image_within(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PreprocessError::Decode(e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(PreprocessError::UnknownFormat);
    };
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(PreprocessError::TruncatedJpeg);
    }

    // Reading the header needs no limits; the size checks below give clearer messages than the
    // decoder's memory limit would.
    let mut reader = reader;
    reader.no_limits();
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| PreprocessError::Decode(e.to_string()))?;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(PreprocessError::TooLarge {
            width,
            height,
            max: MAX_IMAGE_SIDE,
        });
    }
    if width == 0 || height == 0 {
        return Err(PreprocessError::NoPixels);
    }
    if width as u64 * height as u64 > max_pixels {
        return Err(PreprocessError::TooManyPixels {
            width,
            height,
            megapixels: width as f64 * height as f64 / 1e6,
            max_megapixels: max_pixels as f64 / 1e6,
        });
    }

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits.clone());
    let decode_error = |e: image::ImageError| PreprocessError::Decode(e.to_string());
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    limits.reserve(decoder.total_bytes()).map_err(decode_error)?;
    // Cameras and phones often store a portrait photo sideways with an EXIF orientation tag;
    // viewers rotate it, so the network must see it rotated too. A damaged tag counts as none.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);
    Ok(DynamicImage::ImageRgb8(image.to_rgb8()))
}

/// Returns whether a JPEG stream reaches its end-of-image marker.
///
/// The JPEG decoder of `image` 0.25 decodes a real photo cut at 30% to 99% of its length without
/// an error, so a file cut short in transfer would otherwise train as a partly blank photo.
/// This walks the marker segments and the entropy-coded data (where 0xFF is always followed by 0x00 or a restart marker) until it
/// finds EOI (0xFFD9).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const SOI: u8 = 0xD8;
    const EOI: u8 = 0xD9;
    const SOS: u8 = 0xDA;
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != SOI {
        return false;
    }
    let mut pos = 2;
    while pos + 1 < bytes.len() {
        if bytes[pos] != 0xFF {
            return false;
        }
        let marker = bytes[pos + 1];
        pos += 2;
        match marker {
            0xFF => pos -= 1, // fill byte before a marker
            EOI => return true,
            0x01 | 0xD0..=0xD7 => {}
            _ => {
                if pos + 1 >= bytes.len() {
                    return false;
                }
                let length = u16::from_be_bytes([bytes[pos], bytes[pos + 1]]) as usize;
                pos += length;
                if marker == SOS {
                    // Skip the entropy-coded data up to the next real marker.
                    loop {
                        if pos + 1 >= bytes.len() {
                            return false;
                        }
                        if bytes[pos] == 0xFF {
                            let next = bytes[pos + 1];
                            if next != 0x00 && !(0xD0..=0xD7).contains(&next) && next != 0xFF {
                                break;
                            }
                        }
                        pos += 1;
                    }
                }
            }
        }
    }
    false
}

/// Resizes and centre-crops a decoded photo to the network's input size, as described in the
/// module documentation.
pub fn crop_for_model(image: &DynamicImage, size: ImageSize) -> RgbImage {
    let rgb = image.to_rgb8();
    match size {
        ImageSize::S84 => {
            let resized = imageops::resize(&rgb, 96, 96, FilterType::Triangle);
            center_crop(&resized, 84)
        }
        ImageSize::S224 => resize_and_center_crop(&rgb, 256, 224),
    }
}

/// Resizes `image` so that its shorter side is `short` pixels (bilinear, aspect ratio kept,
/// the longer side truncated as torchvision does), then crops the centre `side x side` square.
pub fn resize_and_center_crop(image: &RgbImage, short: u32, side: u32) -> RgbImage {
    let (width, height) = image.dimensions();
    let (new_width, new_height) = if width <= height {
        (
            short,
            ((short as u64 * height as u64) / width as u64).max(1) as u32,
        )
    } else {
        (
            ((short as u64 * width as u64) / height as u64).max(1) as u32,
            short,
        )
    };
    let resized = imageops::resize(image, new_width, new_height, FilterType::Triangle);
    center_crop(&resized, side)
}

/// Crops the centre `side x side` square; the offset is rounded as torchvision's `CenterCrop`.
fn center_crop(image: &RgbImage, side: u32) -> RgbImage {
    let (width, height) = image.dimensions();
    let left = ((width.saturating_sub(side)) as f64 / 2.0).round() as u32;
    let top = ((height.saturating_sub(side)) as f64 / 2.0).round() as u32;
    imageops::crop_imm(image, left, top, side.min(width), side.min(height)).to_image()
}

/// Writes a cropped `side x side` RGB image as ImageNet-normalised CHW floats into `out`,
/// mirrored left to right when `flip` is set.
///
/// # Panics
/// When `out` does not hold exactly `3 * side * side` values for the image's side.
pub fn write_normalized_chw(pixels: &[u8], side: usize, flip: bool, out: &mut [f32]) {
    let plane = side * side;
    assert_eq!(
        pixels.len(),
        3 * plane,
        "pixel buffer is not {side}x{side} RGB"
    );
    assert_eq!(out.len(), 3 * plane, "output buffer is not 3x{side}x{side}");
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * IMAGENET_STD[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| IMAGENET_MEAN[c] / IMAGENET_STD[c]);
    for y in 0..side {
        for x in 0..side {
            let source_x = if flip { side - 1 - x } else { x };
            let source = 3 * (y * side + source_x);
            let target = y * side + x;
            for c in 0..3 {
                out[c * plane + target] = pixels[source + c] as f32 * scale[c] - shift[c];
            }
        }
    }
}

/// Reads, decodes and crops one photo file.
pub fn load_photo(path: &Path, size: ImageSize) -> Result<RgbImage, crate::data::DataError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => crate::data::DataError::MissingImage {
            path: path.to_path_buf(),
        },
        _ => crate::data::DataError::BadImage {
            path: path.to_path_buf(),
            reason: format!("the file cannot be read ({source})"),
        },
    })?;
    let image = decode_image(&bytes).map_err(|e| crate::data::DataError::BadImage {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(crop_for_model(&image, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb};

    fn encode(image: &DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    fn gradient(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        }))
    }

    #[test]
    fn greyscale_becomes_rgb() {
        let grey = DynamicImage::ImageLuma8(GrayImage::from_pixel(10, 12, Luma([77])));
        let decoded = decode_image(&encode(&grey, image::ImageFormat::Png)).unwrap();
        let rgb = decoded.as_rgb8().unwrap();
        assert_eq!(rgb.get_pixel(3, 4).0, [77, 77, 77]);
    }

    #[test]
    fn crop_sizes_match_protocol() {
        let photo = gradient(300, 200);
        assert_eq!(
            crop_for_model(&photo, ImageSize::S84).dimensions(),
            (84, 84)
        );
        assert_eq!(
            crop_for_model(&photo, ImageSize::S224).dimensions(),
            (224, 224)
        );
    }

    #[test]
    fn crop_224_keeps_centre_column() {
        // A 512x256 photo becomes 512x256 (shorter side already 256): the crop starts at x=144.
        let photo = gradient(512, 256);
        let crop = crop_for_model(&photo, ImageSize::S224);
        let expected = photo.to_rgb8().get_pixel(144 + 10, 16 + 5).0;
        assert_eq!(crop.get_pixel(10, 5).0, expected);
    }

    #[test]
    fn truncated_jpeg_is_rejected() {
        let bytes = encode(&gradient(64, 64), image::ImageFormat::Jpeg);
        assert!(decode_image(&bytes).is_ok());
        let cut = &bytes[..bytes.len() / 2];
        assert_eq!(
            decode_image(cut).unwrap_err(),
            PreprocessError::TruncatedJpeg
        );
    }

    #[test]
    fn empty_and_text_files_are_rejected() {
        assert_eq!(decode_image(&[]).unwrap_err(), PreprocessError::Empty);
        let text = b"this is not a photo of a bird";
        assert_eq!(
            decode_image(text).unwrap_err(),
            PreprocessError::UnknownFormat
        );
    }

    #[test]
    fn oversized_header_is_rejected_before_decoding() {
        // A PNG header claiming 20000x20000 pixels; the pixel data is never read.
        let mut bytes = encode(
            &DynamicImage::ImageLuma8(GrayImage::new(1, 1)),
            image::ImageFormat::Png,
        );
        bytes[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let error = decode_image(&bytes).unwrap_err();
        assert!(matches!(
            error,
            PreprocessError::TooLarge { .. } | PreprocessError::Decode(_)
        ));
    }

    /// Computes the CRC-32 that PNG chunks carry (reflected, polynomial 0xEDB88320).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn pixel_limit_is_checked_before_decoding() {
        // A 9000x9000 header on a 1x1 PNG: within the side limit, over a 60-megapixel limit.
        let mut bytes = encode(
            &DynamicImage::ImageLuma8(GrayImage::new(1, 1)),
            image::ImageFormat::Png,
        );
        bytes[16..20].copy_from_slice(&9_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&9_000u32.to_be_bytes());
        // The header chunk's checksum covers its type and data (bytes 12..29), so the decoder
        // reads the new size instead of reporting a damaged file.
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let error = decode_image_within(&bytes, 60_000_000).unwrap_err();
        assert!(
            matches!(error, PreprocessError::TooManyPixels { width: 9000, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("81 megapixels"), "{error}");
        let small = encode(&gradient(30, 20), image::ImageFormat::Png);
        assert_eq!(decode_image_within(&small, 600).unwrap().width(), 30);
        assert!(decode_image_within(&small, 599).is_err());
    }

    #[test]
    fn exif_orientation_turns_photo_upright() {
        // A little-endian TIFF block with one tag: Orientation (0x0112) = 6, which means that
        // viewers rotate the stored pixels 90 degrees clockwise.
        let mut exif = b"II*\0".to_vec();
        exif.extend(8u32.to_le_bytes());
        exif.extend(1u16.to_le_bytes());
        exif.extend(0x0112u16.to_le_bytes());
        exif.extend(3u16.to_le_bytes());
        exif.extend(1u32.to_le_bytes());
        exif.extend(6u16.to_le_bytes());
        exif.extend(0u16.to_le_bytes());
        exif.extend(0u32.to_le_bytes());
        let stored = gradient(30, 20).to_rgb8();
        let mut bytes = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
        image::ImageEncoder::set_exif_metadata(&mut encoder, exif).unwrap();
        image::ImageEncoder::write_image(
            encoder,
            stored.as_raw(),
            30,
            20,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();

        let upright = decode_image(&bytes).unwrap();
        assert_eq!((upright.width(), upright.height()), (20, 30));
        // After a clockwise turn the stored top-left pixel is at the top right.
        let corner = upright.to_rgb8().get_pixel(19, 0).0;
        let stored_corner = stored.get_pixel(0, 0).0;
        for (a, b) in corner.iter().zip(stored_corner) {
            assert!((*a as i32 - b as i32).abs() <= 12, "{corner:?} vs {stored_corner:?}");
        }
    }

    #[test]
    fn normalisation_and_flip() {
        let side = 2;
        // Pixel (x=0) is white, pixel (x=1) is black, on both rows.
        let pixels = [255, 255, 255, 0, 0, 0, 255, 255, 255, 0, 0, 0];
        let mut plain = vec![0.0; 12];
        let mut flipped = vec![0.0; 12];
        write_normalized_chw(&pixels, side, false, &mut plain);
        write_normalized_chw(&pixels, side, true, &mut flipped);

        let white_red = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0];
        let black_blue = -IMAGENET_MEAN[2] / IMAGENET_STD[2];
        assert!((plain[0] - white_red).abs() < 1e-5);
        assert!((plain[8 + 1] - black_blue).abs() < 1e-5);
        assert!((flipped[1] - white_red).abs() < 1e-5);
        assert!((flipped[0] - plain[1]).abs() < 1e-6);
    }

    #[test]
    fn image_size_from_number() {
        assert_eq!(ImageSize::try_from(84).unwrap(), ImageSize::S84);
        assert!(ImageSize::try_from(96).unwrap_err().contains("96"));
    }
}
