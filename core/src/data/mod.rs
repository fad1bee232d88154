//! Reading bird photos from disk: the CUB-200-2011 layout, the few-shot class split, the
//! preprocessing that turns a photo into a network input, and the store of decoded images that
//! training and evaluation sample from.

mod cub;
#[cfg(feature = "train")]
mod generated;
mod preprocess;
mod store;

pub use cub::{ClassEntry, DataError, Dataset, Split, display_class_name};
#[cfg(feature = "train")]
pub use generated::{GeneratedImages, MissingGenerated};
pub use preprocess::{
    IMAGENET_MEAN, IMAGENET_STD, ImageSize, PreprocessError, crop_for_model, decode_image,
    decode_image_within,
    load_photo, resize_and_center_crop, write_normalized_chw,
};
#[cfg(feature = "train")]
pub use store::write_atomically;
pub use store::{ImageStore, LoadOptions, LoadReport, SkippedImage};
