"""EST (RFC 7030, RFC 8951): wire format, authentication, the operations and their Flask views."""
