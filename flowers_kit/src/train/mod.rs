//! Training a classifier head on cached features: the second half of the tutorial.

pub mod classifier;
mod denormals;
pub mod finetune;
pub mod grad_cam;
pub mod head;
pub mod metrics;
pub mod optim;
mod suffix;
pub mod trainer;

pub use classifier::{Classifier, Prediction};
pub use finetune::{FineTune, Schedule};
pub use grad_cam::ClassMap;
pub use head::{Activation, Head};
pub use metrics::{ClassMetrics, Metrics, Mistake};
pub use optim::Optimizer;
pub use trainer::{train, train_seeds, History, SeedRuns, Spread, TrainConfig};
