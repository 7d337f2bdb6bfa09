//! The `telnet` plugin: an admin shell into the running application. (Being built: not yet registered.)
