//! Where endpoints come from. Every source speaks the same small [`Update`] language, so the control
//! loop and the snapshot never care which source produced a set.

pub mod static_file;

use crate::snapshot::EndpointSpec;

/// A discovery source's news.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// The complete current endpoint set; replaces whatever was known.
    Reset(Vec<EndpointSpec>),
}
