//! The picture of image fusion: one row per support photo with the original, the generated
//! image, the fused image with its 3x3 weights written on it, and a Block Dropout version of
//! the original.

use super::canvas::{block_spans, draw_block_boundaries, draw_label, fill_rect, upscale_nearest};
use super::font::{GLYPH_HEIGHT, draw_text, text_size};
use image::{Rgb, RgbImage, imageops};

/// The images of one support photo, each `side x side` pixels at network resolution.
#[derive(Clone, Debug)]
pub struct FusionRow {
    pub original: RgbImage,
    pub generated: RgbImage,
    /// The fused image and its weights, row-major over the grid, or `None` for a model without
    /// a fusion network.
    pub fused: Option<(RgbImage, [f32; 9])>,
    pub block_dropout: RgbImage,
}

/// Space around and between the images, in pixels.
const MARGIN: u32 = 10;
const GAP: u32 = 8;
/// Scale of the column titles and row numbers (font pixels per image pixel).
const TITLE_SCALE: u32 = 2;
const INK: Rgb<u8> = Rgb([20, 20, 20]);
const PAPER: Rgb<u8> = Rgb([255, 255, 255]);

/// Returns the column titles of a sheet, with or without the fused column.
pub fn column_titles(with_fused: bool) -> Vec<&'static str> {
    if with_fused {
        vec!["ORIGINAL", "GENERATED", "FUSED", "BLOCK DROPOUT"]
    } else {
        vec!["ORIGINAL", "GENERATED", "BLOCK DROPOUT"]
    }
}

/// Formats a fusion weight with 2 decimals, writing -0.00 as 0.00.
pub fn format_weight(weight: f32) -> String {
    let text = format!("{weight:.2}");
    if text == "-0.00" {
        "0.00".to_string()
    } else {
        text
    }
}

/// Draws the sheet: a title row, then one row per entry of `rows` numbered from 1, each image
/// enlarged `zoom` times by nearest neighbour. The fused column appears when any row has a
/// fused image; rows without one leave its cell blank.
///
/// # Panics
/// When `rows` is empty or its images differ in size or are not square.
pub fn render_fusion_sheet(rows: &[FusionRow], zoom: u32) -> RgbImage {
    assert!(!rows.is_empty(), "a fusion sheet needs at least one row");
    let side = rows[0].original.width();
    for row in rows {
        let mut images = vec![&row.original, &row.generated, &row.block_dropout];
        images.extend(row.fused.as_ref().map(|(image, _)| image));
        for image in images {
            assert_eq!(
                image.dimensions(),
                (side, side),
                "every image must be {side}x{side}"
            );
        }
    }
    let zoom = zoom.max(1);
    let cell = side * zoom;
    let with_fused = rows.iter().any(|row| row.fused.is_some());
    let titles = column_titles(with_fused);
    let columns = titles.len() as u32;

    let number_width = text_size(&rows.len().to_string(), TITLE_SCALE).0;
    let title_height = GLYPH_HEIGHT * TITLE_SCALE;
    let left = MARGIN + number_width + GAP;
    let top = MARGIN + title_height + GAP;
    let width = left + columns * cell + (columns - 1) * GAP + MARGIN;
    let height = top + rows.len() as u32 * cell + (rows.len() as u32 - 1) * GAP + MARGIN;
    let mut sheet = RgbImage::from_pixel(width, height, PAPER);

    for (column, title) in titles.iter().enumerate() {
        let (title_width, _) = text_size(title, TITLE_SCALE);
        let x = left + column as u32 * (cell + GAP) + cell.saturating_sub(title_width) / 2;
        draw_text(&mut sheet, x as i64, MARGIN as i64, title, TITLE_SCALE, INK);
    }

    for (index, row) in rows.iter().enumerate() {
        let y = top + index as u32 * (cell + GAP);
        let number = (index + 1).to_string();
        let number_y = y + cell.saturating_sub(title_height) / 2;
        draw_text(
            &mut sheet,
            MARGIN as i64,
            number_y as i64,
            &number,
            TITLE_SCALE,
            INK,
        );

        let mut cells: Vec<Option<&RgbImage>> = vec![Some(&row.original), Some(&row.generated)];
        if with_fused {
            cells.push(row.fused.as_ref().map(|(image, _)| image));
        }
        cells.push(Some(&row.block_dropout));
        for (column, image) in cells.into_iter().enumerate() {
            let x = left + column as u32 * (cell + GAP);
            match image {
                Some(image) => {
                    let enlarged = upscale_nearest(image, zoom);
                    imageops::overlay(&mut sheet, &enlarged, x as i64, y as i64);
                }
                None => fill_rect(&mut sheet, x as i64, y as i64, cell, cell, Rgb([235; 3])),
            }
        }
        if let Some((_, weights)) = &row.fused {
            let x = left + 2 * (cell + GAP);
            draw_weights(&mut sheet, x as i64, y as i64, side as usize, zoom, weights);
        }
    }
    sheet
}

/// Draws the 3x3 block boundaries and each block's weight, centred in the block on a dark box,
/// over an image of `side` pixels shown `zoom` times larger at (`x`, `y`).
pub fn draw_weights(
    image: &mut RgbImage,
    x: i64,
    y: i64,
    side: usize,
    zoom: u32,
    weights: &[f32; 9],
) {
    const PADDING: u32 = 3;
    draw_block_boundaries(image, x, y, side, zoom);
    let spans = block_spans(side);
    let narrowest = spans.iter().map(|(_, length)| *length).min().unwrap_or(0) as u32 * zoom;
    let labels: Vec<String> = weights.iter().map(|w| format_weight(*w)).collect();
    let widest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1);
    // The largest scale at which the widest label and its box fit inside the narrowest block.
    let scale = (1..=3)
        .rev()
        .find(|&scale| text_size(&"0".repeat(widest), scale).0 + 2 * PADDING + 4 <= narrowest)
        .unwrap_or(1);
    for (block, label) in labels.iter().enumerate() {
        let (row_start, row_length) = spans[block / 3];
        let (column_start, column_length) = spans[block % 3];
        let center_x = x + ((2 * column_start + column_length) as u32 * zoom / 2) as i64;
        let center_y = y + ((2 * row_start + row_length) as u32 * zoom / 2) as i64;
        draw_label(
            image,
            center_x,
            center_y,
            label,
            scale,
            Rgb([255, 255, 255]),
            Rgb([0, 0, 0]),
            0.7,
            PADDING,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(side: u32, with_fused: bool) -> FusionRow {
        let solid = |value: u8| RgbImage::from_pixel(side, side, Rgb([value; 3]));
        FusionRow {
            original: solid(200),
            generated: solid(100),
            fused: with_fused.then(|| {
                let weights = [0.47, -1.2, 0.0, 1.0, 0.5, 0.25, -0.001, 2.0, 0.75];
                (solid(150), weights)
            }),
            block_dropout: solid(50),
        }
    }

    #[test]
    fn sheet_size_follows_rows_columns_and_zoom() {
        let sheet = render_fusion_sheet(&[row(84, true), row(84, true)], 3);
        let cell = 84 * 3;
        let left = MARGIN + text_size("2", TITLE_SCALE).0 + GAP;
        let top = MARGIN + GLYPH_HEIGHT * TITLE_SCALE + GAP;
        assert_eq!(sheet.width(), left + 4 * cell + 3 * GAP + MARGIN);
        assert_eq!(sheet.height(), top + 2 * cell + GAP + MARGIN);
        let without = render_fusion_sheet(&[row(84, false)], 3);
        assert_eq!(without.width(), left + 3 * cell + 2 * GAP + MARGIN);
    }

    #[test]
    fn cells_hold_the_enlarged_images() {
        let sheet = render_fusion_sheet(&[row(84, true)], 2);
        let cell = 84 * 2;
        let left = MARGIN + text_size("1", TITLE_SCALE).0 + GAP;
        let top = MARGIN + GLYPH_HEIGHT * TITLE_SCALE + GAP;
        // Sample a corner of each cell, away from the weight labels and block lines.
        let expected = [200u8, 100, 150, 50];
        for (column, value) in expected.iter().enumerate() {
            let x = left + column as u32 * (cell + GAP) + 3;
            assert_eq!(
                sheet.get_pixel(x, top + 3),
                &Rgb([*value; 3]),
                "column {column}"
            );
        }
    }

    #[test]
    fn fused_cell_shows_boundaries_and_labels() {
        let side = 84;
        let zoom = 3;
        let mut image = RgbImage::from_pixel(side * zoom, side * zoom, Rgb([150; 3]));
        let weights = [0.47, -1.2, 0.0, 1.0, 0.5, 0.25, -0.001, 2.0, 0.75];
        draw_weights(&mut image, 0, 0, side as usize, zoom, &weights);
        // The boundary between block columns 0 and 1 sits at pixel 28 * 3 = 84.
        assert_eq!(image.get_pixel(84, 5), &Rgb([255, 255, 255]));
        assert_eq!(image.get_pixel(85, 5), &Rgb([0, 0, 0]));
        // Every block centre gets a darkened label box with white text in it.
        for block in 0..9u32 {
            let center_x = (block % 3) * 84 + 42;
            let center_y = (block / 3) * 84 + 42;
            let (width, height) = text_size(&format_weight(weights[block as usize]), 2);
            let mut white = 0;
            let mut dark = 0;
            for y in center_y - height / 2 - 2..center_y + height / 2 + 2 {
                for x in center_x - width / 2 - 2..center_x + width / 2 + 2 {
                    match image.get_pixel(x, y).0[0] {
                        255 => white += 1,
                        value if value < 60 => dark += 1,
                        _ => {}
                    }
                }
            }
            assert!(white > 20, "block {block}: {white} text pixels");
            assert!(dark > white, "block {block}: {dark} box pixels");
        }
        assert_eq!(
            image.get_pixel(5, 5),
            &Rgb([150; 3]),
            "block corners stay clear"
        );
    }

    #[test]
    fn weights_have_two_decimals() {
        assert_eq!(format_weight(0.4712), "0.47");
        assert_eq!(format_weight(-1.2), "-1.20");
        assert_eq!(format_weight(-0.001), "0.00");
        assert_eq!(format_weight(12.346), "12.35");
    }
}
