//! A 5x7 bitmap font for labels on pictures: digits, upper-case letters and a few signs.
//!
//! Lower-case letters are drawn as upper-case ones, and any other character as `?`. Text is
//! scaled by an integer factor, each font pixel becoming a `scale x scale` square, so labels stay
//! sharp at any size.

use image::{Rgb, RgbImage};

/// Glyph width in font pixels.
pub const GLYPH_WIDTH: u32 = 5;
/// Glyph height in font pixels.
pub const GLYPH_HEIGHT: u32 = 7;
/// Horizontal distance between the left edges of two neighbouring glyphs, in font pixels.
pub const GLYPH_ADVANCE: u32 = GLYPH_WIDTH + 1;

/// Returns the rows of the glyph of `character`, top first; `#` marks a lit pixel.
pub fn glyph(character: char) -> [&'static str; 7] {
    match character.to_ascii_uppercase() {
        '0' => [
            " ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### ",
        ],
        '1' => [
            "  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
        '2' => [
            " ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####",
        ],
        '3' => [
            "#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### ",
        ],
        '4' => [
            "   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # ",
        ],
        '5' => [
            "#####", "#    ", "#### ", "    #", "    #", "#   #", " ### ",
        ],
        '6' => [
            "  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### ",
        ],
        '7' => [
            "#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   ",
        ],
        '8' => [
            " ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### ",
        ],
        '9' => [
            " ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  ",
        ],
        'A' => [
            " ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #",
        ],
        'B' => [
            "#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### ",
        ],
        'C' => [
            " ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### ",
        ],
        'D' => [
            "#### ", "#   #", "#   #", "#   #", "#   #", "#   #", "#### ",
        ],
        'E' => [
            "#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####",
        ],
        'F' => [
            "#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    ",
        ],
        'G' => [
            " ### ", "#   #", "#    ", "# ###", "#   #", "#   #", " ####",
        ],
        'H' => [
            "#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #",
        ],
        'I' => [
            " ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
        'J' => [
            "  ###", "   # ", "   # ", "   # ", "   # ", "#  # ", " ##  ",
        ],
        'K' => [
            "#   #", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "#   #",
        ],
        'L' => [
            "#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####",
        ],
        'M' => [
            "#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #",
        ],
        'N' => [
            "#   #", "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #",
        ],
        'O' => [
            " ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### ",
        ],
        'P' => [
            "#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    ",
        ],
        'Q' => [
            " ### ", "#   #", "#   #", "#   #", "# # #", "#  # ", " ## #",
        ],
        'R' => [
            "#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #",
        ],
        'S' => [
            " ####", "#    ", "#    ", " ### ", "    #", "    #", "#### ",
        ],
        'T' => [
            "#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ",
        ],
        'U' => [
            "#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### ",
        ],
        'V' => [
            "#   #", "#   #", "#   #", "#   #", "#   #", " # # ", "  #  ",
        ],
        'W' => [
            "#   #", "#   #", "#   #", "# # #", "# # #", "# # #", " # # ",
        ],
        'X' => [
            "#   #", "#   #", " # # ", "  #  ", " # # ", "#   #", "#   #",
        ],
        'Y' => [
            "#   #", "#   #", " # # ", "  #  ", "  #  ", "  #  ", "  #  ",
        ],
        'Z' => [
            "#####", "    #", "   # ", "  #  ", " #   ", "#    ", "#####",
        ],
        ' ' => ["     "; 7],
        '.' => [
            "     ", "     ", "     ", "     ", "     ", " ##  ", " ##  ",
        ],
        ',' => [
            "     ", "     ", "     ", "     ", " ##  ", "  #  ", " #   ",
        ],
        '-' => [
            "     ", "     ", "     ", "#####", "     ", "     ", "     ",
        ],
        '+' => [
            "     ", "  #  ", "  #  ", "#####", "  #  ", "  #  ", "     ",
        ],
        '=' => [
            "     ", "     ", "#####", "     ", "#####", "     ", "     ",
        ],
        '_' => [
            "     ", "     ", "     ", "     ", "     ", "     ", "#####",
        ],
        ':' => [
            "     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     ",
        ],
        '/' => [
            "     ", "    #", "   # ", "  #  ", " #   ", "#    ", "     ",
        ],
        '(' => [
            "   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # ",
        ],
        ')' => [
            " #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   ",
        ],
        '#' => [
            " # # ", " # # ", "#####", " # # ", "#####", " # # ", " # # ",
        ],
        '%' => [
            "##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##",
        ],
        _ => [
            " ### ", "#   #", "    #", "   # ", "  #  ", "     ", "  #  ",
        ],
    }
}

/// Returns the width and height in image pixels of `text` drawn at `scale`, without a gap after
/// the last glyph. Empty text is 0 pixels wide.
pub fn text_size(text: &str, scale: u32) -> (u32, u32) {
    let count = text.chars().count() as u32;
    let width = if count == 0 {
        0
    } else {
        (count * GLYPH_ADVANCE - 1) * scale
    };
    (width, GLYPH_HEIGHT * scale)
}

/// Draws `text` with its top-left corner at (`x`, `y`), each font pixel a `scale x scale`
/// square of `color`. Pixels outside the image are skipped, so text may run off an edge.
pub fn draw_text(image: &mut RgbImage, x: i64, y: i64, text: &str, scale: u32, color: Rgb<u8>) {
    let scale = scale.max(1) as i64;
    for (index, character) in text.chars().enumerate() {
        let left = x + index as i64 * GLYPH_ADVANCE as i64 * scale;
        for (row, bits) in glyph(character).iter().enumerate() {
            for (column, bit) in bits.bytes().enumerate() {
                if bit != b'#' {
                    continue;
                }
                let px = left + column as i64 * scale;
                let py = y + row as i64 * scale;
                super::canvas::fill_rect(image, px, py, scale as u32, scale as u32, color);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INK: Rgb<u8> = Rgb([255, 255, 255]);

    /// Reads back which font pixels of a glyph drawn at `scale` are lit, sampling the centre of
    /// each `scale x scale` square.
    fn lit_pixels(image: &RgbImage, left: u32, top: u32, scale: u32) -> Vec<String> {
        (0..GLYPH_HEIGHT)
            .map(|row| {
                (0..GLYPH_WIDTH)
                    .map(|column| {
                        let x = left + column * scale + scale / 2;
                        let y = top + row * scale + scale / 2;
                        if image.get_pixel(x, y) == &INK {
                            '#'
                        } else {
                            ' '
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn digit_renders_expected_pixels() {
        let mut image = RgbImage::new(20, 30);
        draw_text(&mut image, 2, 3, "7", 3, INK);
        let expected = [
            "#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   ",
        ];
        assert_eq!(lit_pixels(&image, 2, 3, 3), expected);
        let lit = image.pixels().filter(|p| **p == INK).count();
        let font_pixels: usize = expected.iter().map(|r| r.matches('#').count()).sum();
        assert_eq!(lit, font_pixels * 9, "each font pixel is a 3x3 square");
    }

    #[test]
    fn glyphs_are_five_by_seven() {
        let characters = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ .,-+=_:/()#%?";
        for character in characters.chars() {
            for row in glyph(character) {
                assert_eq!(row.len(), GLYPH_WIDTH as usize, "{character:?}: {row:?}");
            }
        }
    }

    #[test]
    fn digits_and_letters_are_distinct() {
        let characters: Vec<char> = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.-".chars().collect();
        for (i, a) in characters.iter().enumerate() {
            for b in &characters[i + 1..] {
                assert_ne!(glyph(*a), glyph(*b), "{a} and {b} look the same");
            }
        }
    }

    #[test]
    fn lower_case_and_unknown_characters() {
        assert_eq!(glyph('a'), glyph('A'));
        assert_eq!(glyph('é'), glyph('?'));
    }

    #[test]
    fn text_size_counts_glyphs_and_gaps() {
        assert_eq!(text_size("", 2), (0, 14));
        assert_eq!(text_size("0.47", 2), ((4 * 6 - 1) * 2, 14));
    }

    #[test]
    fn text_off_the_edge_is_clipped() {
        let mut image = RgbImage::new(8, 8);
        // The bar of '-' is font row 3, columns 0 to 4: image rows 6 and 7, columns -6 to 3.
        draw_text(&mut image, -6, 0, "-", 2, INK);
        draw_text(&mut image, 100, 100, "-1.20", 4, INK);
        assert_eq!(image.get_pixel(0, 6), &INK);
        assert_eq!(image.get_pixel(3, 7), &INK);
        assert_ne!(image.get_pixel(4, 6), &INK);
        assert_ne!(image.get_pixel(0, 5), &INK);
    }
}
