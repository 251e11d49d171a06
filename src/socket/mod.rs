//! Limits enforced on the live, upgraded socket.
