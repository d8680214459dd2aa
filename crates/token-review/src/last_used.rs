//! Legacy-token tracking: the writer now lives in [`badge_access::last_used`],
//! shared by every service (bearer-token use is recorded too, #13 finding 11).

pub use badge_access::last_used::*;
