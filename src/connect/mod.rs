//! The Connect EaaS websocket task channel. (Implemented by the websocket-channel issue; until
//! then the daemon runs HTTP-only.)
