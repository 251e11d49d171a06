//! Origin checks for WebSocket handshakes.
