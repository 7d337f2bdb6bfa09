//! The `mail` plugin: SMTP into Maildir domains, and POP3. (Being built: not yet registered.)
