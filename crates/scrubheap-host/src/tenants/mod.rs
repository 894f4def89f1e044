//! The tenants layer: what guests do with pool memory. It sits on the pool (and the pool on
//! the arena) and knows nothing of the run that schedules it.
//!
//! - [`guest`]: a guest's life on the pool ([`GuestOps`]: create, run, balloon, destroy;
//!   [`GuestTeardown`]: destroy through a [`PoolHandle`](crate::pool::PoolHandle) that
//!   outlives the pool) and the `kernel` baseline that does what VMMs do today.
//! - [`pod_guest`]: populate-on-demand guests ([`PodGuestOps`]).
//! - [`pins`]: long-term pins, moving Movable pages to Normal memory first ([`PinOps`]).
//! - [`hot_remove`]: moving a part of a guest for a hot-remove, and its wall-clock deadline.
//!
//! Each layer's operations on the [`Pool`](crate::pool::Pool) are a trait of that layer
//! (import it to call them), so `Pool`'s own impl, in `pool.rs`, is all the pool is.

pub mod guest;
pub mod hot_remove;
pub mod pins;
pub mod pod_guest;

pub use guest::{GuestOps, GuestTeardown};
pub use pins::PinOps;
pub use pod_guest::PodGuestOps;
