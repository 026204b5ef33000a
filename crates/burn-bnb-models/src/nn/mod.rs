//! The decoder's building blocks.

pub(crate) mod attention;
pub(crate) mod cache;
pub(crate) mod decoder;
pub(crate) mod group;
pub(crate) mod mlp;
pub(crate) mod pending;
pub(crate) mod projection;
pub(crate) mod rms_norm;
pub(crate) mod rope;

pub use attention::Attention;
pub use cache::{KvCache, LayerCache, SLOT_BLOCK};
pub use decoder::DecoderLayer;
pub use group::{ProjectionGroup, StackedProjection};
pub use mlp::Mlp;
pub use pending::Pending;
pub use projection::{Projection, ProjectionKind, random_linear};
pub use rms_norm::RmsNorm;
pub use rope::{RotaryEmbedding, apply_rope, inv_freq};
