//! AutoPath networks in Candle: 3D operations, the DeepLab V3 segmenter with droppable residual
//! blocks, the policy network, and their training.
#![warn(clippy::unwrap_used)]
#![deny(missing_docs)]

pub mod block;
pub mod deeplab;
pub mod init;
pub mod layers;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod policy;
pub mod reward;
pub mod spec;
