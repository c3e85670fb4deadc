//! What tcpwatch shows, as pure functions of the model.
pub mod states;
pub mod trace;
