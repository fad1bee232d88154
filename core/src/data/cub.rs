//! The CUB-200-2011 folder layout and the standard few-shot class split.
//!
//! A dataset folder is either `CUB_200_2011` itself (holding `images/` and the metadata files),
//! its parent, or any folder of class subfolders. When `classes.txt`, `images.txt` and
//! `image_class_labels.txt` are present, they define the classes and images. Without them,
//! every subfolder of `images/` (or of the folder itself) that contains image files is a class.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Errors raised while reading a dataset folder or its images.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "dataset folder {0} not found; give the path of CUB_200_2011 (the folder that contains images/ and classes.txt), its parent, or a folder with one subfolder per class"
    )]
    MissingRoot(PathBuf),
    #[error("{0} is a file, not a folder; give the dataset folder that contains it")]
    NotAFolder(PathBuf),
    #[error(
        "{dir} has {found} but no {missing}; restore {missing}, or remove the CUB metadata files to treat the subfolders of images/ as classes"
    )]
    IncompleteMetadata {
        dir: PathBuf,
        found: String,
        missing: String,
    },
    #[error(
        "no class folders found in {0}; expected CUB_200_2011/images/<NNN.Class_Name>/*.jpg or a folder with one subfolder per class"
    )]
    NoClasses(PathBuf),
    #[error("failed to read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("failed to write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Metadata {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "image {path} does not exist; restore the file, or pass --skip-bad-images to leave it out"
    )]
    MissingImage { path: PathBuf },
    #[error(
        "image {path} could not be used: {reason}; replace or delete the file, or pass --skip-bad-images to leave it out"
    )]
    BadImage { path: PathBuf, reason: String },
    #[error("{count} images could not be used; the first: {first}")]
    ManyBadImages { count: usize, first: Box<DataError> },
    #[error(
        "the {split} split has {found} classes, fewer than the {needed} that a {needed}-way episode needs; lower --n-way or use a dataset with more classes"
    )]
    TooFewClasses {
        split: Split,
        found: usize,
        needed: usize,
    },
    #[error(
        "class {class} has {count} images but n_shot + n_query = {needed}; lower --n-shot or --n-query, add images to that class, or remove its folder"
    )]
    TooFewImages {
        class: String,
        count: usize,
        needed: usize,
    },
    #[error("image cache {path} is unusable ({reason}); delete it and run again")]
    Cache { path: PathBuf, reason: String },
    #[cfg(feature = "train")]
    #[error(transparent)]
    Generated(#[from] super::generated::MissingGenerated),
}

/// A part of the dataset selected by class, following the standard few-shot split. With the
/// class folders sorted by name and indexed from 0, index `i` is a base class when `i % 2 == 0`,
/// a validation class when `i % 4 == 1` and a novel class when `i % 4 == 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Classes for training (half of them).
    Base,
    /// Classes for choosing the best epoch (a quarter).
    Val,
    /// Classes for the final test (a quarter).
    Novel,
    /// Every class.
    All,
}

impl Split {
    /// Returns whether the class at `index` of the sorted class list belongs to this split.
    pub fn contains(self, index: usize) -> bool {
        match self {
            Split::Base => index % 2 == 0,
            Split::Val => index % 4 == 1,
            Split::Novel => index % 4 == 3,
            Split::All => true,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Split::Base => "base",
            Split::Val => "val",
            Split::Novel => "novel",
            Split::All => "all",
        };
        f.write_str(name)
    }
}

impl FromStr for Split {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "base" | "train" => Ok(Split::Base),
            "val" | "validation" => Ok(Split::Val),
            "novel" | "test" => Ok(Split::Novel),
            "all" => Ok(Split::All),
            _ => Err(format!(
                "invalid split '{text}'; expected base, val, novel or all"
            )),
        }
    }
}

/// One class: its folder name (for example `017.Cardinal`) and its image files.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassEntry {
    pub name: String,
    pub images: Vec<PathBuf>,
}

impl ClassEntry {
    /// Returns the class name without the numeric prefix and with spaces, e.g. `Cardinal`.
    pub fn display_name(&self) -> String {
        display_class_name(&self.name)
    }
}

/// Turns a folder name such as `017.Cardinal` or `001.Black_footed_Albatross` into
/// `Cardinal` or `Black footed Albatross`.
pub fn display_class_name(folder: &str) -> String {
    let without_prefix = match folder.split_once('.') {
        Some((prefix, rest)) if prefix.chars().all(|c| c.is_ascii_digit()) => rest,
        _ => folder,
    };
    without_prefix.replace('_', " ")
}

/// The classes of a dataset folder, sorted by folder name.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The folder the image paths are relative to (`CUB_200_2011/images` for CUB).
    pub root: PathBuf,
    pub classes: Vec<ClassEntry>,
}

const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"];

impl Dataset {
    /// Reads the class list and image list of a dataset folder.
    ///
    /// # Errors
    /// [`DataError::MissingRoot`] when `dir` does not exist, [`DataError::NoClasses`] when it
    /// contains no class, [`DataError::Metadata`] for a malformed metadata file and
    /// [`DataError::Io`] when a folder cannot be listed. Missing or unreadable image files are
    /// found later, when the images are decoded.
    pub fn open(dir: &Path) -> Result<Dataset, DataError> {
        if dir.is_file() {
            return Err(DataError::NotAFolder(dir.to_path_buf()));
        }
        if !dir.is_dir() {
            return Err(DataError::MissingRoot(dir.to_path_buf()));
        }
        let cub_dir = if dir.join("CUB_200_2011").is_dir() {
            dir.join("CUB_200_2011")
        } else {
            dir.to_path_buf()
        };

        let metadata = ["classes.txt", "images.txt", "image_class_labels.txt"];
        let (present, absent): (Vec<&str>, Vec<&str>) = metadata
            .iter()
            .partition(|name| cub_dir.join(name).is_file());
        let images_dir = cub_dir.join("images");
        if present.is_empty() {
            let class_root = if images_dir.is_dir() {
                images_dir
            } else {
                cub_dir
            };
            return Self::from_class_folders(&class_root);
        }
        if !absent.is_empty() || !images_dir.is_dir() {
            let mut missing: Vec<&str> = absent.clone();
            if !images_dir.is_dir() {
                missing.push("images/ folder");
            }
            return Err(DataError::IncompleteMetadata {
                dir: cub_dir,
                found: present.join(", "),
                missing: missing.join(", "),
            });
        }
        Self::from_metadata(&cub_dir, &images_dir)
    }

    /// Reads `classes.txt`, `images.txt` and `image_class_labels.txt`.
    fn from_metadata(cub_dir: &Path, images_dir: &Path) -> Result<Dataset, DataError> {
        let classes_path = cub_dir.join("classes.txt");
        let class_names = read_id_value_file(&classes_path)?;
        let images_path = cub_dir.join("images.txt");
        let image_files = read_id_value_file(&images_path)?;
        let labels_path = cub_dir.join("image_class_labels.txt");
        let labels = read_id_value_file(&labels_path)?;

        let mut by_class: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
        for (line, (image_id, relative)) in image_files.iter().enumerate() {
            let Some(class_id) = labels.get(image_id) else {
                return Err(DataError::Metadata {
                    path: labels_path,
                    line: line + 1,
                    message: format!("no class label for image id {image_id} ({relative})"),
                });
            };
            let class_id: u64 = class_id.parse().map_err(|_| DataError::Metadata {
                path: labels_path.clone(),
                line: line + 1,
                message: format!("class id '{class_id}' of image {image_id} is not a number"),
            })?;
            if !class_names.contains_key(&class_id) {
                return Err(DataError::Metadata {
                    path: labels_path,
                    line: line + 1,
                    message: format!("class id {class_id} is not in classes.txt"),
                });
            }
            by_class
                .entry(class_id)
                .or_default()
                .push(images_dir.join(relative));
        }

        let mut classes: Vec<ClassEntry> = class_names
            .into_iter()
            .map(|(id, name)| {
                // Sorted by path, as in class-folder mode, so both modes give the same episodes.
                let mut images = by_class.remove(&id).unwrap_or_default();
                images.sort();
                ClassEntry { name, images }
            })
            .collect();
        classes.sort_by(|a, b| a.name.cmp(&b.name));
        if classes.is_empty() {
            return Err(DataError::NoClasses(cub_dir.to_path_buf()));
        }
        Ok(Dataset {
            root: images_dir.to_path_buf(),
            classes,
        })
    }

    /// Treats every subfolder of `dir` as a class and every image file in it as a sample.
    fn from_class_folders(dir: &Path) -> Result<Dataset, DataError> {
        let mut classes = Vec::new();
        for entry in list_dir(dir)? {
            if !entry.is_dir() {
                continue;
            }
            let name = entry
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            let mut images: Vec<PathBuf> = list_dir(&entry)?
                .into_iter()
                .filter(|path| path.is_file() && has_image_extension(path))
                .collect();
            images.sort();
            if images.is_empty() {
                // A folder without photos is not a class; counting it would shift the split.
                log::warn!("ignoring {}: it contains no image files", entry.display());
                continue;
            }
            classes.push(ClassEntry { name, images });
        }
        classes.sort_by(|a, b| a.name.cmp(&b.name));
        if classes.is_empty() {
            return Err(DataError::NoClasses(dir.to_path_buf()));
        }
        Ok(Dataset {
            root: dir.to_path_buf(),
            classes,
        })
    }

    /// Returns the classes of `split`, keeping their order.
    pub fn split(&self, split: Split) -> Dataset {
        let classes = self
            .classes
            .iter()
            .enumerate()
            .filter(|(index, _)| split.contains(*index))
            .map(|(_, class)| class.clone())
            .collect();
        Dataset {
            root: self.root.clone(),
            classes,
        }
    }

    /// Returns the same classes with only the photos that CUB's `train_test_split.txt` marks as
    /// training photos, or `None` for a folder without CUB metadata (one subfolder per class).
    ///
    /// # Errors
    /// A missing or malformed `images.txt` or `train_test_split.txt`.
    pub fn official_training_photos(&self) -> Result<Option<Dataset>, DataError> {
        let Some(cub_dir) = self
            .root
            .parent()
            .filter(|dir| dir.join("images.txt").is_file())
        else {
            return Ok(None);
        };
        let images = read_id_value_file(&cub_dir.join("images.txt"))?;
        let flags = read_id_value_file(&cub_dir.join("train_test_split.txt"))?;
        let training: HashSet<PathBuf> = images
            .iter()
            .filter(|(id, _)| flags.get(id).map(String::as_str) == Some("1"))
            .map(|(_, relative)| self.root.join(relative))
            .collect();
        let classes = self
            .classes
            .iter()
            .map(|class| ClassEntry {
                name: class.name.clone(),
                images: class
                    .images
                    .iter()
                    .filter(|path| training.contains(*path))
                    .cloned()
                    .collect(),
            })
            .collect();
        Ok(Some(Dataset {
            root: self.root.clone(),
            classes,
        }))
    }

    /// Returns the number of images over all classes.
    pub fn num_images(&self) -> usize {
        self.classes.iter().map(|c| c.images.len()).sum()
    }
}

/// Returns whether the file name ends in a known image extension (case-insensitive).
pub(crate) fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io_error = |error| DataError::Io {
        path: dir.to_path_buf(),
        error,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        paths.push(entry.map_err(io_error)?.path());
    }
    Ok(paths)
}

/// Reads a CUB metadata file of `<id> <value>` lines into a map ordered by id.
fn read_id_value_file(path: &Path) -> Result<BTreeMap<u64, String>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let mut entries = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let malformed = |message: String| DataError::Metadata {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let (id, value) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| malformed(format!("expected '<id> <value>', found '{line}'")))?;
        let id: u64 = id
            .parse()
            .map_err(|_| malformed(format!("id '{id}' is not a number")))?;
        if entries.insert(id, value.trim().to_string()).is_some() {
            return Err(malformed(format!("id {id} appears twice")));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn split_follows_index_rule() {
        let base: Vec<usize> = (0..8).filter(|&i| Split::Base.contains(i)).collect();
        let val: Vec<usize> = (0..8).filter(|&i| Split::Val.contains(i)).collect();
        let novel: Vec<usize> = (0..8).filter(|&i| Split::Novel.contains(i)).collect();
        assert_eq!(base, vec![0, 2, 4, 6]);
        assert_eq!(val, vec![1, 5]);
        assert_eq!(novel, vec![3, 7]);
    }

    #[test]
    fn split_parses_aliases() {
        assert_eq!("test".parse::<Split>().unwrap(), Split::Novel);
        assert_eq!("Validation".parse::<Split>().unwrap(), Split::Val);
        assert!("holdout".parse::<Split>().unwrap_err().contains("holdout"));
    }

    #[test]
    fn metadata_layout_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let cub = dir.path().join("CUB_200_2011");
        write(&cub.join("classes.txt"), "1 002.B_bird\n2 001.A_bird\n");
        write(
            &cub.join("images.txt"),
            "1 002.B_bird/b1.jpg\n2 001.A_bird/a1.jpg\n3 001.A_bird/a2.jpg\n",
        );
        write(&cub.join("image_class_labels.txt"), "1 1\n2 2\n3 2\n");
        std::fs::create_dir_all(cub.join("images")).unwrap();

        let dataset = Dataset::open(dir.path()).unwrap();
        assert_eq!(dataset.classes.len(), 2);
        assert_eq!(dataset.classes[0].name, "001.A_bird");
        assert_eq!(dataset.classes[0].images.len(), 2);
        assert_eq!(
            dataset.classes[1].images,
            vec![cub.join("images/002.B_bird/b1.jpg")]
        );
    }

    #[test]
    fn class_folders_without_metadata() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("sparrow/1.JPG"), "x");
        write(&dir.path().join("sparrow/notes.txt"), "x");
        write(&dir.path().join("crow/2.png"), "x");

        let dataset = Dataset::open(dir.path()).unwrap();
        let names: Vec<&str> = dataset.classes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["crow", "sparrow"]);
        assert_eq!(dataset.classes[1].images.len(), 1);
    }

    #[test]
    fn malformed_metadata_names_line() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("classes.txt"), "1 001.A\nabc 002.B\n");
        write(&dir.path().join("images.txt"), "");
        write(&dir.path().join("image_class_labels.txt"), "");
        std::fs::create_dir_all(dir.path().join("images")).unwrap();

        let message = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(message.contains("classes.txt, line 2"), "{message}");
    }

    #[test]
    fn incomplete_metadata_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("classes.txt"), "1 001.A\n");
        write(&dir.path().join("images/001.A/a.jpg"), "x");

        let message = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("images.txt, image_class_labels.txt"),
            "{message}"
        );
    }

    #[test]
    fn metadata_without_images_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["classes.txt", "images.txt", "image_class_labels.txt"] {
            write(&dir.path().join(name), "");
        }
        let message = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(message.contains("no images/ folder"), "{message}");
    }

    #[test]
    fn empty_class_folder_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("crow/2.png"), "x");
        std::fs::create_dir_all(dir.path().join("000.Empty")).unwrap();

        let dataset = Dataset::open(dir.path()).unwrap();
        assert_eq!(dataset.classes.len(), 1);
        assert_eq!(dataset.classes[0].name, "crow");
    }

    #[test]
    fn file_instead_of_folder_is_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("photo.jpg");
        write(&file, "x");
        assert!(matches!(
            Dataset::open(&file).unwrap_err(),
            DataError::NotAFolder(_)
        ));
    }

    #[test]
    fn missing_folder_is_error() {
        let error = Dataset::open(Path::new("/nonexistent/cub")).unwrap_err();
        assert!(matches!(error, DataError::MissingRoot(_)));
    }

    #[test]
    fn display_name_drops_prefix() {
        assert_eq!(
            display_class_name("001.Black_footed_Albatross"),
            "Black footed Albatross"
        );
        assert_eq!(display_class_name("crow"), "crow");
    }
}
