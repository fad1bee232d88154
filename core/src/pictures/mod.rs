//! Pictures for inspecting a model: a bitmap font, drawing primitives, the fusion sheet of the
//! `picture` command, t-SNE and the scatter plot of the `tsne` command.

pub mod canvas;
pub mod font;
pub mod fusion_sheet;
pub mod random;
pub mod scatter;
pub mod tsne;

pub use canvas::{Marker, chw_to_rgb};
pub use fusion_sheet::{FusionRow, render_fusion_sheet};
pub use random::SplitMix64;
pub use scatter::{CLASS_COLORS, KindStyle, Scatter, render_scatter};
pub use tsne::{TsneConfig, TsneError, TsneResult, tsne};
