//! What the network reads and what a bundle promises: NIfTI volumes, intensity preprocessing, sliding
//! windows, and the bundle with its manifest. Shared by training, the study and deployment.

pub mod bundle;
pub mod preprocess;
pub mod volume;
pub mod window;
