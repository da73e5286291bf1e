//! Inline display in evcxr notebooks, and saving what is displayed.
//!
//! Every figure type of [`crate::plot`] has an `evcxr_display` method; these are the
//! functions behind it, for a cell that wants to show something of its own (a MIME bundle
//! printed on stdout), and the atomic write behind every `save`.

pub use crate::files::write_atomically;
pub use crate::plot::inline::{emit, emit_png};
