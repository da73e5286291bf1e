//! Architectures as data: a variant turns into a table of operations, with no maths here.
//! Execution lives in [`crate::backend`].

pub mod mobilenet_v2;

pub use mobilenet_v2::{Alpha, MobileNetV2, Op};
