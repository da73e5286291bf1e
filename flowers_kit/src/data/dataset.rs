//! A folder of photos, one sub-folder per class, and the tutorial's train/test split.

// This module reads untrusted input: every index and every arithmetic step is checked or
// justified where it is allowed.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::split::PyRandom;
use crate::error::{Error, IoContext, Result};

/// The seed the tutorial uses for its split (`RANDOM_SEED = 2018`).
pub const TUTORIAL_SEED: u64 = 2018;
/// The tutorial's share of each class that goes to training (`TRAIN_FRACTION = 0.8`).
pub const TUTORIAL_TRAIN_FRACTION: f64 = 0.8;

/// File endings read as images (compared without regard to case).
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// One labelled photo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    /// The photo's full path.
    pub path: PathBuf,
    /// Index into the class list.
    pub label: usize,
}

/// A photo folder: `root/<class>/<photo>`, classes in sorted order, photos sorted per class.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
    classes: Vec<String>,
    /// Per class, the sorted file names of its photos.
    files: Vec<Vec<String>>,
    skipped: Vec<PathBuf>,
}

impl Dataset {
    /// Reads the folder structure (no image is decoded).
    ///
    /// Classes are the sorted names of the sub-folders (hidden ones excluded) and a photo's
    /// label is its class's index. Files that are not JPEG or PNG (LICENSE.txt, .DS_Store…)
    /// are skipped and listed by [`Dataset::skipped`]. A folder with no class, or a class with
    /// no photo, is an error.
    pub fn open(root: impl AsRef<Path>) -> Result<Dataset> {
        let root = root.as_ref().to_path_buf();
        let bad = |path: &Path, reason: String| Error::Dataset {
            path: path.to_path_buf(),
            reason,
        };
        if !root.is_dir() {
            return Err(bad(&root, "not a folder".into()));
        }
        let mut classes = Vec::new();
        let mut skipped = Vec::new();
        for (name, path, is_dir) in list_dir(&root, &mut skipped)? {
            if is_dir && !name.starts_with('.') {
                classes.push(name);
            } else {
                skipped.push(path);
            }
        }
        if classes.is_empty() {
            return Err(bad(
                &root,
                "no class folders found (expected <root>/<class>/<photo>.jpg)".into(),
            ));
        }
        let mut files = Vec::with_capacity(classes.len());
        for class in &classes {
            let dir = root.join(class);
            let mut photos = Vec::new();
            for (name, path, is_dir) in list_dir(&dir, &mut skipped)? {
                if !is_dir && is_image_name(&name) {
                    photos.push(name);
                } else {
                    skipped.push(path);
                }
            }
            if photos.is_empty() {
                return Err(bad(
                    &dir,
                    format!("class '{class}' has no JPEG or PNG photos"),
                ));
            }
            files.push(photos);
        }
        if let Some(first) = skipped.first() {
            eprintln!(
                "note: {}: skipped {} entr{} that are not photos or classes (e.g. {})",
                root.display(),
                skipped.len(),
                if skipped.len() == 1 { "y" } else { "ies" },
                first.display()
            );
        }
        Ok(Dataset {
            root,
            classes,
            files,
            skipped,
        })
    }

    /// The folder the dataset was read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class names in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// How many photos there are in all.
    pub fn len(&self) -> usize {
        self.files.iter().map(Vec::len).sum()
    }

    /// True when there are no photos (never the case for an opened dataset).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Photos per class, in label order.
    pub fn class_counts(&self) -> Vec<usize> {
        self.files.iter().map(Vec::len).collect()
    }

    /// Files and folders that were not taken as photos or classes.
    pub fn skipped(&self) -> &[PathBuf] {
        &self.skipped
    }

    /// Every photo with its label, class by class in sorted order.
    pub fn examples(&self) -> Vec<Example> {
        let mut out = Vec::with_capacity(self.len());
        for (label, (names, class)) in self.files.iter().zip(&self.classes).enumerate() {
            let dir = self.root.join(class);
            out.extend(names.iter().map(|n| Example {
                path: dir.join(n),
                label,
            }));
        }
        out
    }

    /// Splits exactly as the tutorial's `make_train_and_test_sets` does.
    ///
    /// One `random.Random(seed)` is shared by all classes, visited in sorted order. Each
    /// class's sorted file names are shuffled and the first `int(n * train_fraction)` go to
    /// training, the rest to test. Finally the train list, then the test list, are shuffled
    /// with the same generator. The result equals the Python original's, list for list.
    ///
    /// ```no_run
    /// # fn main() -> flowers_kit::Result<()> {
    /// let photos = flowers_kit::data::Dataset::open("flower_photos")?;
    /// let split = photos.split(0.8, 2018)?;
    /// println!("{} train, {} test", split.train.len(), split.test.len());
    /// # Ok(()) }
    /// ```
    pub fn split(&self, train_fraction: f64, seed: u64) -> Result<Split> {
        if !(train_fraction > 0.0 && train_fraction <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "train fraction must be in (0, 1], got {train_fraction}"
            )));
        }
        let mut rng = PyRandom::new(seed);
        let mut train = Vec::new();
        let mut test = Vec::new();
        for (label, (names, class)) in self.files.iter().zip(&self.classes).enumerate() {
            let mut names = names.clone();
            rng.shuffle(&mut names);
            // Python's int() truncates the float product.
            let num_train = (names.len() as f64 * train_fraction) as usize;
            let dir = self.root.join(class);
            for (i, name) in names.iter().enumerate() {
                let example = Example {
                    path: dir.join(name),
                    label,
                };
                if i < num_train {
                    train.push(example);
                } else {
                    test.push(example);
                }
            }
        }
        rng.shuffle(&mut train);
        rng.shuffle(&mut test);
        Ok(Split {
            root: self.root.clone(),
            classes: self.classes.clone(),
            train,
            validation: Vec::new(),
            test,
        })
    }
}

/// Train and test examples and the class names they index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Split {
    /// The dataset folder the paths are under.
    pub root: PathBuf,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// Training examples, in the tutorial's shuffled order.
    pub train: Vec<Example>,
    /// Validation examples carved from the training ones ([`Split::with_validation`]; empty
    /// in the tutorial's split): where hyperparameters are chosen, so that the test photos
    /// measure the choice only once.
    pub validation: Vec<Example>,
    /// Test examples, in the tutorial's shuffled order.
    pub test: Vec<Example>,
}

impl Split {
    /// The split with `fraction` of each class's training photos moved to a validation set:
    /// `int(n · fraction)` of a class's `n`, at least one when it has two or more, chosen by a
    /// seeded shuffle of that class's training photos. The test photos do not change, so the
    /// tutorial's test set stays identical to Python's; the training photos that remain keep
    /// their order.
    ///
    /// ```no_run
    /// # fn main() -> flowers_kit::Result<()> {
    /// let photos = flowers_kit::data::Dataset::open("flower_photos")?;
    /// let split = photos.split(0.8, 2018)?.with_validation(0.2, 0)?;
    /// println!("{} train, {} validation, {} test",
    ///          split.train.len(), split.validation.len(), split.test.len());
    /// # Ok(()) }
    /// ```
    pub fn with_validation(mut self, fraction: f64, seed: u64) -> Result<Split> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(Error::InvalidArgument(format!(
                "the validation fraction must be in [0, 1), got {fraction}"
            )));
        }
        let mut rng = PyRandom::new(seed);
        let mut moved = vec![false; self.train.len()];
        for label in 0..self.classes.len() {
            let mut members: Vec<usize> = self
                .train
                .iter()
                .enumerate()
                .filter(|(_, e)| e.label == label)
                .map(|(i, _)| i)
                .collect();
            rng.shuffle(&mut members);
            let n = members.len();
            let mut take = (n as f64 * fraction) as usize;
            if take == 0 && fraction > 0.0 && n >= 2 {
                take = 1;
            }
            for &i in members.iter().take(take) {
                if let Some(flag) = moved.get_mut(i) {
                    *flag = true;
                }
            }
        }
        let mut train = Vec::with_capacity(self.train.len());
        for (example, moved) in self.train.into_iter().zip(moved) {
            if moved {
                self.validation.push(example);
            } else {
                train.push(example);
            }
        }
        self.train = train;
        Ok(self)
    }

    /// Class names in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// `path` relative to the dataset root, with `/` separators (`"roses/123.jpg"`).
    pub fn relative_path(&self, example: &Example) -> String {
        let relative = example
            .path
            .strip_prefix(&self.root)
            .unwrap_or(&example.path);
        relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// True for names ending in .jpg, .jpeg or .png, in any case.
pub fn is_image_name(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| IMAGE_EXTENSIONS.iter().any(|e| ext.eq_ignore_ascii_case(e)))
}

/// Sorted (name, path, is_dir) for the entries of `dir`. An entry whose name is not UTF-8
/// (class names and sorting are defined on text) is skipped with a warning and added to
/// `skipped`.
fn list_dir(dir: &Path, skipped: &mut Vec<PathBuf>) -> Result<Vec<(String, PathBuf, bool)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let path = entry.path();
        let Ok(name) = entry.file_name().into_string() else {
            eprintln!(
                "warning: skipping {}: the file name is not valid UTF-8",
                path.display()
            );
            skipped.push(path);
            continue;
        };
        // Follow symlinks, as Python's os.walk does for files.
        let is_dir = path.is_dir();
        out.push((name, path, is_dir));
    }
    // Byte order of UTF-8 equals code-point order, which is what Python's sorted() uses.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
