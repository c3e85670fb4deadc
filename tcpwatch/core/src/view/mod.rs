//! What tcpwatch shows, as pure functions of the model.
pub mod engine;
pub mod line;
pub mod states;
pub mod top;
pub mod trace;
