//! `flowers`: the tutorial's steps from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowers_kit::data::{self, Dataset, FetchOptions};

#[derive(Parser)]
#[command(
    name = "flowers",
    version,
    about = "Flower photos, MobileNet V2 features and a classifier, as in TensorFlow's transfer-learning tutorial"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download and extract the flower photos into the cache (nothing happens if they are there).
    Download {
        /// Archive URL or local path [default: $FLOWERS_DATA_URL, else the tutorial's URL].
        #[arg(long)]
        url: Option<String>,
        /// Cache folder [default: $FLOWERS_KIT_HOME, else the platform cache dir].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Split a photo folder into train and test sets as the tutorial does.
    Split {
        /// The dataset folder, one sub-folder per class [default: the downloaded flower photos,
        /// fetched first if needed].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Seed of Python's random.Random used for the shuffles.
        #[arg(long, default_value_t = data::TUTORIAL_SEED)]
        seed: u64,
        /// Share of each class that goes to training.
        #[arg(long, default_value_t = data::TUTORIAL_TRAIN_FRACTION)]
        train_fraction: f64,
        /// Print the lists as JSON: {"classes":[..],"train":[["class/file",label],..],"test":[..]}.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> flowers_kit::Result<()> {
    match cli.command {
        Command::Download { url, dir } => {
            let url = url.unwrap_or_else(data::flowers_url);
            let home = dir.unwrap_or_else(data::cache_home);
            let folder = data::download_dataset(&url, &home, &FetchOptions::default())?;
            let photos = Dataset::open(&folder)?;
            println!(
                "{} photos in {} classes at {}",
                photos.len(),
                photos.classes().len(),
                folder.display()
            );
            Ok(())
        }
        Command::Split {
            data,
            seed,
            train_fraction,
            json,
        } => {
            let photos = match data {
                Some(dir) => Dataset::open(dir)?,
                None => data::download_flowers()?,
            };
            let split = photos.split(train_fraction, seed)?;
            if json {
                let list = |examples: &[data::Example]| -> Vec<(String, usize)> {
                    examples
                        .iter()
                        .map(|e| (split.relative_path(e), e.label))
                        .collect()
                };
                let value = serde_json::json!({
                    "classes": split.classes,
                    "train": list(&split.train),
                    "test": list(&split.test),
                });
                println!("{value}");
            } else {
                println!(
                    "{} classes, {} train, {} test",
                    split.classes.len(),
                    split.train.len(),
                    split.test.len()
                );
            }
            Ok(())
        }
    }
}
