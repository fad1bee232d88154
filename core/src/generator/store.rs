//! The folder of generated images: for every source photo, a folder
//! `<class folder>/<file name>.<unique id>/` holding `img_iter<N>_batch<k>.jpg`, the layout of
//! the original MetaIRNet code. The reader also accepts these folders directly under the root
//! (without class folders), as in the authors' released set.

use crate::hash::fnv64_hex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The metadata file that `generate` writes at the root of a store.
pub const METADATA_FILE: &str = "metairnet-generator.json";

/// Returns the folder name of the generated images of `relative` (the photo's path relative to
/// the dataset's image folder, for example `001.Black_footed_Albatross/x.jpg`): the file name,
/// a dot, and 8 hex digits derived from the relative path.
pub fn sample_folder_name(relative: &Path) -> String {
    let file = relative
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = &fnv64_hex(relative.to_string_lossy().as_bytes())[..8];
    format!("{file}.{id}")
}

/// Returns where the generated images of `relative` go in a store at `root`.
pub fn sample_folder(root: &Path, relative: &Path) -> PathBuf {
    let parent = relative.parent().unwrap_or(Path::new(""));
    root.join(parent).join(sample_folder_name(relative))
}

/// Returns the file name of generated image `index` after `iterations` fine-tuning iterations.
pub fn sample_file_name(iterations: usize, index: usize) -> String {
    format!("img_iter{}_batch{index}.jpg", iterations.saturating_sub(1))
}

/// An index of the generated images of a store.
#[derive(Debug, Default)]
pub struct GeneratedStore {
    /// Source file name -> (class folder or "" at the root, generated image paths sorted).
    by_file: HashMap<String, Vec<(String, Vec<PathBuf>)>>,
}

impl GeneratedStore {
    /// Indexes the store at `root`: every folder named `<file name>.<id>` directly under the
    /// root or under one class folder, with the JPEG files in it. Folders being written (names
    /// starting with a dot) are left out.
    ///
    /// # Errors
    /// When `root` cannot be read.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let mut store = GeneratedStore::default();
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if store.add_sample_folder(&entry.path(), "")? {
                continue;
            }
            for inner in std::fs::read_dir(entry.path())? {
                let inner = inner?;
                if inner.file_type()?.is_dir()
                    && !inner.file_name().to_string_lossy().starts_with('.')
                {
                    store.add_sample_folder(&inner.path(), &name)?;
                }
            }
        }
        Ok(store)
    }

    /// Adds `folder` when it contains generated JPEGs, and returns whether it did.
    fn add_sample_folder(&mut self, folder: &Path, class: &str) -> std::io::Result<bool> {
        let name = folder
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some((file, _id)) = name.rsplit_once('.') else {
            return Ok(false);
        };
        let mut images: Vec<PathBuf> = std::fs::read_dir(folder)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.extension().is_some_and(|ext| {
                    ext.eq_ignore_ascii_case("jpg") || ext.eq_ignore_ascii_case("jpeg")
                })
            })
            .collect();
        if images.is_empty() {
            return Ok(false);
        }
        images.sort();
        self.by_file
            .entry(file.to_string())
            .or_default()
            .push((class.to_string(), images));
        Ok(true)
    }

    /// Returns the generated images of the photo at `relative` (relative to the dataset's image
    /// folder). A folder under the same class folder comes first. The slice is empty when the
    /// photo has none.
    pub fn images_for(&self, relative: &Path) -> &[PathBuf] {
        let file = relative
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let class = relative
            .parent()
            .and_then(|parent| parent.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(candidates) = self.by_file.get(&file) else {
            return &[];
        };
        candidates
            .iter()
            .find(|(folder_class, _)| *folder_class == class)
            .or_else(|| candidates.first())
            .map(|(_, images)| images.as_slice())
            .unwrap_or(&[])
    }

    /// Returns the number of source photos with generated images.
    pub fn len(&self) -> usize {
        self.by_file.values().map(Vec::len).sum()
    }

    /// Returns whether the store has no generated images.
    pub fn is_empty(&self) -> bool {
        self.by_file.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"jpeg").unwrap();
    }

    #[test]
    fn reads_class_folders_and_released_layout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let ours = Path::new("001.Albatross/Albatross_0001.jpg");
        let folder = sample_folder(root, ours);
        for k in 0..3 {
            touch(&folder.join(sample_file_name(500, k)));
        }
        // The released layout: sample folders directly under the root, any id.
        touch(&root.join("Gull_0002.jpg.9f3a/img_iter499_batch0.jpg"));
        // A folder being written is ignored.
        touch(&root.join("001.Albatross/.Albatross_0003.jpg.0000.partial/img_iter499_batch0.jpg"));

        let store = GeneratedStore::open(root).unwrap();
        assert_eq!(store.len(), 2);
        let images = store.images_for(ours);
        assert_eq!(images.len(), 3);
        assert!(images[0].ends_with("img_iter499_batch0.jpg"));
        assert_eq!(
            store.images_for(Path::new("059.Gull/Gull_0002.jpg")).len(),
            1
        );
        assert!(
            store
                .images_for(Path::new("001.Albatross/Albatross_0003.jpg"))
                .is_empty()
        );
    }

    #[test]
    fn folder_names_are_stable_and_distinct() {
        let a = sample_folder_name(Path::new("001.A/x.jpg"));
        let b = sample_folder_name(Path::new("002.B/x.jpg"));
        assert!(a.starts_with("x.jpg."));
        assert_eq!(a.len(), "x.jpg.".len() + 8);
        assert_ne!(a, b);
        assert_eq!(a, sample_folder_name(Path::new("001.A/x.jpg")));
    }
}
