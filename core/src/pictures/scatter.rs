//! A scatter plot of 2-D points with a legend: colour by class, marker shape by kind.

use super::canvas::{Marker, draw_marker, outline_rect};
use super::font::{GLYPH_HEIGHT, draw_text};
use image::{Rgb, RgbImage};

/// Class colours, chosen to stay apart from each other and from the white background.
pub const CLASS_COLORS: [Rgb<u8>; 10] = [
    Rgb([31, 119, 180]),
    Rgb([230, 85, 13]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([127, 127, 127]),
    Rgb([188, 189, 34]),
    Rgb([23, 190, 207]),
];

/// The marker and name of one kind of point.
#[derive(Clone, Debug, PartialEq)]
pub struct KindStyle {
    pub name: String,
    pub marker: Marker,
    /// Half-size of the marker in pixels.
    pub radius: f64,
}

/// The points and labels of a plot.
#[derive(Clone, Debug)]
pub struct Scatter<'a> {
    pub points: &'a [[f64; 2]],
    /// Index into `class_names` for each point.
    pub classes: &'a [usize],
    /// Index into `kinds` for each point.
    pub kinds: &'a [usize],
    /// At most [`CLASS_COLORS`]`.len()` names.
    pub class_names: &'a [String],
    /// Kinds listed first are drawn last, on top of the others.
    pub kind_styles: &'a [KindStyle],
    pub title: &'a str,
}

const MARGIN: u32 = 12;
const TEXT_SCALE: u32 = 2;
const LINE_HEIGHT: u32 = GLYPH_HEIGHT * TEXT_SCALE + 10;
const INK: Rgb<u8> = Rgb([20, 20, 20]);

/// Draws the plot `width` pixels wide: the title, a square plot area with equal scales on both
/// axes, and below it a legend line per class and per kind.
///
/// # Panics
/// When the slices differ in length, a class or kind index is out of range, or there are more
/// classes than [`CLASS_COLORS`].
pub fn render_scatter(plot: &Scatter<'_>, width: u32) -> RgbImage {
    let count = plot.points.len();
    assert_eq!(plot.classes.len(), count, "one class per point");
    assert_eq!(plot.kinds.len(), count, "one kind per point");
    assert!(
        plot.class_names.len() <= CLASS_COLORS.len(),
        "at most {} classes can be told apart by colour",
        CLASS_COLORS.len()
    );
    assert!(plot.classes.iter().all(|&c| c < plot.class_names.len()));
    assert!(plot.kinds.iter().all(|&k| k < plot.kind_styles.len()));

    let title_height = LINE_HEIGHT;
    let area = width.saturating_sub(2 * MARGIN).max(10);
    let legend_lines = (plot.class_names.len() + plot.kind_styles.len()) as u32;
    let height = MARGIN + title_height + area + MARGIN + legend_lines * LINE_HEIGHT + MARGIN;
    let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));

    draw_text(
        &mut image,
        MARGIN as i64,
        MARGIN as i64,
        plot.title,
        TEXT_SCALE,
        INK,
    );
    let area_top = MARGIN + title_height;
    outline_rect(
        &mut image,
        MARGIN as i64,
        area_top as i64,
        area,
        area,
        1,
        Rgb([160; 3]),
    );

    let project = projection(plot.points, area as f64);
    for kind in (0..plot.kind_styles.len()).rev() {
        let style = &plot.kind_styles[kind];
        for (index, point) in plot.points.iter().enumerate() {
            if plot.kinds[index] != kind {
                continue;
            }
            let [x, y] = project(*point);
            draw_marker(
                &mut image,
                MARGIN as f64 + x,
                area_top as f64 + y,
                style.marker,
                style.radius,
                CLASS_COLORS[plot.classes[index]],
                Rgb([0, 0, 0]),
                1.0,
            );
        }
    }

    let mut line_top = area_top + area + MARGIN;
    let swatch = (GLYPH_HEIGHT * TEXT_SCALE) as f64 / 2.0;
    let text_left = MARGIN as i64 + 3 * swatch as i64 + 6;
    for (class, name) in plot.class_names.iter().enumerate() {
        let center_y = line_top as f64 + swatch;
        let color = CLASS_COLORS[class];
        draw_marker(
            &mut image,
            MARGIN as f64 + swatch,
            center_y,
            Marker::Square,
            swatch - 1.0,
            color,
            color,
            0.0,
        );
        draw_text(
            &mut image,
            text_left,
            line_top as i64,
            name,
            TEXT_SCALE,
            INK,
        );
        line_top += LINE_HEIGHT;
    }
    for style in plot.kind_styles {
        let center_y = line_top as f64 + swatch;
        draw_marker(
            &mut image,
            MARGIN as f64 + swatch,
            center_y,
            style.marker,
            style.radius,
            Rgb([200; 3]),
            Rgb([0, 0, 0]),
            1.0,
        );
        draw_text(
            &mut image,
            text_left,
            line_top as i64,
            &style.name,
            TEXT_SCALE,
            INK,
        );
        line_top += LINE_HEIGHT;
    }
    image
}

/// Returns a map from data coordinates to pixels of a square `area` wide, with equal scales on
/// both axes, y pointing up and 8% of the area left free on each side.
fn projection(points: &[[f64; 2]], area: f64) -> impl Fn([f64; 2]) -> [f64; 2] {
    let mut low = [f64::INFINITY; 2];
    let mut high = [f64::NEG_INFINITY; 2];
    for point in points {
        for axis in 0..2 {
            low[axis] = low[axis].min(point[axis]);
            high[axis] = high[axis].max(point[axis]);
        }
    }
    let span = (high[0] - low[0]).max(high[1] - low[1]);
    let span = if span.is_finite() && span > 0.0 {
        span
    } else {
        1.0
    };
    let center = [(low[0] + high[0]) / 2.0, (low[1] + high[1]) / 2.0];
    let scale = area * 0.84 / span;
    move |point| {
        [
            area / 2.0 + (point[0] - center[0]) * scale,
            area / 2.0 - (point[1] - center[1]) * scale,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn styles() -> Vec<KindStyle> {
        vec![
            KindStyle {
                name: "support".into(),
                marker: Marker::Square,
                radius: 8.0,
            },
            KindStyle {
                name: "query".into(),
                marker: Marker::Circle,
                radius: 4.0,
            },
        ]
    }

    #[test]
    fn points_land_where_projected() {
        let points = [[0.0, 0.0], [10.0, 10.0], [10.0, 0.0]];
        let names = vec!["A".to_string(), "B".to_string()];
        let kinds = styles();
        let plot = Scatter {
            points: &points,
            classes: &[0, 1, 1],
            kinds: &[1, 1, 0],
            class_names: &names,
            kind_styles: &kinds,
            title: "T-SNE",
        };
        let width = 300;
        let image = render_scatter(&plot, width);
        let area = (width - 2 * MARGIN) as f64;
        let top = (MARGIN + LINE_HEIGHT) as f64;
        let pixel = |x: f64, y: f64| *image.get_pixel(x as u32, y as u32);
        // (0, 0) is the lower-left point, (10, 10) the upper right; 8% margins.
        let low = MARGIN as f64 + area * 0.08;
        let high = MARGIN as f64 + area * 0.92;
        assert_eq!(pixel(low, top + area * 0.92), CLASS_COLORS[0]);
        assert_eq!(pixel(high, top + area * 0.08), CLASS_COLORS[1]);
        assert_eq!(pixel(high, top + area * 0.92), CLASS_COLORS[1]);
        let legend_lines = 4;
        assert_eq!(
            image.height(),
            MARGIN
                + LINE_HEIGHT
                + (width - 2 * MARGIN)
                + MARGIN
                + legend_lines * LINE_HEIGHT
                + MARGIN
        );
    }

    #[test]
    fn first_kind_is_drawn_on_top() {
        let points = [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]];
        let names = vec!["A".to_string(), "B".to_string()];
        let kinds = styles();
        let plot = Scatter {
            points: &points,
            classes: &[0, 1, 0],
            kinds: &[0, 1, 1],
            class_names: &names,
            kind_styles: &kinds,
            title: "",
        };
        let image = render_scatter(&plot, 200);
        let area = (200 - 2 * MARGIN) as f64;
        let x = MARGIN as f64 + area * 0.08;
        let y = (MARGIN + LINE_HEIGHT) as f64 + area * 0.92;
        assert_eq!(image.get_pixel(x as u32, y as u32), &CLASS_COLORS[0]);
    }

    #[test]
    fn single_point_is_centred() {
        let names = vec!["A".to_string()];
        let kinds = styles();
        let plot = Scatter {
            points: &[[3.0, -2.0]],
            classes: &[0],
            kinds: &[1],
            class_names: &names,
            kind_styles: &kinds,
            title: "",
        };
        let image = render_scatter(&plot, 100);
        let center_x = MARGIN + (100 - 2 * MARGIN) / 2;
        let center_y = MARGIN + LINE_HEIGHT + (100 - 2 * MARGIN) / 2;
        assert_eq!(image.get_pixel(center_x, center_y), &CLASS_COLORS[0]);
    }
}
