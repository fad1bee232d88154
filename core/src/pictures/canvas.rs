//! Drawing primitives on RGB images: rectangles, labels on a shaded box, scatter markers, the
//! 3x3 block boundaries, and the conversion of normalised network inputs back to pixels.
//!
//! Coordinates are signed so that shapes may extend past an edge, and pixels outside the image
//! are skipped.

use super::font::{draw_text, text_size};
use crate::data::{IMAGENET_MEAN, IMAGENET_STD};
use crate::ops::grid::block_indices;
use image::{Rgb, RgbImage, imageops};

/// Fills the `width x height` rectangle with top-left corner (`x`, `y`).
pub fn fill_rect(image: &mut RgbImage, x: i64, y: i64, width: u32, height: u32, color: Rgb<u8>) {
    shade_rect(image, x, y, width, height, color, 1.0);
}

/// Blends `color` over the rectangle with opacity `alpha` in [0, 1], where 1 paints over it.
pub fn shade_rect(
    image: &mut RgbImage,
    x: i64,
    y: i64,
    width: u32,
    height: u32,
    color: Rgb<u8>,
    alpha: f32,
) {
    let (image_width, image_height) = (image.width() as i64, image.height() as i64);
    let x_range = x.max(0)..(x + width as i64).min(image_width);
    let y_range = y.max(0)..(y + height as i64).min(image_height);
    for py in y_range {
        for px in x_range.clone() {
            blend_pixel(image, px as u32, py as u32, color, alpha);
        }
    }
}

fn blend_pixel(image: &mut RgbImage, x: u32, y: u32, color: Rgb<u8>, alpha: f32) {
    let pixel = image.get_pixel_mut(x, y);
    for channel in 0..3 {
        let old = pixel.0[channel] as f32;
        let new = color.0[channel] as f32;
        pixel.0[channel] = (old + alpha * (new - old)).round().clamp(0.0, 255.0) as u8;
    }
}

/// Draws the outline of a rectangle, `thickness` pixels wide, inside its bounds.
pub fn outline_rect(
    image: &mut RgbImage,
    x: i64,
    y: i64,
    width: u32,
    height: u32,
    thickness: u32,
    color: Rgb<u8>,
) {
    let t = thickness.min(width).min(height);
    fill_rect(image, x, y, width, t, color);
    fill_rect(image, x, y + (height - t) as i64, width, t, color);
    fill_rect(image, x, y, t, height, color);
    fill_rect(image, x + (width - t) as i64, y, t, height, color);
}

/// Draws `text` centred on (`center_x`, `center_y`) over a box of `background` at opacity
/// `alpha`, with `padding` pixels around the text, so the label reads on any picture.
#[allow(clippy::too_many_arguments)]
pub fn draw_label(
    image: &mut RgbImage,
    center_x: i64,
    center_y: i64,
    text: &str,
    scale: u32,
    foreground: Rgb<u8>,
    background: Rgb<u8>,
    alpha: f32,
    padding: u32,
) {
    let (width, height) = text_size(text, scale);
    let left = center_x - width as i64 / 2;
    let top = center_y - height as i64 / 2;
    shade_rect(
        image,
        left - padding as i64,
        top - padding as i64,
        width + 2 * padding,
        height + 2 * padding,
        background,
        alpha,
    );
    draw_text(image, left, top, text, scale, foreground);
}

/// Returns `image` enlarged `factor` times by nearest neighbour, so each pixel becomes a
/// `factor x factor` square.
pub fn upscale_nearest(image: &RgbImage, factor: u32) -> RgbImage {
    let factor = factor.max(1);
    imageops::resize(
        image,
        image.width() * factor,
        image.height() * factor,
        imageops::FilterType::Nearest,
    )
}

/// Converts one ImageNet-normalised CHW image, `[3, side, side]` values, back to RGB pixels.
/// Values that map outside [0, 255] (fused images with weights outside [0, 1], or images scaled
/// by Block Dropout) are clamped.
///
/// # Panics
/// When `values` does not hold `3 * side * side` numbers.
pub fn chw_to_rgb(values: &[f32], side: usize) -> RgbImage {
    let plane = side * side;
    assert_eq!(
        values.len(),
        3 * plane,
        "expected 3 x {side} x {side} values, got {}",
        values.len()
    );
    let mut image = RgbImage::new(side as u32, side as u32);
    for (index, pixel) in image.pixels_mut().enumerate() {
        for channel in 0..3 {
            let value =
                values[channel * plane + index] * IMAGENET_STD[channel] + IMAGENET_MEAN[channel];
            pixel.0[channel] = (value * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
    image
}

/// Returns the first pixel and the length of each of the 3 grid blocks along an axis of
/// `length` pixels, following the block rule of [`block_indices`].
pub fn block_spans(length: usize) -> [(usize, usize); 3] {
    let mut spans = [(0, 0); 3];
    for (pixel, block) in block_indices(length).into_iter().enumerate() {
        let span = &mut spans[block as usize];
        if span.1 == 0 {
            span.0 = pixel;
        }
        span.1 += 1;
    }
    spans
}

/// Draws the inner boundaries of the 3x3 grid of a `side x side` network input shown at
/// `zoom` times its size with its top-left corner at (`x`, `y`). Each boundary is a light line
/// with a dark line on either side, so it shows on light and dark pictures alike.
pub fn draw_block_boundaries(image: &mut RgbImage, x: i64, y: i64, side: usize, zoom: u32) {
    let shown = (side as u32 * zoom) as i64;
    let dark = Rgb([0, 0, 0]);
    let light = Rgb([255, 255, 255]);
    for (start, _) in block_spans(side).into_iter().skip(1) {
        let offset = (start as u32 * zoom) as i64;
        for (delta, color) in [(-2, dark), (-1, light), (0, light), (1, dark)] {
            fill_rect(image, x + offset + delta, y, 1, shown as u32, color);
            fill_rect(image, x, y + offset + delta, shown as u32, 1, color);
        }
    }
}

/// The shape of a scatter-plot marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    Circle,
    Square,
    /// Pointing up.
    Triangle,
    Diamond,
}

impl Marker {
    /// Returns whether the offset (`dx`, `dy`) from the centre lies inside the marker of
    /// half-size `radius` (image y grows downwards).
    fn contains(self, dx: f64, dy: f64, radius: f64) -> bool {
        match self {
            Marker::Circle => dx * dx + dy * dy <= radius * radius,
            Marker::Square => dx.abs() <= radius && dy.abs() <= radius,
            Marker::Diamond => dx.abs() + dy.abs() <= radius,
            Marker::Triangle => {
                // Apex at (0, -r), base from (-r, 0.7r) to (r, 0.7r).
                let top = -radius;
                let bottom = 0.7 * radius;
                if dy < top || dy > bottom {
                    return false;
                }
                let half_width = radius * (dy - top) / (bottom - top);
                dx.abs() <= half_width
            }
        }
    }
}

/// Draws a marker of half-size `radius` pixels centred on (`center_x`, `center_y`), filled
/// with `fill` and surrounded by an `outline` border of `border` pixels (0 for none).
#[allow(clippy::too_many_arguments)]
pub fn draw_marker(
    image: &mut RgbImage,
    center_x: f64,
    center_y: f64,
    marker: Marker,
    radius: f64,
    fill: Rgb<u8>,
    outline: Rgb<u8>,
    border: f64,
) {
    let reach = (radius + border).ceil() as i64 + 1;
    let (cx, cy) = (center_x.round() as i64, center_y.round() as i64);
    for py in cy - reach..=cy + reach {
        for px in cx - reach..=cx + reach {
            if px < 0 || py < 0 || px >= image.width() as i64 || py >= image.height() as i64 {
                continue;
            }
            let (dx, dy) = (px as f64 - center_x, py as f64 - center_y);
            if marker.contains(dx, dy, radius) {
                image.put_pixel(px as u32, py as u32, fill);
            } else if border > 0.0 && marker.contains(dx, dy, radius + border) {
                image.put_pixel(px as u32, py as u32, outline);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_spans_follow_ceil_rule() {
        assert_eq!(block_spans(84), [(0, 28), (28, 28), (56, 28)]);
        assert_eq!(block_spans(224), [(0, 75), (75, 75), (150, 74)]);
        assert_eq!(block_spans(10), [(0, 4), (4, 4), (8, 2)]);
    }

    #[test]
    fn chw_round_trips_through_normalisation() {
        let side = 2;
        let pixels: Vec<u8> = (0..side * side * 3).map(|i| (i * 20) as u8).collect();
        let mut values = vec![0.0; 3 * side * side];
        crate::data::write_normalized_chw(&pixels, side, false, &mut values);
        let image = chw_to_rgb(&values, side);
        assert_eq!(image.as_raw(), &pixels);
    }

    #[test]
    fn chw_out_of_range_is_clamped() {
        let values = [10.0, -10.0, 0.0];
        let image = chw_to_rgb(&values, 1);
        assert_eq!(image.get_pixel(0, 0)[0], 255);
        assert_eq!(image.get_pixel(0, 0)[1], 0);
        assert_eq!(image.get_pixel(0, 0)[2], (0.406f32 * 255.0).round() as u8);
    }

    #[test]
    fn boundaries_sit_on_block_edges() {
        let grey = Rgb([128, 128, 128]);
        let mut image = RgbImage::from_pixel(84 * 2, 84 * 2, grey);
        draw_block_boundaries(&mut image, 0, 0, 84, 2);
        // Blocks start at pixels 28 and 56, so at 56 and 112 after zooming by 2.
        for edge in [56u32, 112] {
            assert_eq!(image.get_pixel(edge, 10), &Rgb([255, 255, 255]));
            assert_eq!(image.get_pixel(edge - 1, 10), &Rgb([255, 255, 255]));
            assert_eq!(image.get_pixel(edge - 2, 10), &Rgb([0, 0, 0]));
            assert_eq!(image.get_pixel(edge + 1, 10), &Rgb([0, 0, 0]));
            assert_eq!(image.get_pixel(10, edge), &Rgb([255, 255, 255]));
        }
        assert_eq!(
            image.get_pixel(30, 30),
            &grey,
            "block interiors stay untouched"
        );
        assert_eq!(image.get_pixel(0, 10), &grey, "the outer edge gets no line");
    }

    #[test]
    fn markers_have_their_shapes() {
        let white = Rgb([255, 255, 255]);
        let red = Rgb([200, 0, 0]);
        let black = Rgb([0, 0, 0]);
        let mut image = RgbImage::from_pixel(40, 40, white);
        draw_marker(&mut image, 10.0, 10.0, Marker::Square, 6.0, red, black, 1.0);
        draw_marker(&mut image, 30.0, 30.0, Marker::Circle, 6.0, red, black, 0.0);
        // A square fills its corners, a circle does not.
        assert_eq!(image.get_pixel(14, 14), &red);
        assert_eq!(image.get_pixel(35, 35), &white);
        assert_eq!(image.get_pixel(30, 30), &red);
        assert_eq!(
            image.get_pixel(10, 17),
            &black,
            "the border surrounds the square"
        );
        let mut triangle = RgbImage::from_pixel(40, 40, white);
        draw_marker(
            &mut triangle,
            20.0,
            20.0,
            Marker::Triangle,
            10.0,
            red,
            black,
            0.0,
        );
        assert_eq!(triangle.get_pixel(20, 12), &red, "near the apex");
        assert_eq!(triangle.get_pixel(14, 12), &white, "beside the apex");
        assert_eq!(triangle.get_pixel(14, 26), &red, "near the base");
    }

    #[test]
    fn shaded_label_keeps_text_readable() {
        let mut image = RgbImage::from_pixel(60, 30, Rgb([250, 250, 250]));
        let ink = Rgb([255, 255, 255]);
        draw_label(&mut image, 30, 15, "0.47", 1, ink, Rgb([0, 0, 0]), 0.75, 3);
        // The box darkens the light background around the text.
        let corner = image.get_pixel(30 - 11 - 2, 15 - 3 - 2);
        assert!(corner[0] < 80, "{corner:?}");
        assert_eq!(image.get_pixel(0, 0), &Rgb([250, 250, 250]));
    }
}
